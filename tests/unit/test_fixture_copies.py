"""The fixtures vendored under tests/fixtures/ are the team's shared samples, unchanged."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.builders import FIXTURES

SHARED = Path(__file__).resolve().parents[3] / "shared" / "fixtures"
VENDORED = sorted(
    str(p.relative_to(FIXTURES))
    for folder in ("mt5", "oanda", "ibkr", "metaapi")
    for p in (FIXTURES / folder).iterdir()
    if p.is_file()  # mt5/reports/ holds this repository's own report fixtures, not copies
)


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/fixtures is not beside this clone")
@pytest.mark.parametrize("name", VENDORED)
def test_vendored_fixture_matches_the_shared_one(name: str) -> None:
    assert (FIXTURES / name).read_bytes() == (SHARED / name).read_bytes()


@pytest.mark.skipif(not SHARED.is_dir(), reason="../shared/fixtures is not beside this clone")
@pytest.mark.parametrize("folder", ["mt5", "oanda", "ibkr", "metaapi"])
def test_every_shared_sample_is_vendored(folder: str) -> None:
    shared = {p.name for p in (SHARED / folder).iterdir()}
    assert shared <= {p.name for p in (FIXTURES / folder).iterdir()}
