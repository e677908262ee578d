"""The JSON Schema files under schemas/json/ are exactly what the pydantic models say."""

from __future__ import annotations

import pytest

from services.shared.contracts import CONTRACTS, SCHEMA_DIR, render


@pytest.mark.parametrize("name", sorted(CONTRACTS))
def test_schema_file_matches_its_model(name: str) -> None:
    path = SCHEMA_DIR / name
    assert path.exists(), f"{path} missing: run `poscal-sync export-schemas`"
    assert path.read_bytes() == render(CONTRACTS[name]), (
        f"{name} drifted from its model: run `poscal-sync export-schemas` and review the diff"
    )
