"""The end-to-end benchmark's traffic: realistic MT5 deal webhooks of 1-5 deals, as templates
cheap enough to replay at thousands per second. Pure.

Making a demo deal costs ~100 µs of Python (services/devstack/demo_trades.py), far more than
sending it, so the deals are made once, into one template stream, before any clock starts.
Every sender replays that stream under its own login (deal keys embed server and login, so each
replay's deals are new to the journal); a body is its template's two halves around the login.
"""

from __future__ import annotations

import math
import random
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from services.devstack.demo import encode_body
from services.devstack.demo_trades import DemoAccount, demo_stream, webhook_body
from services.shared.envelope import derive_event_id

# A login no demo account has (demo logins are 50,000,000 and up): where each replay's goes.
_TEMPLATE_LOGIN = 49_999_999
_LOGIN_FIELD = b'"login":%d' % _TEMPLATE_LOGIN
# DEAL_TYPE_BUY and DEAL_TYPE_SELL: the deals that become fills.
_TRADE_TYPES = (0, 1)


@dataclass(frozen=True)
class TemplateBody:
    """A webhook body with its login cut out, how many deals it carries, and how many of them
    are trades (fills; the rest, such as the opening deposit, are cash movements)."""

    head: bytes
    tail: bytes
    deals: int
    fills: int

    def for_login(self, login: int) -> bytes:
        return self.head + b'"login":%d' % login + self.tail


def _regrouped(
    bodies: Iterator[dict[str, Any]], rng: random.Random, max_deals: int
) -> Iterator[dict[str, Any]]:
    """The same deals, oldest first, in webhooks of 1 to `max_deals` deals each, each carrying
    the balance reported after its last deal: an Expert Advisor that reports every few trade
    transactions instead of every one."""
    pending: list[dict[str, Any]] = []
    want = rng.randint(1, max_deals)
    for body in bodies:
        pending.extend(body["deals"])
        while len(pending) >= want:
            account = body["account"]
            demo = DemoAccount(account["login"], account["server"], account["currency"])
            yield webhook_body(demo, account["balance"], account["equity"], pending[:want])
            pending = pending[want:]
            want = rng.randint(1, max_deals)


def template_stream(
    webhooks: int, server: str, seed: int = 7, max_deals: int = 5
) -> list[TemplateBody]:
    """`webhooks` bodies of one demo account on `server` (its deposit first, then positions
    opened and closed in one to three parts), 1 to `max_deals` deals each."""
    account = DemoAccount(login=_TEMPLATE_LOGIN, server=server)
    rng = random.Random(seed)  # demo data
    # About 1.3 deals per position-sized step of demo_stream: enough positions for `webhooks`.
    positions = webhooks * max_deals
    bodies: list[TemplateBody] = []
    for body in _regrouped(demo_stream(account, positions, seed=seed), rng, max_deals):
        encoded = encode_body(body)
        head, found, tail = encoded.partition(_LOGIN_FIELD)
        assert found, "the template login must appear in the body"
        trades = sum(1 for d in body["deals"] if d["type"] in _TRADE_TYPES)
        bodies.append(TemplateBody(head, tail, len(body["deals"]), trades))
        if len(bodies) == webhooks:
            break
    return bodies


@dataclass(frozen=True)
class Sender:
    """One MT5 connection as its Expert Advisor holds it: its webhook path, signing key and
    account login."""

    connection_id: uuid.UUID
    path: str
    key: bytes
    login: int


@dataclass(frozen=True)
class Delivery:
    path: str
    key: bytes
    body: bytes
    webhook_id: str


class Traffic:
    """A mode's webhooks, by index: `width` connections send at once, round robin, each
    replaying the template stream; one that has sent all of it hands over to a fresh one, so
    every deal is new to the journal. Webhook ids are unique to the run (`run_id`)."""

    def __init__(
        self, senders: list[Sender], template: list[TemplateBody], width: int, run_id: str
    ) -> None:
        assert senders and len(senders) % width == 0
        self._senders = senders
        self._template = template
        self._width = width
        self._prefix = f"msg_{run_id}_"

    @staticmethod
    def senders_needed(events: int, template: int, width: int) -> int:
        return width * max(1, math.ceil(events / (width * template)))

    def __len__(self) -> int:
        return len(self._senders) * len(self._template)

    def _place(self, index: int) -> tuple[Sender, TemplateBody]:
        cycle, within = divmod(index, self._width * len(self._template))
        sender = self._senders[cycle * self._width + within % self._width]
        return sender, self._template[within // self._width]

    def delivery(self, index: int) -> Delivery:
        sender, template = self._place(index)
        body = template.for_login(sender.login)
        return Delivery(sender.path, sender.key, body, f"{self._prefix}{index}")

    def event_id(self, index: int) -> uuid.UUID:
        """The id ingest gives the webhook (derived from its connection and webhook id)."""
        return derive_event_id(self._place(index)[0].connection_id, f"{self._prefix}{index}")

    def fills(self, index: int) -> int:
        return self._place(index)[1].fills

    def connection_ids(self, events: int) -> list[uuid.UUID]:
        """The connections that sent the first `events` webhooks."""
        cycles = math.ceil(min(events, len(self)) / (self._width * len(self._template)))
        return [s.connection_id for s in self._senders[: cycles * self._width]]
