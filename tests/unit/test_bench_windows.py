"""The end-to-end benchmark's verdicts from one run's figures: memory is flat only over the whole
run, and the visibility probe counts only the sampled events that were accepted."""

from __future__ import annotations

import uuid

from bench.commits import ProbeResult
from bench.windows import Outcome, Window, memory_figures, rss_verdict
from bench.workload import Sender, Traffic, template_stream

SERVICES = ("ingest", "writer")


def _steady(
    minutes: float, interval_seconds: float = 1.0, kib: int = 100_000
) -> list[tuple[float, int]]:
    return [(t * interval_seconds, kib) for t in range(int(minutes * 60 / interval_seconds) + 1)]


def test_memory_that_does_not_grow_over_the_whole_run_is_flat() -> None:
    memory = {name: memory_figures(_steady(10), bound=1.0) for name in SERVICES}
    assert memory["ingest"]["minutes_sampled"] == 10.0
    assert rss_verdict(memory, SERVICES, minutes=10, interval_seconds=1.0, unsent=0) == {
        "whole_run_sampled": True,
        "services_rss_flat": True,
    }


def test_memory_growing_in_the_second_half_is_not_flat() -> None:
    growing = [(t, 100_000 + 1024 * int(t) // 30) for t, _ in _steady(10)]  # 2 MiB a minute
    figures = memory_figures(growing, bound=1.0)
    assert figures["second_half_slope_mib_per_min"] == 2.0
    assert figures["flat"] is False
    memory = {"ingest": memory_figures(_steady(10), 1.0), "writer": figures}
    assert rss_verdict(memory, SERVICES, 10, 1.0, unsent=0)["services_rss_flat"] is False


def test_a_run_stopped_early_is_never_flat_however_steady_its_minutes() -> None:
    memory = {name: memory_figures(_steady(10), bound=1.0) for name in SERVICES}
    verdict = rss_verdict(memory, SERVICES, minutes=10, interval_seconds=1.0, unsent=1)
    assert verdict == {"whole_run_sampled": False, "services_rss_flat": False}


def test_a_run_sampled_for_less_than_its_length_is_not_flat() -> None:
    memory = {name: memory_figures(_steady(4), bound=1.0) for name in SERVICES}
    verdict = rss_verdict(memory, SERVICES, minutes=10, interval_seconds=1.0, unsent=0)
    assert verdict == {"whole_run_sampled": False, "services_rss_flat": False}


def test_a_service_never_sampled_is_not_flat() -> None:
    memory = {"ingest": memory_figures(_steady(10), bound=1.0)}
    assert rss_verdict(memory, SERVICES, 10, 1.0, unsent=0)["services_rss_flat"] is False


def _window(statuses: list[int], probed: list[int], seen: list[int]) -> Window:
    senders = [Sender(uuid.uuid4(), "/v1/webhooks/mt5/x", b"key", 50_000_000)]
    traffic = Traffic(senders, template_stream(10, "Demo-Server"), width=1, run_id="run")
    outcome = Outcome(
        due=[float(i) for i in range(len(statuses))],
        sent=[float(i) for i in range(len(statuses))],
        answered_s=[0.01] * len(statuses),
        status=statuses,
        sending_seconds=1.0,
        unsent=10 - len(statuses),
    )
    committed = {traffic.event_id(i): i + 0.5 for i in seen}
    probe = ProbeResult({traffic.event_id(i): i + 0.6 for i in seen}, cpu_seconds=0.1, polls=3)
    return Window(traffic, 0, outcome, committed, {}, 0, 0, 0, probe, probed)


def test_the_probe_counts_only_sampled_events_that_were_accepted() -> None:
    # Events 0-5 sent (4 refused), 6-9 never sent: of the sampled 0, 4, 8 only 0 counts.
    window = _window([202, 202, 202, 202, 429, 202], probed=[0, 4, 8], seen=[0])
    visibility = window.visibility(0.01)
    assert visibility is not None
    assert visibility["sampled"] == 1
    assert visibility["sampled_not_accepted"] == 2
    assert visibility["seen"] == 1
    assert visibility["seen_after_commit_ms"]["max"] == 100.0
