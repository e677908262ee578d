"""The Expert Advisor's delivery rules, compiled from its .mqh source: what each answer from
ingest means, the backoff schedule, Retry-After, and the outbox and sent-ledger files that
carry its state across terminal restarts."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from tests.support.builders import PINNED_LOGIN, fixture_deals
from tests.support.mt5_ea import EaHarness, ea_harness, utf16_hex
from tests.unit.test_signatures import SPEC_SECRET


@pytest.fixture(scope="module")
def ea(tmp_path_factory: pytest.TempPathFactory) -> EaHarness:
    return ea_harness(Path(tmp_path_factory.getbasetemp()))


@pytest.mark.parametrize(
    ("status", "outcome"),
    [
        (200, "delivered"),
        (202, "delivered"),
        (409, "delivered"),  # the webhook id was already accepted: this batch is in
        (-1, "retry"),  # no answer at all
        (408, "retry"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (403, "retry"),  # a live connection not enabled yet: it will be
        (401, "paused"),  # a bad signature does not fix itself; retrying only gets throttled
        (423, "paused"),  # an operator's lock (no Retry-After: only they can lift it)
        (404, "paused"),
        (301, "paused"),
        (400, "refused"),
        (413, "refused"),
        (415, "refused"),
        (422, "refused"),
    ],
)
def test_each_answer_from_ingest_settles_retries_pauses_or_drops_the_batch(
    ea: EaHarness, status: int, outcome: str
) -> None:
    assert ea.line("classify", str(status)) == outcome


def test_a_423_with_retry_after_is_a_paused_connection_whose_batch_waits_and_is_sent_again(
    ea: EaHarness,
) -> None:
    """Ingest answers a connection its user paused 423 with Retry-After: the user resumes it
    without anything changing at the terminal, so the batch stays queued and is retried."""
    assert ea.line("classify", "423", "60") == "retry"
    assert ea.line("classify", "423", "0") == "retry"
    assert ea.line("classify", "423", "-1") == "paused"


def backoff(ea: EaHarness, failures: int, retry_after: int = -1, jitter: float = 0.5) -> int:
    return int(ea.line("backoff", str(failures), str(retry_after), repr(jitter)))


def test_the_backoff_doubles_from_15_seconds_up_to_an_hour(ea: EaHarness) -> None:
    schedule = [backoff(ea, failures) for failures in range(1, 12)]
    assert schedule == [15, 30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]


def test_the_backoff_never_overflows_however_long_ingest_is_away(ea: EaHarness) -> None:
    assert backoff(ea, 10_000) == 3600


@pytest.mark.parametrize(("jitter", "delay"), [(0.0, 96), (0.25, 108), (0.999, 143)])
def test_the_backoff_is_spread_by_twenty_percent_either_way(
    ea: EaHarness, jitter: float, delay: int
) -> None:
    assert backoff(ea, 4, jitter=jitter) == delay


def test_a_retry_after_longer_than_the_backoff_is_honoured(ea: EaHarness) -> None:
    assert backoff(ea, 1, retry_after=120) == 120
    assert backoff(ea, 5, retry_after=10) == 240


def test_a_retry_after_is_honoured_for_at_most_a_day(ea: EaHarness) -> None:
    assert backoff(ea, 1, retry_after=10**9) == 86400


NOW = 1445412480  # Wed, 21 Oct 2015 07:28:00 GMT


def retry_after(ea: EaHarness, headers: str, now: int = NOW) -> int:
    return int(ea.line("retry-after", utf16_hex(headers), str(now)))


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ("Retry-After: 120\r\n", 120),
        ("Content-Type: application/json\r\nretry-after: 7\r\nX: y\r\n", 7),
        ("RETRY-AFTER:   30  \r\n", 30),
        ("Retry-After: 0\r\n", 0),
        ("Retry-After: Wed, 21 Oct 2015 07:30:00 GMT\r\n", 120),
        ("Retry-After: Wed, 21 Oct 2015 07:28:00 GMT\r\n", 0),
        ("Retry-After: Tue, 20 Oct 2015 07:28:00 GMT\r\n", 0),  # already past
        (
            "Retry-After: Sun, 29 Feb 2032 00:00:00 GMT\n",  # a leap day, lines ended by LF alone
            int(datetime(2032, 2, 29, tzinfo=UTC).timestamp()) - NOW,
        ),
    ],
)
def test_retry_after_is_read_as_seconds_or_as_an_http_date(
    ea: EaHarness, headers: str, seconds: int
) -> None:
    assert retry_after(ea, headers) == seconds


@pytest.mark.parametrize(
    "headers",
    [
        "",
        "Content-Type: application/json\r\n",
        "Retry-After: soon\r\n",
        "Retry-After: -5\r\n",
        "Retry-After: 1.5\r\n",
        "Retry-After: Wed, 21 Oct 2015 07:28:00 CET\r\n",
        "Retry-After: Wed, 32 Oct 2015 07:28:00 GMT\r\n",
        "X-Retry-After: 5\r\n",
    ],
)
def test_no_readable_retry_after_means_none(ea: EaHarness, headers: str) -> None:
    assert retry_after(ea, headers) == -1


def outbox_entry(ea: EaHarness) -> bytes:
    [request] = ea.requests(
        secret=SPEC_SECRET, timestamp=NOW, login=PINNED_LOGIN, deals=fixture_deals(), offset=-3600
    )
    return request.outbox_text


def test_an_outbox_file_reads_back_as_the_batch_it_holds(ea: EaHarness) -> None:
    text = outbox_entry(ea)
    sequence, webhook_id, offset, tickets = ea.line("outbox-parse", text.hex()).split()[1:]
    assert (sequence, offset, tickets) == ("1", "-3600", "900001,900057,900311")
    assert webhook_id.startswith(f"mt5-{PINNED_LOGIN}-900001-900311-3-")


@pytest.mark.parametrize("keep", [0, 1, 40, -1, -4])
def test_an_outbox_file_cut_short_is_not_taken_for_a_batch(ea: EaHarness, keep: int) -> None:
    text = outbox_entry(ea)
    assert ea.line("outbox-parse", text[:keep].hex()) == "invalid"


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"tickets 900001,", b"tickets 0,"),
        (b"tickets 900001,", b"tickets x,"),
        (b"poscal-outbox 1", b"poscal-outbox 2"),
        (b"\nid mt5", b"\nid\tmt5"),
        (b"offset -3600", b"offset -36x0"),
    ],
)
def test_an_outbox_file_with_a_field_garbled_is_not_taken_for_a_batch(
    ea: EaHarness, old: bytes, new: bytes
) -> None:
    text = outbox_entry(ea)
    assert old in text
    assert ea.line("outbox-parse", text.replace(old, new, 1).hex()) == "invalid"


def test_an_outbox_file_whose_prints_do_not_match_its_tickets_is_not_a_batch(
    ea: EaHarness,
) -> None:
    lines = outbox_entry(ea).split(b"\n")
    lines = [line.rsplit(b",", 1)[0] if line.startswith(b"prints ") else line for line in lines]
    assert ea.line("outbox-parse", b"\n".join(lines).hex()) == "invalid"


def test_the_sent_ledger_keeps_the_last_line_per_ticket_sorted_and_skips_a_torn_line(
    ea: EaHarness,
) -> None:
    ledger = b"900057 bbbb\n900001 aaaa\n900057 cccc\n\n18446744073709551615 max\n9003"
    answer = ea.run("map-load", ledger.hex())
    assert answer == ("skipped 1\n900001 aaaa\n900057 cccc\n18446744073709551615 max\n")


@pytest.mark.parametrize("line", ["x1 aaaa", "1", "1 ", "18446744073709551616 big", "-1 a"])
def test_a_ledger_line_that_is_not_a_ticket_and_a_fingerprint_is_skipped(
    ea: EaHarness, line: str
) -> None:
    assert ea.run("map-load", (line + "\n").encode().hex()) == "skipped 1\n"


@pytest.mark.parametrize(
    ("sent", "queued", "resend_all", "decision"),
    [
        ("", "", False, "queue"),  # never seen: missed while the terminal was off
        ("900001 aaaa\n", "", False, "skip"),  # sent with this content
        ("900001 old0\n", "", False, "queue"),  # sent, then the server changed it
        ("", "900001 aaaa\n", False, "skip"),  # waiting in the outbox already
        ("", "900001 old0\n", False, "queue"),
        ("900001 aaaa\n", "", True, "queue"),  # the resend button
        ("900001 aaaa\n", "900001 aaaa\n", True, "skip"),  # but never twice in the outbox
    ],
)
def test_reconciliation_queues_what_history_has_and_was_not_sent_as_it_is(
    ea: EaHarness, sent: str, queued: str, resend_all: bool, decision: str
) -> None:
    answer = ea.line(
        "needs-sending",
        sent.encode().hex(),
        queued.encode().hex(),
        "900001",
        "aaaa",
        "1" if resend_all else "0",
    )
    assert answer == decision


def test_each_connection_of_an_account_keeps_its_own_state(ea: EaHarness) -> None:
    first = ea.line("state-folder", str(PINNED_LOGIN), "https://ingest.example/v1/webhooks/mt5/a")
    second = ea.line("state-folder", str(PINNED_LOGIN), "https://ingest.example/v1/webhooks/mt5/b")
    assert first.startswith(f"PosCalSync\\{PINNED_LOGIN}-") and len(first) == len(second)
    assert first != second


@pytest.mark.parametrize(
    ("url", "answer"),
    [
        ("https://ingest.example/v1/webhooks/mt5/0b6f", "ok https://ingest.example"),
        ("http://127.0.0.1:8080/v1/webhooks/mt5/0b6f", "ok http://127.0.0.1:8080"),
        (" HTTPS://Ingest.Example/v1/webhooks/mt5/0b6f ", "ok HTTPS://Ingest.Example"),
    ],
)
def test_a_webhook_url_is_accepted_and_its_origin_is_the_allow_list_entry(
    ea: EaHarness, url: str, answer: str
) -> None:
    assert ea.line("check-url", url) == answer


@pytest.mark.parametrize(
    "url",
    [
        "ingest.example/v1/webhooks/mt5/0b6f",
        "ftp://ingest.example/v1/webhooks/mt5/0b6f",
        "https://ingest.example/",
        "https://ingest.example/v1/webhooks/mt5/",
    ],
)
def test_a_url_that_is_not_a_connections_webhook_url_is_refused_with_the_reason(
    ea: EaHarness, url: str
) -> None:
    assert ea.line("check-url", url).startswith("refused the Ingest URL must")
