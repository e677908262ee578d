"""The connection wizard's contract with a broker: the accounts a set of credentials reaches
(`AccountDiscovery`), and every way that can fail, as a message the person who typed them can act
on (`VerificationFailed`, made by `explain`: pure)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Literal, Protocol

import httpx

from services.shared.brokers.errors import (
    AccountMismatch,
    BrokerRequestFailed,
    BrokerUnavailable,
    CredentialsRejected,
    CredentialsUnreadable,
    UnexpectedResponse,
)
from services.shared.envelope import ConnectionRef, ConnectionType

# refused: the person must change what they entered; rate_limited: ask again after
# `retry_after`; unreachable: the broker cannot answer now (try again later).
FailureKind = Literal["refused", "rate_limited", "unreachable"]

# IBKR Flex error codes of a refused token, as IBKR documents them, in words a trader reads.
_FLEX_CODES = {
    "1011": "IBKR says the account of this Flex token is inactive",
    "1012": "the Flex token has expired: generate a new one in Client Portal (Flex Web Service)",
    "1013": (
        "IBKR refuses this Flex token from our address (IP restriction): remove the token's"
        " IP restriction in Client Portal, or allow ours"
    ),
    "1015": "IBKR does not recognise this Flex token: check it was copied whole",
}


@dataclass(frozen=True)
class FoundAccount:
    """One account the credentials reach, as the broker describes it (never a credential)."""

    account_number: str
    # What the broker says the account is (demo or real money), or None when it does not say.
    connection_type: ConnectionType | None
    server: str | None = None
    title: str | None = None
    currency: str | None = None
    balance: str | None = None
    details: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class DiscoveryRequest:
    """What the person entered (in the vault's form, in memory only) and for which kind of
    account; `api_url` is the operator's override of the broker's address (proxies, tests)."""

    credentials: bytes = field(repr=False)
    connection_type: ConnectionType
    http: httpx.AsyncClient
    api_url: str | None = None

    def probe(
        self, broker: str, account_number: str = "", server: str | None = None
    ) -> ConnectionRef:
        """A connection reference for adapters asked before any connection exists."""
        return ConnectionRef(
            connection_id=uuid.UUID(int=0),
            user_id=uuid.UUID(int=0),
            account_id=uuid.UUID(int=0),
            broker=broker,
            connection_type=self.connection_type,
            account_number=account_number,
            server=server,
        )


class AccountDiscovery(Protocol):
    """Signs in with the credentials, lightly, and lists the accounts they reach; raises the
    adapter errors of errors.py (or VerificationFailed with a message of its own)."""

    async def __call__(self, request: DiscoveryRequest) -> list[FoundAccount]: ...


class VerificationFailed(Exception):
    """Why the entered credentials did not verify: `code` for the program, `message` for the
    person (never a credential in it)."""

    def __init__(
        self, kind: FailureKind, code: str, message: str, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.code = code
        self.message = message
        self.retry_after = retry_after


def explain(title: str, exc: BaseException, timeout_seconds: float) -> VerificationFailed:
    """What a failed sign-in at broker `title` means for the person who entered it."""
    if isinstance(exc, VerificationFailed):
        return exc
    if isinstance(exc, CredentialsUnreadable):
        return VerificationFailed(
            "refused", "credentials_rejected", f"these are not {title} credentials: {exc}"
        )
    if isinstance(exc, CredentialsRejected):
        flex = _FLEX_CODES.get(exc.error_code or "")
        if flex is not None:
            code = "token_expired" if exc.error_code == "1012" else "credentials_rejected"
            return VerificationFailed("refused", code, flex)
        return VerificationFailed(
            "refused",
            "credentials_rejected",
            f"{title} refused these credentials: check they were copied whole, that they are"
            " still valid (not revoked or expired), and that they are for a"
            " demo or live account as chosen",
        )
    if isinstance(exc, BrokerUnavailable):
        if exc.retry_after is not None:
            return VerificationFailed(
                "rate_limited",
                "broker_rate_limited",
                f"{title} is limiting requests right now: try again after the time in Retry-After",
                retry_after=exc.retry_after,
            )
        return VerificationFailed(
            "unreachable",
            "broker_unreachable",
            f"{title} could not be reached or did not answer: try again in a few minutes",
        )
    if isinstance(exc, TimeoutError):
        return VerificationFailed(
            "unreachable",
            "broker_unreachable",
            f"{title} did not answer within {timeout_seconds:g} seconds: try again in a few"
            " minutes",
        )
    if isinstance(exc, BrokerRequestFailed) and exc.error_code == "1014":
        return VerificationFailed(
            "refused",
            "credentials_rejected",
            "IBKR knows no Flex query of this id for this token: copy the query id from"
            " Client Portal (Performance & Reports > Flex Queries)",
        )
    if isinstance(exc, AccountMismatch):
        return VerificationFailed("refused", "account_mismatch", str(exc))
    if isinstance(exc, BrokerRequestFailed | UnexpectedResponse):
        return VerificationFailed(
            "unreachable",
            "broker_error",
            f"{title} answered in a way we could not read; try again later (it has been logged)",
        )
    raise TypeError(f"not a broker failure: {type(exc).__name__}")


def type_mismatch(title: str, account: FoundAccount, wanted: ConnectionType) -> str | None:
    """Why `account` cannot be connected as `wanted`, or None when it can (or nobody says)."""
    if account.connection_type is None or account.connection_type == wanted:
        return None
    kind = "a demo (paper) account" if account.connection_type == "demo" else "a real-money account"
    return (
        f"{title} account {account.account_number} is {kind}: connect it as a"
        f" {account.connection_type} connection, or pick a {wanted} account"
    )
