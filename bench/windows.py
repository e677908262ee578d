"""The figures of one open-loop run of the end-to-end benchmark: from what the load generator
saw and when Postgres committed each event. Pure."""

from __future__ import annotations

import os
import uuid
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from bench.commits import ProbeResult
from bench.stats import slope, summary_ms
from bench.workload import Traffic

ACCEPTED = 202
MIB = 1024.0


@dataclass
class Outcome:
    """Per request of one run, by index from 0: when it was due and when it left (wall clock,
    the clock of Postgres' commit timestamps; 0.0: never sent), its answer's latency from when
    it was due, its status (0: no answer). Then the generator's own cost: its CPU while sending
    and, apart, while signing the requests before each chunk."""

    due: list[float] = field(default_factory=list)
    sent: list[float] = field(default_factory=list)
    answered_s: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    sending_seconds: float = 0.0
    sending_cpu_seconds: float = 0.0
    signing_cpu_seconds: float = 0.0
    max_send_lag_s: float = 0.0
    chunks: int = 0
    # Signed again when sent, having waited in the generator longer than the signing allows.
    resigned: int = 0
    # Never sent: the run stopped early, ingest no longer taking the rate.
    unsent: int = 0

    @property
    def cpu_cores(self) -> float:
        """The generator's CPU while sending, in cores (1.0: one core fully busy)."""
        return self.sending_cpu_seconds / self.sending_seconds if self.sending_seconds else 0.0


@dataclass(frozen=True)
class Window:
    """One open-loop run of events `first`.. of a mode's traffic, and what followed: when each
    committed, the rows its connections have, what the stack's processes spent meanwhile."""

    traffic: Traffic
    first: int
    outcome: Outcome
    committed: dict[uuid.UUID, float]
    stack_cpu_cores: dict[str, float]
    fills_expected: int
    fills_committed: int
    journal_rows: int
    probe: ProbeResult | None = None
    probed: Sequence[int] = ()

    def event_id(self, i: int) -> uuid.UUID:
        return self.traffic.event_id(self.first + i)

    def accepted(self) -> list[int]:
        return [i for i, status in enumerate(self.outcome.status) if status == ACCEPTED]

    def latencies(self, indices: Sequence[int]) -> list[float]:
        """Due -> committed, in seconds, of those of `indices` committed."""
        due, committed = self.outcome.due, self.committed
        return [committed[e] - due[i] for i in indices if (e := self.event_id(i)) in committed]

    def commits_between(self, start: float, end: float) -> int:
        return sum(1 for at in self.committed.values() if start <= at < end)

    def all_committed(self) -> bool:
        """Every webhook was sent and accepted, and each one's event and fills committed."""
        sent = len(self.outcome.status)
        return (
            self.outcome.unsent == 0
            and len(self.committed) == sent == len(self.accepted())
            and self.fills_committed == self.fills_expected
        )

    def events(self) -> dict[str, Any]:
        statuses = Counter(self.outcome.status)
        return {
            "sent": len(self.outcome.status),
            "unsent": self.outcome.unsent,
            "accepted": statuses.pop(ACCEPTED, 0),
            "refused": {str(s): n for s, n in sorted(statuses.items())},
            "committed": len(self.committed),
            "fills_expected": self.fills_expected,
            "fills_committed": self.fills_committed,
            "journal_rows": self.journal_rows,
            "all_committed": self.all_committed(),
        }

    def generator(self) -> dict[str, Any]:
        """The load generator's own cost and pace: its CPU while sending (cores, and share of
        the machine), the CPU it spent signing before, how late requests left against their
        schedule, and ingest's answers counted from when each was due."""
        outcome = self.outcome
        late = [s - d for s, d in zip(outcome.sent, outcome.due, strict=True) if s]
        late_ms = summary_ms(late)
        return {
            "cpu_cores": round(outcome.cpu_cores, 3),
            "share_of_machine": round(outcome.cpu_cores / (os.cpu_count() or 1), 3),
            "signing_cpu_seconds": round(outcome.signing_cpu_seconds, 2),
            "late_ms": {"p50": late_ms["p50"], "p99": late_ms["p99"], "max": late_ms["max"]},
            "answered_ms": summary_ms(
                [a for a, s in zip(outcome.answered_s, outcome.status, strict=True) if s]
            ),
            "chunks": outcome.chunks,
            "resigned": outcome.resigned,
        }

    def visibility(self, interval: float) -> dict[str, Any] | None:
        """How long after its commit timestamp the probe first saw each sampled event: the
        timestamp's bias, plus up to one poll interval and a query's time."""
        if self.probe is None:
            return None
        seen = self.probe.seen_at
        # Only the sampled events accepted count: one never sent (the run stopped early) or
        # refused has nothing to be seen.
        accepted = set(self.accepted())
        sampled = [i for i in self.probed if i in accepted]
        gaps = [
            seen[e] - self.committed[e]
            for i in sampled
            if (e := self.event_id(i)) in seen and e in self.committed
        ]
        seconds = self.outcome.sending_seconds
        return {
            "sampled": len(sampled),
            "sampled_not_accepted": len(self.probed) - len(sampled),
            "seen": sum(1 for i in sampled if self.event_id(i) in seen),
            "poll_interval_ms": round(interval * 1000, 1),
            "seen_after_commit_ms": summary_ms(gaps),
            "probe_cpu_cores": round(self.probe.cpu_seconds / seconds, 3) if seconds else None,
        }


def memory_figures(samples: Sequence[tuple[float, int]], bound: float) -> dict[str, Any]:
    """One process' resident memory, sampled as (seconds since the start, KiB): minutes
    sampled, start, end and max MiB, and the slope over the second half (MiB per minute),
    flat when within `bound`."""
    mib = [(t / 60, kib / MIB) for t, kib in samples]
    per_minute = slope(mib[len(mib) // 2 :])
    return {
        "minutes_sampled": round(mib[-1][0] - mib[0][0], 2),
        "start_mib": round(mib[0][1], 1),
        "end_mib": round(mib[-1][1], 1),
        "max_mib": round(max(m for _, m in mib), 1),
        "second_half_slope_mib_per_min": round(per_minute, 3),
        "flat": abs(per_minute) <= bound,
    }


def rss_verdict(
    memory: dict[str, dict[str, Any]],
    services: Sequence[str],
    minutes: float,
    interval_seconds: float,
    unsent: int,
) -> dict[str, bool]:
    """Whether every service's memory stayed flat over the whole run. A run stopped early (some
    webhooks never sent: ingest no longer taking the rate), a service not sampled, or sampled
    for less than the run's length is not flat: it says
    nothing about the minutes it did not cover."""
    # Samples are `interval_seconds` apart: the first and the last may each miss one interval.
    covered = minutes - 2 * interval_seconds / 60
    sampled = all(s in memory for s in services)
    whole_run = (
        unsent == 0 and sampled and all(memory[s]["minutes_sampled"] >= covered for s in services)
    )
    return {
        "whole_run_sampled": whole_run,
        "services_rss_flat": whole_run and all(memory[s]["flat"] for s in services),
    }
