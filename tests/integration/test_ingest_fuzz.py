"""Hostile and malformed requests against the real ingest app (its own lifespan, the session's
Postgres and broker): none gets a 5xx or raises, every refusal is the documented JSON error, and
nothing reaches the raw topic.

Property-based with plain Hypothesis strategies rather than schemathesis: what matters here is
mostly outside the documented schema (duplicated, binary and oversized headers, lying
Content-Length, streamed bodies), and requests are sent on an event loop of the test's own so the
app's real lifespan runs exactly as under uvicorn. The failures soon throttle their sources and
spend their budgets (429); that changes nothing here, since every answer is a documented one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
import uuid
from collections.abc import AsyncIterator, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import httpx
import pytest
from aiokafka import ConsumerRecord
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_schema_validator import validate as validate_schema
from structlog.testing import capture_logs

from services.ingest.app import create_app
from services.ingest.openapi import ERROR_STATUSES, openapi_document
from services.ingest.settings import IngestSettings
from services.shared.settings import Topics
from services.shared.signatures import decode_secret, sign
from tests.support.builders import TestConnection
from tests.support.kafka import read_topic

pytestmark = pytest.mark.integration

T = TypeVar("T")

MAX_BODY_BYTES = 4096
TOLERANCE_SECONDS = 300
WEBHOOK = "/v1/webhooks/{broker}/{webhook_path_id}"
DOCUMENT = openapi_document()
HOSTILE = settings(
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@dataclass(frozen=True)
class HostileRequest:
    method: str
    path: str
    headers: list[tuple[bytes, bytes]] = field(default_factory=list)
    body: bytes = b""
    # Sent in chunks with no Content-Length, as a chunked upload arrives.
    streamed: bool = False


class IngestOnItsOwnLoop:
    """create_app(settings) with its real lifespan wiring, on an event loop of its own."""

    def __init__(self, settings: IngestSettings) -> None:
        self._settings = settings
        self._app = create_app(settings)
        self._loop = asyncio.new_event_loop()
        self._stack = contextlib.AsyncExitStack()
        self.client: httpx.AsyncClient | None = None

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        return self._loop.run_until_complete(coroutine)

    def __enter__(self) -> IngestOnItsOwnLoop:
        try:
            self.run(self._stack.enter_async_context(self._app.router.lifespan_context(self._app)))
            transport = httpx.ASGITransport(app=self._app)
            self.client = self.run(
                self._stack.enter_async_context(
                    httpx.AsyncClient(transport=transport, base_url="http://ingest", timeout=30)
                )
            )
            self.run(self._ready())
        except BaseException:
            self.__exit__()
            raise
        return self

    async def _ready(self) -> None:
        """The app connects to Postgres and Kafka in the background: until /readyz says so."""
        assert self.client is not None
        async with asyncio.timeout(30):
            while True:
                if (await self.client.get("/readyz")).status_code == 200:
                    return
                await asyncio.sleep(0.05)

    def __exit__(self, *_: object) -> None:
        try:
            self.run(self._stack.aclose())
            self.run(self._loop.shutdown_asyncgens())
        finally:
            self._loop.close()

    def send(self, request: HostileRequest) -> httpx.Response:
        assert self.client is not None
        content: bytes | AsyncIterator[bytes] = request.body
        if request.streamed:
            content = _chunks(request.body)
        return self.run(
            self.client.request(
                request.method, request.path, headers=request.headers, content=content
            )
        )

    def published(self) -> list[ConsumerRecord]:
        """Everything on the app's raw topic (ingest publishes before it answers)."""
        return self.run(
            read_topic(
                self._settings.kafka_bootstrap_servers,
                self._settings.topics.raw,
                expect=0,
                wait_seconds=1,
            )
        )


async def _chunks(body: bytes, size: int = 1000) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start : start + size]


@pytest.fixture
def hostile_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    # Limits high enough that hostile traffic reaches verification rather than the rate limiter,
    # and loopback (ASGITransport's client address) trusted so forwarding headers are parsed.
    monkeypatch.setenv("POSCAL_RATE_LIMIT_PER_CONNECTION", "1000000/minute")
    monkeypatch.setenv("POSCAL_RATE_LIMIT_PER_USER", "1000000/minute")
    monkeypatch.setenv("POSCAL_TRUSTED_PROXIES", "127.0.0.0/8,::1")


@pytest.fixture
def ingest(
    hostile_environment: None,
    topics: Topics,
    master_key: str,
    database_url: str,
    kafka_bootstrap: str,
) -> Iterator[IngestOnItsOwnLoop]:
    settings = IngestSettings(
        master_key=master_key,
        database_url=database_url,
        kafka_bootstrap_servers=kafka_bootstrap,
        topics=topics,
        max_body_bytes=MAX_BODY_BYTES,
        signature_tolerance_seconds=TOLERANCE_SECONDS,
        connection_cache_seconds=1,
        publish_timeout_seconds=5,
    )
    with IngestOnItsOwnLoop(settings) as running:
        yield running


# Header values: text of any script, any bytes, control characters, very long.
header_values = st.one_of(
    st.text(max_size=40).map(lambda text: text.encode()),
    st.binary(max_size=40),
    st.integers(300, 64_000).map(lambda n: b"A" * n),
    st.sampled_from(
        [b"", b" ", b"\x00", b"\r\n", b"\t", b"null", b"\xb2", "\u202e".encode(), b"\xff\xfe"]
    ),
)


def _b64(raw: bytes) -> bytes:
    return base64.b64encode(raw)


def signature_entries(secret: bytes) -> st.SearchStrategy[bytes]:
    """One `version,value` entry that never verifies what it is sent with."""
    return st.one_of(
        st.binary(min_size=32, max_size=32).map(lambda raw: b"v1," + _b64(raw)),
        st.binary(max_size=200).map(lambda raw: b"v1," + _b64(raw)),
        st.binary(min_size=64, max_size=64).map(lambda raw: b"v1a," + _b64(raw)),
        st.binary(max_size=100).map(lambda raw: b"v1a," + _b64(raw)),
        header_values.map(lambda value: b"v1," + value),
        header_values.map(lambda value: b"v1a," + value),
        st.sampled_from([b"v1,", b"v1", b",", b"v2,c2ln", b"V1,c2ln", b"v1,====", b"v1,c2ln\n"]),
        # The connection's real secret over other content: right key, wrong message.
        st.binary(max_size=64).map(
            lambda other: sign(secret, "msg_other", int(time.time()), other).encode()
        ),
    )


def signature_headers(secret: bytes) -> st.SearchStrategy[bytes]:
    entries = signature_entries(secret)
    return st.one_of(
        st.lists(entries, min_size=1, max_size=12).map(b" ".join),
        st.tuples(entries, st.integers(11, 3000)).map(lambda pair: b" ".join([pair[0]] * pair[1])),
        st.lists(entries, min_size=1, max_size=4).map(b"  \t ".join),
        header_values,
    )


@st.composite
def hostile_timestamps(draw: st.DrawFn) -> bytes:
    now = int(time.time())
    skew = st.one_of(
        st.integers(TOLERANCE_SECONDS - 2, TOLERANCE_SECONDS + 2).map(lambda s: -s),
        st.integers(TOLERANCE_SECONDS - 2, TOLERANCE_SECONDS + 2),
        st.integers(TOLERANCE_SECONDS + 1, 10**12),
        st.integers(-(10**12), -(TOLERANCE_SECONDS + 1)),
    )
    value: bytes = draw(
        st.one_of(
            skew.map(lambda s: str(now + s).encode()),
            st.integers(13, 400).map(lambda n: b"9" * n),
            st.integers(min_value=-(2**70), max_value=2**70).map(lambda n: str(n).encode()),
            st.sampled_from(
                [b"-1", b"0", b"1e9", b"0x10", b"1.5", b" 1767225600", b"1767225600 ", b"+1"]
            ),
            # Digits to str.isdigit() that are not ASCII: Arabic-Indic, fullwidth, superscript.
            st.sampled_from(["\u0661\u0667\u0666\u0667", "\uff11\uff17\uff16\uff17", "\u00b2"]).map(
                str.encode
            ),
            header_values,
        )
    )
    return value


hostile_webhook_ids = st.one_of(st.integers(257, 5000).map(lambda n: b"m" * n), header_values)


def _hostile_occurrences(
    name: bytes, values: st.SearchStrategy[bytes]
) -> st.SearchStrategy[list[tuple[bytes, bytes]]]:
    """The header missing, once with a hostile value, or repeated with different values."""
    return st.one_of(
        st.just([]),
        values.map(lambda value: [(name, value)]),
        st.lists(values, min_size=2, max_size=4).map(lambda vs: [(name, v) for v in vs]),
    )


content_types = st.one_of(
    st.sampled_from(
        [
            b"application/json",
            b"application/vnd.broker+json",
            b"text/x+json",
            b"APPLICATION/JSON",
            b"application/json; charset=utf-16",
            b"application/jsonx",
            b"application/json+xml",
            b"text/plain",
            b"application/x-www-form-urlencoded",
            b"multipart/form-data; boundary=----x",
            b"*/*",
            b"+json",
            b"",
        ]
    ),
    header_values,
)


# A Content-Length that lies, overflows, or is digits only to str.isdigit() (as Latin-1: ²).
content_lengths = st.one_of(
    st.integers(MAX_BODY_BYTES + 1, 10**30).map(lambda n: str(n).encode()),
    st.sampled_from([b"-1", b"0", b"1", b"\xb2", b"\xb9\xb2", b"\xd9\xa3", b"1 2"]),
    header_values,
)
other_headers = st.lists(
    st.one_of(
        st.tuples(st.just(b"content-length"), content_lengths),
        st.tuples(
            st.sampled_from([b"x-forwarded-for", b"forwarded", b"x-real-ip"]),
            st.one_of(
                st.ip_addresses().map(lambda ip: str(ip).encode()),
                st.lists(st.ip_addresses().map(str), max_size=40).map(
                    lambda ips: ", ".join(ips).encode()
                ),
                st.sampled_from([b"unknown", b"::ffff:999.1.1.1", b"10.0.0.0/8", b", , ,"]),
                header_values,
            ),
        ),
        st.tuples(st.sampled_from([b"user-agent", b"transfer-encoding", b"expect"]), header_values),
        st.tuples(
            st.text("abcdefghijklmnopqrstuvwxyz-0123456789", min_size=1, max_size=30).map(
                str.encode
            ),
            header_values,
        ),
    ),
    min_size=1,
    max_size=6,
)


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


bodies = st.one_of(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
        lambda children: (
            st.lists(children, max_size=5)
            | st.dictionaries(st.text(max_size=10), children, max_size=5)
        ),
        max_leaves=20,
    ).map(lambda value: json.dumps(value).encode()),
    st.binary(max_size=512),
    st.text(max_size=200).map(str.encode),
    st.integers(MAX_BODY_BYTES - 2, 4 * MAX_BODY_BYTES).map(lambda n: b"{" + b" " * n + b"}"),
    st.integers(100, 50_000).map(_nested),
    st.sampled_from(
        [b"", b"{", b'{"a":1', b"null", b"1", b'"x"', b"\xef\xbb\xbf{}", b"{}\x00", b"NaN"]
    ),
    st.sampled_from(["{}", "[]", '{"a": 1}']).map(lambda text: text.encode("utf-16")),
    st.just(b'{"a": "\xed\xa0\x80"}'),  # a lone surrogate, as CESU-8 writes it
)


def _one_segment(text: str) -> bool:
    """Still one path segment once the router has percent-decoded it, and not a dot segment."""
    return "/" not in text and text not in {".", ".."}


hostile_brokers = st.one_of(
    st.sampled_from(["MT5", "oanda", "mt4", " mt5", "mt5 ", "mt5%00"]),
    st.text(min_size=1, max_size=30).filter(_one_segment),
    st.integers(300, 5000).map(lambda n: "b" * n),
)


def hostile_path_ids(real: uuid.UUID) -> st.SearchStrategy[str]:
    # The real path id spelled every other way uuid.UUID() accepts, other uuids, non-uuids.
    return st.one_of(
        st.sampled_from([str(real).upper(), f"{{{real}}}", real.hex, f"urn:uuid:{real}"]),
        st.uuids().map(str),
        st.sampled_from(["0", "null", "00000000-0000-0000-0000-000000000000", "%00", "*"]),
        st.text(min_size=1, max_size=60).filter(_one_segment),
        st.integers(300, 5000).map(lambda n: "c" * n),
    )


# What a delivery can get wrong besides its signature, which is always wrong.
ASPECTS = (
    "broker",
    "connection",
    "id",
    "timestamp",
    "content-type",
    "content-length",
    "body",
    "other-headers",
)


@st.composite
def hostile_deliveries(draw: st.DrawFn, connection: TestConnection) -> HostileRequest:
    """A POST to the webhook route that no sender holding the secret would make: a wrong
    signature, plus none, one or several other parts attacked (one at a time reaches the deeper
    checks; several at once test their order)."""
    attacked = draw(st.sets(st.sampled_from(ASPECTS), max_size=3))

    def part(aspect: str, usual: st.SearchStrategy[T], hostile: st.SearchStrategy[T]) -> T:
        return draw(hostile if aspect in attacked else usual)

    secret = decode_secret(connection.created.webhook_secret)
    real = connection.webhook_path_id
    broker = part("broker", st.just("mt5"), hostile_brokers)
    path_id = part("connection", st.just(str(real)), hostile_path_ids(real))
    body = part("body", st.just(b'{"deals": []}'), bodies)
    webhook_id = part(
        "id",
        st.uuids().map(lambda u: [(b"webhook-id", f"msg_{u.hex}".encode())]),
        _hostile_occurrences(b"webhook-id", hostile_webhook_ids),
    )
    now = int(time.time())
    fresh = st.integers(-TOLERANCE_SECONDS + 5, TOLERANCE_SECONDS - 5)
    timestamp = part(
        "timestamp",
        fresh.map(lambda skew: [(b"webhook-timestamp", str(now + skew).encode())]),
        _hostile_occurrences(b"webhook-timestamp", hostile_timestamps()),
    )
    if draw(st.integers(0, 9)):
        signatures = signature_headers(secret)
        signature = draw(
            st.one_of(
                signatures.map(lambda value: [(b"webhook-signature", value)]),
                _hostile_occurrences(b"webhook-signature", signatures),
            )
        )
    else:
        # Signed with the real secret over exactly what is sent, but outside the tolerance.
        skew = draw(st.integers(TOLERANCE_SECONDS + 60, 10**9)) * draw(st.sampled_from([-1, 1]))
        webhook_id = [(b"webhook-id", f"msg_{draw(st.uuids()).hex}".encode())]
        timestamp = [(b"webhook-timestamp", str(now + skew).encode())]
        signed = sign(secret, webhook_id[0][1].decode(), now + skew, body)
        signature = [(b"webhook-signature", signed.encode())]
    content_type = part(
        "content-type",
        st.just([(b"content-type", b"application/json")]),
        _hostile_occurrences(b"content-type", content_types),
    )
    length = part(
        "content-length", st.just([]), _hostile_occurrences(b"content-length", content_lengths)
    )
    others = part("other-headers", st.just([]), other_headers)
    headers = draw(
        st.permutations(webhook_id + timestamp + signature + content_type + length + others)
    )
    return HostileRequest(
        method="POST",
        path=f"/v1/webhooks/{quote(broker, safe='')}/{quote(path_id, safe='')}",
        headers=headers,
        body=body,
        streamed=draw(st.booleans()),
    )


DOCUMENTED_PATHS = ["/v1/webhooks/mt5/{id}", "/healthz", "/readyz", "/metrics", "/openapi.json"]


@st.composite
def hostile_routes(draw: st.DrawFn, connection: TestConnection) -> HostileRequest:
    """Any method at any path, near the documented ones or nowhere near them."""
    real = str(connection.webhook_path_id)
    documented = st.sampled_from(DOCUMENTED_PATHS).map(lambda p: p.replace("{id}", real))
    segment = st.text(min_size=1, max_size=20).map(lambda s: quote(s, safe=""))
    path = draw(
        st.one_of(
            documented,
            documented.map(lambda p: p + "/"),
            documented.map(lambda p: p.upper()),
            documented.map(lambda p: p.replace("/", "//")),
            st.tuples(documented, segment).map(lambda pair: f"{pair[0]}/{pair[1]}"),
            st.tuples(documented, st.text(max_size=40)).map(
                lambda pair: f"{pair[0]}?{quote(pair[1], safe='=&')}"
            ),
            st.sampled_from(
                [
                    "/",
                    "/v1",
                    "/v1/webhooks",
                    "/v1/webhooks/mt5",
                    f"/v1/webhooks/mt5/{real}%2Fx",
                    "/v1/webhooks/%2E%2E/%2E%2E/healthz",
                    "/v1/webhooks/mt5/..%2F..%2Fhealthz",
                    "/%00",
                    "/v2/webhooks/mt5/" + real,
                ]
            ),
            st.lists(segment, min_size=1, max_size=8).map(lambda parts: "/" + "/".join(parts)),
            st.integers(2000, 20_000).map(lambda n: "/v1/webhooks/mt5/" + "x" * n),
        )
    )
    method = draw(
        st.one_of(
            st.sampled_from(
                ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE", "CONNECT"]
            ),
            st.text("ABCDEFGHIJKLMNOPQRSTUVWXYZ-_!", min_size=1, max_size=12),
        )
    )
    return HostileRequest(
        method=method,
        path=path,
        headers=draw(other_headers) + draw(_hostile_occurrences(b"content-type", content_types)),
        body=draw(st.one_of(st.just(b""), bodies)),
    )


def _json_body(response: httpx.Response) -> Any:
    assert response.headers.get("content-type", "").startswith("application/json"), (
        f"{response.status_code} answered as {response.headers.get('content-type')!r}:"
        f" {response.text[:200]!r}"
    )
    return response.json()


def assert_documented_error(response: httpx.Response) -> None:
    """The body is the document's Error schema, with the code that belongs to the status."""
    body = _json_body(response)
    validate_schema(body, DOCUMENT["components"]["schemas"]["Error"])
    assert ERROR_STATUSES[body["error"]] == response.status_code, (
        f"{body['error']!r} sent with {response.status_code}"
    )


def assert_documented_refusal(response: httpx.Response) -> None:
    """A refusal exactly as the OpenAPI document describes it for the webhook route."""
    status = response.status_code
    assert status != 202, "a hostile delivery was accepted"
    assert status < 500, f"{status}: {response.text[:300]!r}"
    documented = DOCUMENT["paths"][WEBHOOK]["post"]["responses"]
    assert str(status) in documented, f"{status} is not a documented webhook response"
    assert_documented_error(response)
    for header in documented[str(status)].get("headers", {}):
        assert header.lower() in response.headers, f"{status} without {header}"


def assert_no_server_error(request: HostileRequest, response: httpx.Response) -> None:
    """Never a 5xx; every client error (with a body to judge) is the documented JSON error."""
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]!r}"
    if response.status_code >= 400 and request.method != "HEAD":
        assert_documented_error(response)


def assert_nothing_went_wrong_inside(logs: Sequence[Mapping[str, Any]]) -> None:
    """Refusals are warnings and repeated failures an alert; any other error logged is a bug."""
    errors = [
        entry
        for entry in logs
        if entry["log_level"] in {"error", "critical"}
        and entry.get("alert") != "webhook_verification_failures"
    ]
    assert errors == [], errors[:5]


def test_hostile_webhook_deliveries_get_a_documented_refusal_and_publish_nothing(
    ingest: IngestOnItsOwnLoop, connection: TestConnection
) -> None:
    @settings(HOSTILE, max_examples=1500)
    @given(request=hostile_deliveries(connection))
    def refused(request: HostileRequest) -> None:
        response = ingest.send(request)
        assert_documented_refusal(response)

    with capture_logs() as logs:
        refused()
    assert_nothing_went_wrong_inside(logs)
    assert ingest.published() == []


def test_any_method_at_any_path_never_gets_a_server_error_and_publishes_nothing(
    ingest: IngestOnItsOwnLoop, connection: TestConnection
) -> None:
    @settings(HOSTILE, max_examples=500)
    @given(request=hostile_routes(connection))
    def answered(request: HostileRequest) -> None:
        response = ingest.send(request)
        assert_no_server_error(request, response)

    with capture_logs() as logs:
        answered()
    assert_nothing_went_wrong_inside(logs)
    assert ingest.published() == []
