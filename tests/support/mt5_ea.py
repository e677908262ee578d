"""The MT5 Expert Advisor's pure MQL5 code (clients/mt5/Include/PosCal), compiled with g++
through its compatibility header and driven from Python: the same source the terminal runs."""

from __future__ import annotations

import functools
import subprocess
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

CLIENT = Path(__file__).resolve().parents[2] / "clients" / "mt5"


@functools.cache
def build_harness(directory: Path) -> Path:
    """Compiles the harness once per test session; warnings are errors, as in MetaEditor's
    strictest mode the pure files must stay clean."""
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / "poscal_ea_harness"
    compiled = subprocess.run(
        [
            "g++",
            "-std=c++17",
            "-O1",
            "-Wall",
            "-Wextra",
            "-Werror",
            "-I",
            str(CLIENT / "Include"),
            "-I",
            str(CLIENT / "tests"),
            str(CLIENT / "tests" / "harness.cpp"),
            "-o",
            str(binary),
        ],
        capture_output=True,
        text=True,
    )
    if compiled.returncode != 0:
        raise AssertionError(f"the EA's .mqh files do not compile under g++:\n{compiled.stderr}")
    return binary


def utf16_hex(text: str) -> str:
    """How the harness takes an MQL5 string: its UTF-16 units (lone surrogates included)."""
    return text.encode("utf-16-be", "surrogatepass").hex() or "-"


@dataclass(frozen=True)
class EaRequest:
    """One batch as the EA queues and sends it."""

    file_name: str
    outbox_text: bytes
    headers: dict[str, str]
    raw_headers: str
    body: bytes

    @property
    def webhook_id(self) -> str:
        return self.headers["webhook-id"]


TRADE_DEAL_FIELDS = (
    "ticket",
    "order",
    "time",
    "time_msc",
    "type",
    "entry",
    "magic",
    "position_id",
    "reason",
    "volume",
    "price",
    "commission",
    "swap",
    "profit",
    "fee",
    "symbol",
    "comment",
    "external_id",
)
_STRINGS = {"symbol", "comment", "external_id"}


def _deal_line(deal: dict[str, Any]) -> str:
    words = []
    for field in TRADE_DEAL_FIELDS:
        value = deal[field]
        if field in _STRINGS:
            words.append(utf16_hex(value))
        elif isinstance(value, Decimal | float):
            # As HistoryDealGetDouble returns it: the nearest double.
            words.append(repr(float(value)))
        else:
            words.append(str(int(value)))
    return "deal " + " ".join(words)


@dataclass(frozen=True)
class EaHarness:
    binary: Path

    def run(self, *args: str, stdin: str = "") -> str:
        done = subprocess.run(
            [str(self.binary), *args], input=stdin, capture_output=True, text=True, check=True
        )
        return done.stdout

    def line(self, *args: str) -> str:
        return self.run(*args).rstrip("\n")

    def requests(
        self,
        *,
        secret: str,
        timestamp: int,
        login: int,
        deals: list[dict[str, Any]],
        server: str = "PosCal-Test",
        currency: str = "USD",
        balance: float = 1000.0,
        equity: float = 1000.0,
        offset: int = 10800,
        batch_size: int = 100,
        max_bytes: int = 196608,
    ) -> list[EaRequest]:
        """The requests the EA sends for these deals, read from history in this order."""
        spec = [
            f"secret {secret}",
            f"timestamp {timestamp}",
            f"offset {offset}",
            f"batch {batch_size} {max_bytes}",
            f"account {login} {utf16_hex(server)} {utf16_hex(currency)} {balance!r} {equity!r}",
            *(_deal_line(deal) for deal in deals),
        ]
        fields: dict[str, str] = {}
        requests = []
        for line in self.run("requests", stdin="\n".join(spec) + "\n").splitlines():
            name, _, value = line.partition(" ")
            fields[name] = value
            if name == "body":
                raw_headers = bytes.fromhex(fields["headers"]).decode()
                requests.append(
                    EaRequest(
                        file_name=fields["file"],
                        outbox_text=bytes.fromhex(fields["outbox"]),
                        headers=_parse_headers(raw_headers),
                        raw_headers=raw_headers,
                        body=bytes.fromhex(value),
                    )
                )
        return requests


def _parse_headers(raw: str) -> dict[str, str]:
    assert raw.endswith("\r\n"), "WebRequest headers end every line with CRLF"
    headers = {}
    for line in raw.removesuffix("\r\n").split("\r\n"):
        name, separator, value = line.partition(": ")
        assert separator, f"not a header line: {line!r}"
        headers[name] = value
    return headers


def ea_harness(base: Path) -> EaHarness:
    return EaHarness(build_harness(base / "mt5-ea"))
