"""ARCHITECTURE.md's reading map stays true: every file it names exists, and each path's heading
counts the files its numbered steps list."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAP = (ROOT / "ARCHITECTURE.md").read_text()
NAMED_FILE = re.compile(r"`((?:services|tests|bench)/[\w/.]+)`")
PATH_SECTION = re.compile(
    r"^## (?P<title>[^\n]+) \((?P<count>\d+) files\)\n(?P<body>.*?)(?=^## |\Z)", re.M | re.S
)
STEP = re.compile(r"(?:^|, )(\d+)\.\s+`services/", re.M)


@pytest.mark.parametrize("named", sorted(set(NAMED_FILE.findall(MAP))))
def test_every_file_the_map_names_exists(named: str) -> None:
    assert (ROOT / named).exists(), f"ARCHITECTURE.md names {named}, which does not exist"


def test_the_map_has_both_paths() -> None:
    assert [m["title"] for m in PATH_SECTION.finditer(MAP)] == [
        "An MT5 webhook, from HTTP to SQL",
        "An OANDA poll, from the schedule to SQL",
    ]


@pytest.mark.parametrize("section", list(PATH_SECTION.finditer(MAP)), ids=lambda m: m["title"])
def test_each_path_counts_the_steps_it_lists(section: re.Match[str]) -> None:
    steps = [int(number) for number in STEP.findall(section["body"])]
    assert steps == list(range(1, int(section["count"]) + 1))
