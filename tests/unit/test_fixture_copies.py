"""The fixtures vendored under tests/fixtures/ are the team's shared samples, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.builders import FIXTURES

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures"


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/fixtures is not beside this clone")
@pytest.mark.parametrize("name", sorted(p.name for p in (FIXTURES / "mt5").glob("*.json")))
def test_vendored_mt5_fixture_matches_the_shared_one(name: str) -> None:
    assert (FIXTURES / "mt5" / name).read_bytes() == (SHARED / "mt5" / name).read_bytes()
