"""How a broker request's answer is judged, how long to wait when told to (and for how long a
host is held off for every adapter), and how tokens are kept out of messages and httpx's
request log."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import httpx
import pytest

from services.shared.brokers.http import (
    HostHoldOffs,
    RedactQueryToken,
    RetryPolicy,
    redact,
    request_origin,
    request_target,
    retry_after_seconds,
    shared_hold_offs,
    shared_limiter,
    verdict,
)

NOW = datetime(2026, 3, 2, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (200, "ok"),
        (204, "ok"),
        (401, "credentials"),
        (403, "credentials"),
        (429, "retry"),
        (500, "retry"),
        (503, "retry"),
        (400, "refused"),
        (404, "refused"),
        (302, "refused"),
    ],
)
def test_each_status_has_one_meaning(status: int, expected: str) -> None:
    assert verdict(status) == expected


def test_retry_after_in_seconds() -> None:
    assert retry_after_seconds("3", NOW) == 3.0
    assert retry_after_seconds(" 1.5 ", NOW) == 1.5


def test_retry_after_as_an_http_date_is_the_time_until_then() -> None:
    assert retry_after_seconds("Mon, 02 Mar 2026 12:00:45 GMT", NOW) == 45.0


def test_retry_after_in_the_past_or_unreadable() -> None:
    assert retry_after_seconds("Mon, 02 Mar 2026 11:00:00 GMT", NOW) == 0.0
    assert retry_after_seconds("-5", NOW) == 0.0
    assert retry_after_seconds("soon", NOW) is None
    assert retry_after_seconds(None, NOW) is None


def test_a_request_target_never_includes_the_query() -> None:
    url = httpx.URL("https://ndcdyn.interactivebrokers.com/A/SendRequest?t=SECRET&q=1&v=3")
    assert request_target(url) == "https://ndcdyn.interactivebrokers.com/A/SendRequest"


def test_redaction_replaces_every_occurrence() -> None:
    assert redact("x SECRET y SECRET", ["SECRET", ""]) == "x [redacted] y [redacted]"


def test_httpx_request_log_lines_lose_the_flex_token() -> None:
    record = logging.LogRecord(
        "httpx",
        logging.INFO,
        __file__,
        1,
        'HTTP Request: %s %s "%s %d %s"',
        ("GET", httpx.URL("https://h/S?t=271828&q=9&v=3"), "HTTP/1.1", 200, "OK"),
        None,
    )
    assert RedactQueryToken().filter(record)
    assert "271828" not in record.getMessage()
    assert "t=[redacted]&q=9" in record.getMessage()


async def test_adapters_for_one_host_share_one_rate_limiter() -> None:
    first = shared_limiter("https://api-fxpractice.oanda.com", 20.0)
    assert shared_limiter("https://api-fxpractice.oanda.com", 20.0) is first
    assert shared_limiter("https://api-fxtrade.oanda.com", 20.0) is not first
    assert first.max_rate == 20.0
    await asyncio.sleep(0)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def test_a_sync_waits_in_place_at_most_ten_seconds_for_a_retry_after() -> None:
    assert RetryPolicy().longest_wait_seconds == 10.0


def test_a_hold_off_counts_down_on_its_clock_and_then_lifts() -> None:
    clock = Clock()
    hold_offs = HostHoldOffs(clock)
    hold_offs.hold_off("https://api-fxtrade.oanda.com", 30.0)

    clock.now += 12
    assert hold_offs.remaining("https://api-fxtrade.oanda.com") == 18.0
    clock.now += 18
    assert hold_offs.remaining("https://api-fxtrade.oanda.com") == 0.0


def test_a_shorter_retry_after_never_shortens_a_longer_hold_off() -> None:
    hold_offs = HostHoldOffs(Clock())
    hold_offs.hold_off("https://h", 60.0)
    hold_offs.hold_off("https://h", 5.0)
    assert hold_offs.remaining("https://h") == 60.0
    hold_offs.hold_off("https://h", 90.0)
    assert hold_offs.remaining("https://h") == 90.0


def test_a_hold_off_is_for_its_host_only() -> None:
    hold_offs = HostHoldOffs(Clock())
    practice = request_origin(httpx.URL("https://api-fxpractice.oanda.com/v3/accounts/1/summary"))
    hold_offs.hold_off(practice, 30.0)

    assert practice == "https://api-fxpractice.oanda.com"
    assert hold_offs.remaining("https://api-fxtrade.oanda.com") == 0.0
    assert hold_offs.remaining(request_origin(httpx.URL("http://127.0.0.1:8080/x?t=1"))) == 0.0
    assert request_origin(httpx.URL("http://127.0.0.1:8080/x?t=1")) == "http://127.0.0.1:8080"


async def test_every_adapter_in_the_process_shares_one_set_of_hold_offs() -> None:
    assert shared_hold_offs() is shared_hold_offs()
    await asyncio.sleep(0)
