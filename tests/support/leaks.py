"""Looking for planted secrets in whatever a run leaves behind: log lines, span files, OTLP
exports, Kafka records, HTTP responses and database rows.

A secret is looked for in every form it might be written in: its raw bytes, the text it is
handed out as (`whsec_...`), hex, percent-encoding, and standard or URL-safe base64 at any
alignment inside a longer base64 text. Base64 and hex runs found along the way are decoded and
searched again, a few levels deep, so a secret inside a body inside a raw event inside a dead
letter is still found.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiokafka import ConsumerRecord

from services.shared.database import Connection
from services.shared.signatures import decode_secret

# Shorter needles could match by chance; every planted secret is longer than this.
MIN_NEEDLE_BYTES = 12
# Nesting a run may hide a secret under: dead letter -> raw event -> body is two levels.
MAX_DECODING_DEPTH = 3
_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/_-]{16,}")
_HEX_RUN = re.compile(rb"[0-9a-fA-F]{24,}")
_URL_SAFE = bytes.maketrans(b"-_", b"+/")
_SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


@dataclass(frozen=True)
class Secret:
    """A secret to look for: its bytes, and any text it is handed out as."""

    name: str
    value: bytes = field(repr=False)
    spellings: tuple[str, ...] = field(default=(), repr=False)

    @classmethod
    def text(cls, name: str, text: str) -> Secret:
        return cls(name, text.encode())

    @classmethod
    def key(cls, name: str, key: bytes) -> Secret:
        return cls(name, key)

    @classmethod
    def webhook_secret(cls, name: str, secret: str) -> Secret:
        """A `whsec_...` secret: the HMAC key inside it, and the string itself."""
        return cls(name, decode_secret(secret), (secret,))

    @classmethod
    def base64_key(cls, name: str, encoded: str) -> Secret:
        """A key handed out as base64 text, as the master key is."""
        return cls(name, base64.b64decode(encoded, validate=True), (encoded,))

    def needles(self) -> dict[bytes, str]:
        """Each byte string whose presence means this secret leaked, with its encoding."""
        needles: dict[bytes, str] = {}

        def add(needle: bytes, encoding: str) -> None:
            if len(needle) < MIN_NEEDLE_BYTES:
                raise ValueError(f"{self.name} is too short to look for reliably")
            needles.setdefault(needle, encoding)

        add(self.value, "raw")
        for spelling in self.spellings:
            add(spelling.encode(), "as handed out")
            add(urllib.parse.quote(spelling, safe="").encode(), "percent-encoded")
        add(urllib.parse.quote_from_bytes(self.value, safe="").encode(), "percent-encoded")
        add(self.value.hex().encode(), "hex")
        add(self.value.hex().upper().encode(), "hex")
        for alphabet, encode in (
            ("base64", base64.b64encode),
            ("url-safe base64", base64.urlsafe_b64encode),
        ):
            for shift in range(3):
                add(_aligned_base64(encode, self.value, shift), alphabet)
        return needles


def _aligned_base64(encode: Callable[[bytes], bytes], value: bytes, shift: int) -> bytes:
    """The base64 characters that encode `value` alone when it starts `shift` bytes into a
    longer text: whatever surrounds it, these characters appear in the text's encoding."""
    encoded = encode(bytes(shift) + value)
    first = -(-8 * shift // 6)  # the first character with no bits from before the value
    last = 8 * (shift + len(value)) // 6  # one past the last with no bits from after it
    return encoded[first:last]


@dataclass(frozen=True)
class Leak:
    secret: str
    encoding: str
    where: str

    def __str__(self) -> str:
        return f"{self.secret}, {self.encoding}, in {self.where}"


class LeakSearch:
    """Searches sources for a set of secrets; `looked_at` counts what it searched, by kind, so
    a test can prove the search was not vacuous."""

    def __init__(self, secrets: Sequence[Secret]) -> None:
        self._needles = [
            (needle, secret.name, encoding)
            for secret in secrets
            for needle, encoding in secret.needles().items()
        ]
        self.looked_at: Counter[str] = Counter()

    def in_bytes(self, where: str, data: bytes) -> list[Leak]:
        """Each secret found in `data`, once, in the most direct encoding it was found in."""
        found: dict[str, Leak] = {}
        for leak in self._search(where, data, "", 0):
            found.setdefault(leak.secret, leak)
        return list(found.values())

    def _search(self, where: str, data: bytes, via: str, depth: int) -> Iterator[Leak]:
        for needle, secret, encoding in self._needles:
            if needle in data:
                yield Leak(secret, via + encoding, where)
        if depth < MAX_DECODING_DEPTH:
            for decoding, decoded in _decoded_runs(data):
                yield from self._search(where, decoded, f"{via}{decoding} of ", depth + 1)

    def in_files(self, paths: Iterable[Path]) -> list[Leak]:
        leaks = []
        for path in paths:
            self.looked_at["file"] += 1
            for number, line in enumerate(path.read_bytes().splitlines(), start=1):
                self.looked_at["line"] += 1
                leaks += self.in_bytes(f"{path.name} line {number}", line)
        return leaks

    def in_records(self, records: Iterable[ConsumerRecord]) -> list[Leak]:
        """Kafka records: values, keys, and header names and values."""
        leaks = []
        for record in records:
            self.looked_at["record"] += 1
            at = f"{record.topic} partition {record.partition} offset {record.offset}"
            leaks += self.in_bytes(f"{at} value", record.value or b"")
            leaks += self.in_bytes(f"{at} key", record.key or b"")
            for name, value in record.headers or ():
                leaks += self.in_bytes(f"{at} header {name}", name.encode() + b": " + value)
        return leaks

    def in_responses(self, responses: Iterable[tuple[str, httpx.Response]]) -> list[Leak]:
        """HTTP responses, each labelled by the request it answered."""
        leaks = []
        for label, response in responses:
            self.looked_at["response"] += 1
            leaks += self.in_bytes(f"the response to {label}: body", response.content)
            for name, value in response.headers.raw:
                where = f"the response to {label}: header {name.decode()}"
                leaks += self.in_bytes(where, name + b": " + value)
        return leaks

    async def in_database(
        self, conn: Connection, except_columns: Mapping[str, Iterable[str]]
    ) -> list[Leak]:
        """Every column of every row of every table outside Postgres's own schemas, but the
        columns named in `except_columns` (`{"schema.table": {"column", ...}}`)."""
        tables = await conn.fetch(
            "SELECT n.nspname, c.relname FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p') AND n.nspname <> ALL ($1::text[])"
            " AND n.nspname NOT LIKE 'pg\\_%' ORDER BY 1, 2",
            list(_SYSTEM_SCHEMAS),
        )
        leaks = []
        for schema, table in tables:
            qualified = f"{schema}.{table}"
            self.looked_at["table"] += 1
            rows = await conn.fetch(
                f"SELECT (to_jsonb(t) - $1::text[])::text AS row FROM {_quoted(schema, table)} t",  # noqa: S608
                list(except_columns.get(qualified, ())),
            )
            for row in rows:
                self.looked_at["row"] += 1
                text = row["row"].encode()
                if not self.in_bytes(qualified, text):
                    continue
                # Found: name the columns it is in.
                columns: dict[str, Any] = orjson.loads(text)
                for column, value in columns.items():
                    leaks += self.in_bytes(f"{qualified}.{column}", orjson.dumps(value))
        return leaks


def _quoted(schema: str, table: str) -> str:
    return ".".join('"' + name.replace('"', '""') + '"' for name in (schema, table))


def _decoded_runs(data: bytes) -> Iterator[tuple[str, bytes]]:
    """What each base64 or hex run in `data` decodes to, tried at every alignment (a run may
    start mid-token, as hex after Postgres's `\\x` does)."""
    for match in _BASE64_RUN.finditer(data):
        run = match.group().translate(_URL_SAFE)
        for start in range(4):
            chunk = run[start:]
            chunk = chunk[: len(chunk) // 4 * 4]
            try:
                yield "base64", base64.b64decode(chunk, validate=True)
            except (binascii.Error, ValueError):
                continue
    for match in _HEX_RUN.finditer(data):
        run = match.group()
        for start in range(2):
            chunk = run[start:]
            yield "hex", bytes.fromhex(chunk[: len(chunk) // 2 * 2].decode())
