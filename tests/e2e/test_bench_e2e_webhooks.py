"""`python -m bench.e2e_webhooks`, every mode, briefly: one JSON line per mode, in the shape
`make bench` promises, and every webhook it sent committed with all its fills. Counts and shapes
only, never timings (the targets' booleans are checked to be booleans, not to be met)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SERVICES = ("ingest", "poller", "normalizer", "writer", "api")
# Four connections replaying a 15-webhook stream: 90 webhooks hand over to fresh connections.
QUICK = [
    "--connections", "4", "--template-webhooks", "15",
    "--rate", "30", "--latency-seconds", "3", "--warmup-seconds", "1", "--chunk-seconds", "2",
    "--steps", "20,40", "--step-seconds", "1.5",
    "--rss-minutes", "0.05", "--rss-interval-seconds", "0.5",
    "--probe-every", "5", "--floor-records", "300", "--drain-seconds", "60",
]  # fmt: skip


@pytest.fixture(scope="module")
def lines() -> list[dict[str, Any]]:
    finished = subprocess.run(
        [sys.executable, "-m", "bench.e2e_webhooks", *QUICK],
        cwd=REPO,
        capture_output=True,
        timeout=540,
        check=False,
    )
    assert finished.returncode == 0, finished.stderr.decode()[-4000:]
    return [orjson.loads(line) for line in finished.stdout.splitlines()]


def _assert_all_committed(events: dict[str, Any]) -> None:
    assert events["sent"] > 0 and events["unsent"] == 0
    assert events["accepted"] == events["sent"] == events["committed"], events
    assert events["refused"] == {}
    assert events["fills_committed"] == events["fills_expected"] > 0
    assert events["journal_rows"] > 0
    assert events["all_committed"] is True


def _assert_figures(line: dict[str, Any]) -> None:
    assert line["benchmark"] == "e2e_webhooks"
    assert line["connections"] == 4
    broker = line["floors"]["broker"]
    assert broker["records"] == 300
    assert broker["produce_per_s"] > 0 and broker["consume_per_s"] > 0
    assert all(isinstance(met, bool) for met in line["targets"].values())
    assert line["targets"]["all_committed"] is True


def _assert_generator(generator: dict[str, Any]) -> None:
    assert generator["cpu_cores"] >= 0
    assert 0 <= generator["share_of_machine"] <= 1
    assert generator["chunks"] >= 1 and generator["resigned"] >= 0
    assert set(generator["answered_ms"]) == {"p50", "p90", "p99", "max"}


def test_prints_one_line_per_mode_in_order(lines: list[dict[str, Any]]) -> None:
    assert [line["mode"] for line in lines] == ["latency", "saturation", "memory"]


def test_latency_mode_commits_every_webhook_and_reports_its_percentiles(
    lines: list[dict[str, Any]],
) -> None:
    latency = lines[0]
    _assert_figures(latency)
    _assert_all_committed(latency["events"])
    assert latency["events"]["sent"] == 90
    # Hand-over: 90 webhooks from 4 connections replaying 15 each needs two sets of four.
    assert latency["latency_ms"]["measured"] == 60
    assert set(latency["latency_ms"]) >= {"p50", "p90", "p99", "max"}
    assert latency["visibility"]["sampled"] == latency["visibility"]["seen"] == 18
    _assert_generator(latency["generator"])
    assert set(latency["targets"]) == {"p99_ms<=150_at_30_per_s", "all_committed"}
    assert set(SERVICES) | {"postgres", "broker"} == set(latency["stack_cpu_cores"])


def test_saturation_mode_commits_every_step_and_names_the_sustained_rate(
    lines: list[dict[str, Any]],
) -> None:
    saturation = lines[1]
    _assert_figures(saturation)
    steps = saturation["steps"]
    assert [s["offered_per_s"] for s in steps] == [20.0, 40.0][: len(steps)]
    assert steps
    for step in steps:
        _assert_all_committed(step["events"])
        _assert_generator(step["generator"])
        assert isinstance(step["sustained"], bool)
    sustained = [s["offered_per_s"] for s in steps if s["sustained"]]
    assert saturation["sustained_per_s"] == max(sustained, default=0.0)
    assert set(saturation["targets"]) == {"sustained_per_s>=1500", "all_committed"}


def test_memory_mode_samples_every_process_of_the_stack(lines: list[dict[str, Any]]) -> None:
    memory = lines[2]
    _assert_figures(memory)
    _assert_all_committed(memory["events"])
    assert set(memory["rss"]) == set(SERVICES) | {"postgres", "broker"}
    for figures in memory["rss"].values():
        assert 0 < figures["start_mib"] <= figures["max_mib"]
        assert figures["end_mib"] <= figures["max_mib"]
        assert isinstance(figures["flat"], bool)
        assert figures["minutes_sampled"] > 0
    assert memory["samples"] >= 2
    assert set(memory["targets"]) == {"whole_run_sampled", "services_rss_flat", "all_committed"}
