"""The connection wizard's sessions: what a user entered and the broker confirmed, sealed, kept
between verifying and confirming; confirming makes the connection, moves the credentials into the
vault's rows of it and starts its first sync. Every function runs as the service for `user_id`,
whom the caller has authenticated, and names that user in every statement."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from services.shared.brokers import broker
from services.shared.brokers.discovery import FoundAccount, type_mismatch
from services.shared.brokers.polling import CloudTerminal
from services.shared.connection_admin.connections import (
    ConnectionRefused,
    NewConnection,
    create_connection,
)
from services.shared.connection_admin.live import demo_first, enable_live
from services.shared.connection_admin.terminals import VerifiedTerminal, adopt_terminal
from services.shared.credential_kinds import BROKER_CREDENTIALS, WIZARD_CREDENTIALS

# jsonb columns are read and written as Python values: the pool's codec (shared/database.py)
# does the JSON.
from services.shared.database import Connection
from services.shared.envelope import ConnectionType
from services.shared.vault import CredentialVault

SyncMethod = Literal["webhook", "poll"]
State = Literal["verifying", "verified", "failed", "confirmed"]


class SessionRefused(Exception):
    """The session cannot be confirmed as asked: `code` for the program, `message` for the
    person."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class SessionGone(LookupError):
    """No such session of the user's (never theirs, expired, or removed)."""


@dataclass(frozen=True)
class Confirmed:
    connection_id: uuid.UUID
    created: NewConnection
    sync_method: SyncMethod
    polled: bool

    def __repr__(self) -> str:  # never print the webhook secret
        return f"Confirmed({self.connection_id})"


def account_document(account: FoundAccount) -> dict[str, Any]:
    return {
        "account_number": account.account_number,
        "connection_type": account.connection_type,
        "server": account.server,
        "title": account.title,
        "currency": account.currency,
        "balance": account.balance,
        "details": account.details,
    }


def found_account(document: dict[str, Any]) -> FoundAccount:
    return FoundAccount(
        account_number=document["account_number"],
        connection_type=document.get("connection_type"),
        server=document.get("server"),
        title=document.get("title"),
        currency=document.get("currency"),
        balance=document.get("balance"),
        details=dict(document.get("details") or {}),
    )


async def open_session(
    conn: Connection,
    vault: CredentialVault,
    *,
    user_id: uuid.UUID,
    broker_name: str,
    connection_type: ConnectionType,
    sync_method: SyncMethod,
    lifetime: timedelta,
    credentials: bytes | None = None,
    accounts: list[FoundAccount] | None = None,
    progress: dict[str, Any] | None = None,
) -> uuid.UUID:
    """A new session: `verified` with its accounts (and the credentials sealed, when there are
    any), or `verifying` (no accounts, no credentials yet). The user's expired sessions go."""
    session_id = uuid.uuid4()
    sealed: tuple[bytes, int] | tuple[None, None] = (None, None)
    async with conn.transaction():
        # Those with a terminal still running are the sweep's (`claim_expired_terminals`).
        await conn.execute(
            "DELETE FROM wizard_sessions WHERE user_id = $1 AND expires_at <= now()"
            " AND terminal IS NULL",
            user_id,
        )
        if credentials is not None:
            sealed = await vault.seal_for(
                conn,
                user_id=user_id,
                subject_id=session_id,
                kind=WIZARD_CREDENTIALS,
                plaintext=credentials,
            )
        await conn.execute(
            "INSERT INTO wizard_sessions (id, user_id, broker, connection_type, sync_method,"
            " state, sealed_credentials, data_key_version, accounts, progress, expires_at)"
            " VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9::jsonb, $10::jsonb,"
            " now() + $11::interval)",
            session_id,
            user_id,
            broker_name,
            connection_type,
            sync_method,
            "verifying" if accounts is None else "verified",
            sealed[0],
            sealed[1],
            [account_document(a) for a in accounts or []],
            progress,
            lifetime,
        )
    return session_id


async def verifications_under_way(conn: Connection, user_id: uuid.UUID) -> int:
    """The user's sessions still verifying, counted under a lock held until the transaction
    ends: two requests at once cannot both pass a cap on it."""
    await conn.execute("SELECT pg_advisory_xact_lock(hashtext($1))", f"wizard:{user_id}")
    count: int = await conn.fetchval(
        "SELECT count(*) FROM wizard_sessions WHERE user_id = $1"
        " AND state = 'verifying' AND expires_at > now()",
        user_id,
    )
    return count


async def record_progress(
    conn: Connection, session_id: uuid.UUID, user_id: uuid.UUID, progress: dict[str, Any]
) -> None:
    await conn.execute(
        "UPDATE wizard_sessions SET progress = $3::jsonb, updated_at = now()"
        " WHERE id = $1 AND user_id = $2 AND state = 'verifying'",
        session_id,
        user_id,
        progress,
    )


async def record_failure(
    conn: Connection, session_id: uuid.UUID, user_id: uuid.UUID, code: str, message: str
) -> None:
    await conn.execute(
        "UPDATE wizard_sessions SET state = 'failed', error = $3::jsonb, updated_at = now()"
        " WHERE id = $1 AND user_id = $2 AND state = 'verifying'",
        session_id,
        user_id,
        {"code": code, "message": message},
    )


async def record_terminal(
    conn: Connection,
    vault: CredentialVault,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    credentials: bytes,
    account: FoundAccount,
    verified: VerifiedTerminal,
    transaction_id: str,
) -> bool:
    """A verifying session's terminal is ready: seal the credentials beside it. False when the
    session is gone meanwhile (then the caller removes the terminal)."""
    async with conn.transaction():
        exists = await conn.fetchval(
            "SELECT 1 FROM wizard_sessions WHERE id = $1 AND user_id = $2"
            " AND state = 'verifying' AND expires_at > now() FOR UPDATE",
            session_id,
            user_id,
        )
        if exists is None:
            return False
        ciphertext, version = await vault.seal_for(
            conn,
            user_id=user_id,
            subject_id=session_id,
            kind=WIZARD_CREDENTIALS,
            plaintext=credentials,
        )
        terminal = {
            "provider": verified.terminal.provider,
            "account_id": verified.terminal.account_id,
            "region": verified.terminal.region,
            "state": verified.state,
            "connection_status": verified.connection_status,
            "transaction_id": transaction_id,
        }
        await conn.execute(
            "UPDATE wizard_sessions SET state = 'verified', sealed_credentials = $3,"
            " data_key_version = $4, accounts = $5::jsonb, terminal = $6::jsonb,"
            " progress = $7::jsonb, updated_at = now() WHERE id = $1 AND user_id = $2",
            session_id,
            user_id,
            ciphertext,
            version,
            [account_document(account)],
            terminal,
            {"step": "ready", "detail": "the account was found"},
        )
    return True


def _verified_terminal(document: dict[str, Any]) -> tuple[VerifiedTerminal, str]:
    terminal = CloudTerminal(document["provider"], document["account_id"], document["region"])
    verified = VerifiedTerminal(terminal, document["state"], document["connection_status"], {})
    return verified, document["transaction_id"]


async def confirm_session(
    conn: Connection,
    vault: CredentialVault,
    *,
    session_id: uuid.UUID,
    user_id: uuid.UUID,
    account_number: str,
    account_label: str,
    ingest_url: str,
    api_url: str | None = None,
    poll_interval_seconds: int = 60,
) -> Confirmed:
    """Make the connection of the account picked, store its credentials, and start its first
    sync (a polled one is due now; an Expert Advisor's starts with its first webhook). One
    transaction: refused (SessionRefused) or failed, nothing of it is kept."""
    async with conn.transaction():
        row = await conn.fetchrow(
            "SELECT * FROM wizard_sessions WHERE id = $1 AND user_id = $2"
            " AND expires_at > now() FOR UPDATE",
            session_id,
            user_id,
        )
        if row is None:
            raise SessionGone(session_id)
        plugin = broker(row["broker"])
        _check_state(row["state"], row["error"])
        accounts = [found_account(a) for a in row["accounts"]]
        picked = next((a for a in accounts if a.account_number == account_number), None)
        if picked is None:
            offered = ", ".join(a.account_number for a in accounts) or "none"
            raise SessionRefused(
                "unknown_account",
                f"account {account_number!r} is not one these credentials reach ({offered})",
            )
        connection_type: ConnectionType = row["connection_type"]
        mismatch = type_mismatch(plugin.title, picked, connection_type)
        if mismatch is not None:
            raise SessionRefused("account_type_mismatch", mismatch)
        credentials = None
        if row["sealed_credentials"] is not None:
            credentials = await vault.open_sealed(
                conn,
                user_id=user_id,
                subject_id=session_id,
                kind=WIZARD_CREDENTIALS,
                ciphertext=row["sealed_credentials"],
                data_key_version=row["data_key_version"],
            )
        try:
            created = await create_connection(
                conn,
                vault,
                user_id=user_id,
                broker=plugin.name,
                connection_type=connection_type,
                account_number=picked.account_number,
                server=picked.server or "",
                account_label=account_label,
                ingest_url=ingest_url,
                api_url=api_url,
                poll_interval_seconds=poll_interval_seconds,
                check_user=False,  # the session's row references the user
            )
        except ConnectionRefused as exc:
            raise SessionRefused("already_connected", str(exc)) from None
        connection_id = created.connection_id
        credential_id = None
        if credentials is not None:
            credential_id = await vault.store(
                conn,
                user_id=user_id,
                connection_id=connection_id,
                kind=BROKER_CREDENTIALS,
                plaintext=credentials,
            )
        if row["terminal"] is not None and credential_id is not None:
            verified, transaction_id = _verified_terminal(row["terminal"])
            await adopt_terminal(
                conn,
                connection_id,
                credential_id,
                verified,
                transaction_id,
                poll_interval_seconds=poll_interval_seconds,
            )
        polled = row["sync_method"] == "poll"
        if created.polled:
            # The user is watching the wizard: the first sync is due now, not staggered.
            await conn.execute(
                "UPDATE sync_schedule SET next_sync_at = now(), updated_at = now()"
                " WHERE connection_id = $1",
                connection_id,
            )
        if connection_type == "live":
            try:
                await enable_live(conn, connection_id)
            except ConnectionRefused:
                raise SessionRefused("demo_sync_required", demo_first(plugin.title)) from None
        await conn.execute(
            "UPDATE wizard_sessions SET state = 'confirmed', connection_id = $3,"
            " sealed_credentials = NULL, data_key_version = NULL, terminal = NULL,"
            " updated_at = now() WHERE id = $1 AND user_id = $2",
            session_id,
            user_id,
            connection_id,
        )
    return Confirmed(connection_id, created, row["sync_method"], polled)


def _check_state(state: str, error: dict[str, str] | None) -> None:
    if state == "verified":
        return
    if state == "verifying":
        raise SessionRefused(
            "session_not_ready",
            "the credentials are still being verified: follow the session until its state is"
            " verified",
        )
    if state == "failed":
        reason = error["message"] if error else "the verification failed"
        raise SessionRefused(
            "session_failed", f"this session's verification failed ({reason}): start again"
        )
    raise SessionRefused("already_confirmed", "this session's connection was already made")


@dataclass(frozen=True)
class ExpiredTerminal:
    """A cloud terminal verified for a session nobody confirmed in time: to be removed."""

    session_id: uuid.UUID
    broker: str
    account_id: str
    document: dict[str, Any]


async def claim_expired_terminals(conn: Connection, limit: int = 20) -> list[ExpiredTerminal]:
    """Take the terminals of expired sessions off them (each claimed by one replica only); the
    caller removes each at its service, and gives back those it could not
    (`return_terminal`)."""
    rows = await conn.fetch(
        # RETURNING gives the row as updated: the terminal comes from the claiming SELECT.
        "WITH claimed AS (SELECT id, terminal FROM wizard_sessions"
        " WHERE expires_at <= now() AND terminal IS NOT NULL"
        " ORDER BY expires_at LIMIT $1 FOR UPDATE SKIP LOCKED)"
        " UPDATE wizard_sessions w SET terminal = NULL, updated_at = now() FROM claimed"
        " WHERE w.id = claimed.id RETURNING w.id, w.broker, claimed.terminal",
        limit,
    )
    claimed = []
    for row in rows:
        document = row["terminal"]
        claimed.append(ExpiredTerminal(row["id"], row["broker"], document["account_id"], document))
    return claimed


async def cancel_session(
    conn: Connection, session_id: uuid.UUID, user_id: uuid.UUID
) -> ExpiredTerminal | None:
    """The user backs out: the session expires now, its sealed credentials go, and its terminal
    (if one was verified for it) is handed to the caller to remove, or left to the sweep. A run
    still verifying finds the session gone and removes its own terminal. A confirmed session's
    connection stays as it is."""
    row = await conn.fetchrow(
        "WITH old AS (SELECT id, terminal FROM wizard_sessions WHERE id = $1 AND user_id = $2"
        " FOR UPDATE)"
        " UPDATE wizard_sessions w SET expires_at = now(), terminal = NULL,"
        " sealed_credentials = NULL, data_key_version = NULL, updated_at = now() FROM old"
        " WHERE w.id = old.id RETURNING w.id, w.broker, old.terminal",
        session_id,
        user_id,
    )
    if row is None or row["terminal"] is None:
        return None
    document = row["terminal"]
    return ExpiredTerminal(row["id"], row["broker"], document["account_id"], document)


async def return_terminal(conn: Connection, expired: ExpiredTerminal) -> None:
    """A terminal that could not be removed now: the next sweep tries again."""
    await conn.execute(
        "UPDATE wizard_sessions SET terminal = $2::jsonb, updated_at = now() WHERE id = $1",
        expired.session_id,
        expired.document,
    )


async def delete_expired_sessions(conn: Connection) -> int:
    """Expired sessions with nothing left running for them; how many went."""
    done: str = await conn.execute(
        "DELETE FROM wizard_sessions WHERE expires_at <= now() AND terminal IS NULL"
    )
    return int(done.rsplit(" ", 1)[-1])
