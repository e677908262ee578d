"""The cloud-terminal contract: what connection administration asks of a broker whose accounts are
polled through a terminal a cloud service runs for them (MetaApi, for MT5)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import httpx

from services.shared.brokers.polling import CloudTerminal
from services.shared.envelope import ConnectionRef

# Where a terminal stands, in the provider's terms read into ours.
Phase = Literal["deploying", "connecting", "ready", "broker_unreachable", "failed", "stopped"]

# ProvisioningError                  what a wizard shows: `code` for the program, `message` for
#  │                                 the person (never a credential in it)
#  ├── ProvisioningRefused           the user must change something: the server name, the login
#  │                                 or password, the connection's type
#  └── ProvisioningUnavailable       the service or the broker cannot now: try again later
#                                    (`retry_after` if the service said when)


class ProvisioningError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ProvisioningRefused(ProvisioningError):
    """Trying again with the same input gives the same answer."""


class ProvisioningUnavailable(ProvisioningError):
    """The same input may succeed later."""

    def __init__(self, code: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(code, message)
        self.retry_after = retry_after


@dataclass(frozen=True)
class TerminalRequest:
    """What a terminal is made from: the connection and its credentials (opened from the vault,
    in memory only), under one transaction id for every attempt."""

    connection: ConnectionRef
    credentials: bytes
    name: str
    transaction_id: str

    def __repr__(self) -> str:  # never print credentials
        return f"TerminalRequest({self.connection.connection_id}, {self.transaction_id})"


@dataclass(frozen=True)
class Creation:
    """The answer to a creation: the terminal's id, or (None) "still checking, ask again with
    the same transaction id after `retry_after` seconds"."""

    account_id: str | None
    retry_after: float | None = None


@dataclass(frozen=True)
class TerminalStatus:
    terminal: CloudTerminal
    phase: Phase
    state: str  # the provider's own words, kept as they are
    connection_status: str


class TerminalService(Protocol):
    """A cloud terminal service's API, HTTP only; every failure is a ProvisioningError."""

    @property
    def provider(self) -> str: ...

    async def create(self, request: TerminalRequest) -> Creation:
        """Create (or, under the same transaction id, find again) the connection's terminal."""

    async def deploy(self, account_id: str, request: TerminalRequest) -> None:
        """Start it (nothing happens if it runs already); the broker may refuse the sign-in
        only now (ProvisioningRefused, as for a creation)."""

    async def status(self, account_id: str) -> TerminalStatus: ...

    async def check_account(
        self, terminal: CloudTerminal, request: TerminalRequest
    ) -> dict[str, Any]:
        """The account as the running terminal sees it (a wizard's preview), after checking it is
        the connection's account and of its type (demo or live): ProvisioningRefused if not."""

    async def remove(self, account_id: str) -> None:
        """Stop it and delete it at the service; one already gone is not an error."""


TerminalServiceFactory = Callable[[httpx.AsyncClient], TerminalService]
