"""One broker request the way every adapter sends it: under a rate limit, retried with jittered
backoff (or the broker's Retry-After) on 429, 5xx and network errors; failing as adapter errors."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import re
import time
import weakref
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import parsedate_to_datetime
from typing import Any, Literal

import httpx
from aiolimiter import AsyncLimiter

from services.shared.backoff import Backoff
from services.shared.brokers.errors import (
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
    UnexpectedResponse,
)
from services.shared.logging import get_logger

Sleep = Callable[[float], Awaitable[None]]
Clock = Callable[[], datetime]
Monotonic = Callable[[], float]
Verdict = Literal["ok", "credentials", "retry", "refused"]
# How long a refused response (429, 5xx) asks to wait when it has no Retry-After header: a
# broker that says so in its body (MetaApi's `recommendedRetryTime`).
WaitHint = Callable[[httpx.Response, datetime], float | None]
# The broker's own code for why it refused a request (MetaApi's `details`: E_AUTH...), if any.
ErrorCode = Callable[[httpx.Response], str | None]
# What a refused request's hold-off covers when narrower than its host: the key it holds off
# (a MetaApi account whose own rate limit was hit), or None for the whole host.
HoldOffScope = Callable[[httpx.URL, httpx.Response | None], str | None]

REDACTED = "[redacted]"
_DETAIL_CHARS = 300
_log = get_logger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """How long one request may hold up a poll before it hands the wait to the poller."""

    tries: int = 5  # the first request and four retries
    backoff_base_seconds: float = 0.5
    backoff_cap_seconds: float = 20.0
    # A Retry-After (or a host hold-off) longer than this ends the poll at once with
    # BrokerUnavailable(retry_after): the poller reschedules the connection instead of a sync
    # sleeping on its lease. Up to this, the wait is slept in place, at most once per try.
    longest_wait_seconds: float = 10.0
    # No retry sooner than this (full jitter alone could ask again at once).
    least_wait_seconds: float = 0.0

    def backoff(self) -> Backoff:
        return Backoff(base_seconds=self.backoff_base_seconds, cap_seconds=self.backoff_cap_seconds)


def verdict(status_code: int) -> Verdict:
    """What an HTTP status means for a broker request."""
    if 200 <= status_code < 300:
        return "ok"
    if status_code in (401, 403):
        return "credentials"
    if status_code == 429 or status_code >= 500:
        return "retry"
    return "refused"  # other 4xx, and redirects: never followed, they could carry a token away


def retry_after_seconds(value: str | None, now: datetime) -> float | None:
    """A Retry-After header (delay-seconds or an HTTP date) as seconds from `now`; None if absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    text = value.strip()
    try:
        return max(0.0, float(text))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # an HTTP date is GMT by definition
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


def redact(text: str, secrets: Iterable[str]) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, REDACTED)
    return text


def request_origin(url: httpx.URL) -> str:
    """The host a request goes to, as scheme, host and port: what a Retry-After holds off."""
    port = f":{url.port}" if url.port is not None else ""
    return f"{url.scheme}://{url.host}{port}"


def request_target(url: httpx.URL) -> str:
    """Where a request went, for messages: scheme, host and path, never the query."""
    return f"{request_origin(url)}{url.path}"


def response_detail(response: httpx.Response, secrets: Iterable[str]) -> str:
    """The broker's own words about a failed request, short and redacted."""
    text = response.text
    try:
        document = json.loads(text)
    except ValueError:
        document = None
    if isinstance(document, dict):
        # OANDA says `errorMessage`; MetaApi (and most JSON APIs) `message`.
        words = document.get("errorMessage", document.get("message"))
        if isinstance(words, str):
            text = words
    # Redact before cutting short: a secret cut in half would no longer be recognised.
    text = redact(" ".join(text.split()), secrets)
    return text[:_DETAIL_CHARS] or response.reason_phrase


def read_json_object(response: httpx.Response, broker: str) -> dict[str, Any]:
    """A JSON object answer, numbers kept exact (Decimal), never float."""
    try:
        document = json.loads(response.content, parse_float=Decimal)
    except ValueError as exc:
        raise UnexpectedResponse(
            broker, request_target(response.request.url), f"not JSON ({exc.__class__.__name__})"
        ) from None
    if not isinstance(document, dict):
        raise UnexpectedResponse(broker, request_target(response.request.url), "not a JSON object")
    return document


# One limiter per key (a broker host, or a token) per event loop: adapters come and go with
# each poll, while the broker's limit holds for every connection from this address.
_limiters: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[tuple[str, float], AsyncLimiter]
] = weakref.WeakKeyDictionary()


def shared_limiter(key: str, requests_per_second: float) -> AsyncLimiter:
    """The process-wide limiter for `key` at this rate (must be called inside the event loop)."""
    per_loop = _limiters.setdefault(asyncio.get_running_loop(), {})
    limiter = per_loop.get((key, requests_per_second))
    if limiter is None:
        # A bucket of one second's worth: short bursts pass, sustained load is held to the rate.
        limiter = AsyncLimiter(max(1.0, requests_per_second), 1.0)
        per_loop[(key, requests_per_second)] = limiter
    return limiter


class HostHoldOffs:
    """Until when each broker host asked to be left alone (its latest Retry-After), on a
    monotonic clock. Shared by every adapter calling the host, so one adapter told to wait holds
    the others off too, instead of each earning its own 429."""

    def __init__(self, clock: Monotonic = time.monotonic) -> None:
        self._clock = clock
        self._not_before: dict[str, float] = {}

    def hold_off(self, origin: str, seconds: float) -> None:
        """No request to `origin` for `seconds` from now (a later hold-off already set stays)."""
        until = self._clock() + seconds
        if until > self._not_before.get(origin, -math.inf):
            self._not_before[origin] = until

    def remaining(self, origin: str) -> float:
        """Seconds left before `origin` may be asked again; 0 when it may be asked now."""
        until = self._not_before.get(origin)
        if until is None:
            return 0.0
        left = until - self._clock()
        if left <= 0:
            del self._not_before[origin]
            return 0.0
        return left


_hold_offs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, HostHoldOffs] = (
    weakref.WeakKeyDictionary()
)


def shared_hold_offs() -> HostHoldOffs:
    """The process-wide hold-offs (per event loop, like the limiters; inside the loop only)."""
    return _hold_offs.setdefault(asyncio.get_running_loop(), HostHoldOffs())


def _utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class BrokerHttp:
    """Sends a broker's requests; one per adapter, sharing the host's limiter and hold-offs
    (None: the process-wide ones). The deciding parts are the pure functions above; `request`
    is the only I/O.

    A Retry-After holds off the whole host (`HostHoldOffs`), and a wait longer than
    `RetryPolicy.longest_wait_seconds` is never slept inside a sync but handed to the poller at
    once as BrokerUnavailable(retry_after=...). No token reaches a message: request targets drop
    the query (Flex puts its token there) and every detail taken from a response or an httpx
    exception is redacted first."""

    broker: str
    http: httpx.AsyncClient
    limiter: AsyncLimiter
    retry: RetryPolicy
    sleep: Sleep
    clock: Clock = _utc_now
    hold_offs: HostHoldOffs | None = None
    wait_hint: WaitHint | None = None
    error_code: ErrorCode | None = None
    # Asked with the response None, the narrower scope a request falls under (also waited out
    # before it is sent); with the response, the scope that response holds off.
    hold_off_scope: HoldOffScope | None = None

    async def get(
        self,
        url: str,
        *,
        secrets: Iterable[str],
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        again: Callable[[httpx.Response], str | None] | None = None,
    ) -> httpx.Response:
        """`request("GET", ...)`."""
        return await self.request(
            "GET", url, secrets=secrets, params=params, headers=headers, again=again
        )

    async def request(
        self,
        method: str,
        url: str,
        *,
        secrets: Iterable[str],
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
        body: bytes | None = None,
        again: Callable[[httpx.Response], str | None] | None = None,
    ) -> httpx.Response:
        """A 2xx response, or CredentialsRejected (401/403, at once), BrokerRequestFailed
        (other 4xx, at once) or BrokerUnavailable (429/5xx/network, once retries run out).

        Only requests that may be sent twice belong here (GET, DELETE, and writes the broker
        makes idempotent, like MetaApi's account creation under one transaction id): a retry
        resends `body` as it is. `again` reads a 2xx answer that may still mean "not yet" (a
        Flex statement being generated): it returns why to ask again, retried like a 5xx, or
        None for the answer; it may raise any of the errors above itself."""
        secret_list = [secret for secret in secrets if secret]
        hold_offs = self.hold_offs or shared_hold_offs()
        backoff = self.retry.backoff()
        retry_after: float | None = None
        problem = ""
        target = ""
        for attempt in range(1, self.retry.tries + 1):
            request = self.http.build_request(
                method, url, params=params, headers=headers, content=body
            )
            target = request_target(request.url)
            origin = request_origin(request.url)
            await self._wait_for(origin, hold_offs)
            scope = self.hold_off_scope(request.url, None) if self.hold_off_scope else None
            if scope is not None:
                await self._wait_for(scope, hold_offs)
            await self.limiter.acquire()
            try:
                response = await self.http.send(request, follow_redirects=False)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {redact(str(exc), secret_list)}".rstrip(": ")
                retry_after = None
            else:
                match verdict(response.status_code):
                    case "ok":
                        not_yet = again(response) if again is not None else None
                        if not_yet is None:
                            return response
                        problem, retry_after = not_yet, None
                    case "credentials":
                        raise CredentialsRejected(
                            response.status_code, response_detail(response, secret_list)
                        )
                    case "refused":
                        raise BrokerRequestFailed(
                            self.broker,
                            target,
                            response_detail(response, secret_list),
                            status_code=response.status_code,
                            error_code=self.error_code(response) if self.error_code else None,
                        )
                    case "retry":
                        problem = (
                            f"HTTP {response.status_code}: {response_detail(response, secret_list)}"
                        )
                        retry_after = retry_after_seconds(
                            response.headers.get("Retry-After"), self.clock()
                        )
                        if retry_after is None and self.wait_hint is not None:
                            retry_after = self.wait_hint(response, self.clock())
                        if retry_after is not None:
                            held = (
                                self.hold_off_scope(request.url, response)
                                if self.hold_off_scope
                                else None
                            )
                            hold_offs.hold_off(held or origin, retry_after)
            if attempt == self.retry.tries:
                break
            if retry_after is not None and retry_after > self.retry.longest_wait_seconds:
                raise BrokerUnavailable(
                    f"{self.broker} {target} asked to wait {retry_after:.0f}s ({problem})",
                    retry_after=retry_after,
                )
            # With a Retry-After, the wait is the host's hold-off, waited before the next try.
            if retry_after is not None:
                delay = retry_after
            else:
                delay = max(self.retry.least_wait_seconds, backoff.next_delay())
            _log.warning(
                "broker_request_retried",
                broker=self.broker,
                target=target,
                attempt=attempt,
                delay_seconds=round(delay, 3),
                problem=problem,
            )
            if retry_after is None:
                await self.sleep(delay)
        raise BrokerUnavailable(
            f"{self.broker} {target} failed {self.retry.tries} times; last: {problem}",
            retry_after=retry_after,
        )

    async def _wait_for(self, origin: str, hold_offs: HostHoldOffs) -> None:
        """Wait out the host's hold-off, once, or hand a long one to the poller at once."""
        wait = hold_offs.remaining(origin)
        if wait > self.retry.longest_wait_seconds:
            raise BrokerUnavailable(
                f"{self.broker} {origin} asked (Retry-After) to be left alone {wait:.0f}s more",
                retry_after=wait,
            )
        if wait > 0:
            await self.sleep(wait)


class RedactQueryToken(logging.Filter):
    """httpx logs every request URL at INFO; Flex carries its token in the `t` query parameter.
    This rewrites such records before any handler sees them."""

    _TOKEN_PARAMETER = re.compile(r"([?&]t=)[^&\s\"']+")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._TOKEN_PARAMETER.sub(rf"\g<1>{REDACTED}", message)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


def redact_query_tokens_in_httpx_logs() -> None:
    """Install the filter once on httpx's logger (idempotent)."""
    logger = logging.getLogger("httpx")
    if not any(isinstance(existing, RedactQueryToken) for existing in logger.filters):
        logger.addFilter(RedactQueryToken())
