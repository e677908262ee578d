"""What a user does to one of their connections: sync now, pause and resume, enable live, a new
webhook secret or URL, new broker credentials, delete. Each is a privileged step run as the
service for a connection the user owns (`Database.as_service_for`), through the same
services/shared/connection_admin functions the operator's CLI uses."""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, SecretStr

from services.api.connections import ConnectionPath, ConnectionView, one_connection
from services.api.errors import (
    DemoSyncMissing,
    FieldProblem,
    LifecycleRefused,
    NeedsProvisioning,
    NotConfigured,
    NotLive,
    NotPolled,
    NotReadyToSync,
    Refused,
    SyncLimited,
    TerminalUnreachable,
    ValidationFailed,
)
from services.api.operations import Call, Operation
from services.shared.brokers import UnknownBroker, broker
from services.shared.brokers.provisioning import ProvisioningError
from services.shared.connection_admin.connections import ConnectionRefused
from services.shared.connection_admin.credentials import (
    rotate_webhook_secret,
    set_broker_credentials,
)
from services.shared.connection_admin.deletion import delete_connection
from services.shared.connection_admin.endpoints import rotate_webhook_url
from services.shared.connection_admin.inputs import MAX_OVERLAP, InvalidInput
from services.shared.connection_admin.live import enable_live
from services.shared.credential_kinds import BROKER_CREDENTIALS
from services.shared.database import Connection
from services.shared.vault import CredentialVault

MAX_CREDENTIAL_CHARACTERS = 8192
_REVOKED = "this connection is revoked: nothing can be changed; delete it instead"

# --- Sync now ---------------------------------------------------------------------------------

# Where the connection stands for the poller, read as its lease query reads it
# (services/poller/schedule.py, `_LEASE_DUE`).
_SYNC_TARGET = """
SELECT c.lifecycle, c.connection_type, c.live_enabled_at IS NOT NULL AS live_enabled,
       s.connection_id IS NOT NULL AS polled, s.next_sync_at,
       coalesce(s.lease_until > now(), false) AS leased,
       extract(epoch FROM now() - s.last_attempt_at)::float8 AS since_attempt,
       EXISTS (SELECT 1 FROM cloud_terminals t WHERE t.connection_id = c.id) AS has_terminal,
       EXISTS (SELECT 1 FROM cloud_terminals t WHERE t.connection_id = c.id
               AND (t.ready_at IS NULL OR t.removing_at IS NOT NULL)) AS terminal_not_ready,
       EXISTS (SELECT 1 FROM mt5_credentials k
               WHERE k.connection_id = c.id AND k.kind = $2 AND k.revoked_at IS NULL
                 AND (k.expires_at IS NULL OR k.expires_at > now())) AS has_credentials,
       EXISTS (SELECT 1 FROM mt5_credentials k
               WHERE k.connection_id = c.id AND k.kind = $2 AND k.revoked_at IS NULL
                 AND (k.expires_at IS NULL OR k.expires_at > now())
                 AND k.id IS DISTINCT FROM s.rejected_credential_id) AS can_sign_in
FROM mt5_connections c LEFT JOIN sync_schedule s ON s.connection_id = c.id
WHERE c.id = $1
"""
# How long ago each of the user's connections was last attempted within the window: what the
# poller's per-user limit counts (each connection once).
_USER_ATTEMPTS = """
SELECT extract(epoch FROM now() - last_attempt_at)::float8 AS ago FROM sync_schedule
WHERE user_id = (SELECT user_id FROM mt5_connections WHERE id = $1)
  AND last_attempt_at > now() - make_interval(secs => $2::float8)
ORDER BY last_attempt_at
"""
_DUE_NOW = """
UPDATE sync_schedule SET next_sync_at = least(next_sync_at, now()), updated_at = now()
WHERE connection_id = $1 RETURNING next_sync_at
"""


class SyncRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", title="SyncRequest")

    connection_id: uuid.UUID
    # queued: due now, the poller takes it as soon as a replica is free; already_syncing: a
    # sync is running now (it brings everything up to now).
    state: Literal["queued", "already_syncing"]
    next_sync_at: datetime | None
    detail: str


def _not_ready_reason(row: dict[str, object]) -> str | None:
    """Why the poller would not sync this polled connection now, in the user's words."""
    if row["lifecycle"] == "paused":
        return "this connection is paused: resume it first"
    if row["lifecycle"] == "revoked":
        return _REVOKED
    if row["connection_type"] == "live" and not row["live_enabled"]:
        return "this live connection is not enabled yet: enable it first"
    if row["terminal_not_ready"]:
        return "its cloud terminal is not ready (being made, or removed): try again later"
    if not row["has_credentials"]:
        return "it has no broker credentials to sign in with: enter them first"
    if not row["can_sign_in"]:
        return "the broker refused its credentials: enter new ones"
    return None


async def sync_now(call: Call) -> SyncRequest:
    connection_id = call.path(ConnectionPath).connection_id
    controls = call.controls
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        found = await conn.fetchrow(_SYNC_TARGET, connection_id, BROKER_CREDENTIALS)
        assert found is not None  # the row is locked for this transaction
        row = dict(found)
        if not row["polled"]:
            if row["has_terminal"]:
                raise NotReadyToSync("its cloud terminal is not ready yet: try again later")
            raise NotPolled()
        reason = _not_ready_reason(row)
        if reason is not None:
            raise NotReadyToSync(reason)
        if row["leased"]:
            return SyncRequest(
                connection_id=connection_id,
                state="already_syncing",
                next_sync_at=row["next_sync_at"],
                detail="a sync of this connection is running now",
            )
        since = row["since_attempt"]
        floor = controls.sync_now_min_interval_seconds
        if since is not None and since < floor:
            raise SyncLimited(int(floor - since) + 1)
        # The poller's own count: past it, the poller would hold the sync back anyway. Two
        # replicas asked at once for two connections may both pass by one; the poller's lease
        # query, serialised across replicas, still keeps to the limit.
        limit = controls.user_sync_limit
        attempts = [
            r["ago"] for r in await conn.fetch(_USER_ATTEMPTS, connection_id, limit.window_seconds)
        ]
        if len(attempts) >= limit.amount:
            oldest_counted = attempts[len(attempts) - limit.amount]
            raise SyncLimited(int(limit.window_seconds - oldest_counted) + 1)
        next_sync_at: datetime = await conn.fetchval(_DUE_NOW, connection_id)
    return SyncRequest(
        connection_id=connection_id,
        state="queued",
        next_sync_at=next_sync_at,
        detail="due now: it syncs as soon as the poller is free; follow it in its status",
    )


# --- Pause, resume ----------------------------------------------------------------------------

_PAUSE = """
UPDATE mt5_connections SET lifecycle = 'paused', updated_at = now()
WHERE id = $1 AND lifecycle = 'active' RETURNING id
"""
_RESUME = """
UPDATE mt5_connections SET lifecycle = 'active', updated_at = now()
WHERE id = $1 AND lifecycle = 'paused' RETURNING id
"""
_LIFECYCLE = "SELECT lifecycle FROM mt5_connections WHERE id = $1"


def _lifecycle_refusal(lifecycle: str) -> LifecycleRefused:
    if lifecycle == "locked":
        return LifecycleRefused(
            "this connection's webhooks are locked by an operator (its secret may have leaked):"
            " rotate its webhook secret to unlock it"
        )
    return LifecycleRefused(_REVOKED)


async def pause_connection(call: Call) -> ConnectionView:
    """Paused: not polled, and its webhooks are answered 423 with Retry-After (ingest), which
    the Expert Advisor keeps in its outbox and retries: nothing is lost, it arrives on resume."""
    connection_id = call.path(ConnectionPath).connection_id
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        if await conn.fetchval(_PAUSE, connection_id) is None:
            lifecycle = await conn.fetchval(_LIFECYCLE, connection_id)
            if lifecycle != "paused":  # already paused: nothing to do
                raise _lifecycle_refusal(lifecycle)
        return await one_connection(conn, connection_id)


async def resume_connection(call: Call) -> ConnectionView:
    """Active again; a polled connection is due at once, to catch up on what the pause held."""
    connection_id = call.path(ConnectionPath).connection_id
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        if await conn.fetchval(_RESUME, connection_id) is not None:
            await conn.execute(_DUE_NOW, connection_id)
        else:
            lifecycle = await conn.fetchval(_LIFECYCLE, connection_id)
            if lifecycle != "active":
                raise _lifecycle_refusal(lifecycle)
        return await one_connection(conn, connection_id)


# --- Enable live ------------------------------------------------------------------------------

_LIVE_TARGET = "SELECT broker, connection_type, lifecycle FROM mt5_connections WHERE id = $1"


def _broker_title(name: str) -> str:
    try:
        return broker(name).title
    except UnknownBroker:
        return name


async def enable_live_connection(call: Call) -> ConnectionView:
    connection_id = call.path(ConnectionPath).connection_id
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        row = await conn.fetchrow(_LIVE_TARGET, connection_id)
        assert row is not None
        if row["connection_type"] != "live":
            raise NotLive()
        if row["lifecycle"] == "revoked":
            raise Refused(_REVOKED)
        try:
            await enable_live(conn, connection_id)
        except ConnectionRefused:
            # The one refusal left once the checks above passed: no demo has synced yet.
            title = _broker_title(row["broker"])
            raise DemoSyncMissing(
                f"a live connection is enabled only once one of your {title} demo connections"
                f" has synced successfully, and none has yet: connect a {title} demo account,"
                " let it sync, then enable this one"
            ) from None
        return await one_connection(conn, connection_id)


# --- A new webhook secret or URL --------------------------------------------------------------


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid", title="SecretRotation")

    overlap_seconds: int | None = Field(
        None,
        ge=0,
        le=int(MAX_OVERLAP.total_seconds()),
        description=(
            "How long the replaced secret keeps verifying, so the Expert Advisor can be given"
            " the new one meanwhile: 0 if it may have leaked. Default 24 hours, or 0 for a"
            " connection an operator locked."
        ),
    )


class NewWebhookSecret(BaseModel):
    model_config = ConfigDict(extra="forbid", title="NewWebhookSecret")

    connection_id: uuid.UUID
    # Shown in this answer only: never again, by any endpoint. Enter it in the Expert Advisor.
    webhook_secret: str
    # When the replaced secret stops verifying; null when none was active.
    previous_secrets_expire_at: datetime | None
    # A connection an operator locked is unlocked by a new secret.
    unlocked: bool


class NewWebhookUrl(BaseModel):
    model_config = ConfigDict(extra="forbid", title="NewWebhookUrl")

    connection_id: uuid.UUID
    # The old URL stopped at once: enter this one in the Expert Advisor.
    webhook_url: str


def _vault(call: Call) -> CredentialVault:
    vault = call.controls.vault
    if vault is None:  # no master key configured: the deployment's to fix, logged at start
        raise NotConfigured()
    return vault


async def _refuse_revoked(conn: Connection, connection_id: uuid.UUID) -> None:
    if await conn.fetchval(_LIFECYCLE, connection_id) == "revoked":
        raise Refused(_REVOKED)


async def rotate_secret(call: Call) -> NewWebhookSecret:
    connection_id = call.path(ConnectionPath).connection_id
    body = call.body(SecretRotation)
    overlap = None if body.overlap_seconds is None else timedelta(seconds=body.overlap_seconds)
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        vault = _vault(call)  # after the ownership check: a missing connection is a 404 first
        await _refuse_revoked(conn, connection_id)
        rotated = await rotate_webhook_secret(conn, vault, connection_id, overlap)
    return NewWebhookSecret(
        connection_id=connection_id,
        webhook_secret=rotated.webhook_secret,
        previous_secrets_expire_at=rotated.previous_secrets_expire_at,
        unlocked=rotated.unlocked,
    )


async def rotate_url(call: Call) -> NewWebhookUrl:
    connection_id = call.path(ConnectionPath).connection_id
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        await _refuse_revoked(conn, connection_id)
        rotated = await rotate_webhook_url(conn, connection_id, call.controls.ingest_url)
    return NewWebhookUrl(connection_id=connection_id, webhook_url=rotated.webhook_url)


# --- New broker credentials -------------------------------------------------------------------


def _not_blank(value: SecretStr) -> SecretStr:
    if not value.get_secret_value().strip():
        raise ValueError("the credentials are blank")
    return value


class NewCredentials(BaseModel):
    """Never echoed back, logged or traced: a SecretStr from the moment it is parsed."""

    model_config = ConfigDict(extra="forbid", title="NewCredentials")

    credentials: Annotated[
        SecretStr,
        Field(
            min_length=1,
            # Far more than any broker's sign-in, and far less than the body limit.
            max_length=MAX_CREDENTIAL_CHARACTERS,
            description=(
                "As the broker's `credential_fields` ask (GET /v1/brokers): the token itself"
                " when `credentials_are_a_token`, else a JSON object of the fields, as text."
            ),
        ),
        AfterValidator(_not_blank),
    ]


class StoredCredentials(BaseModel):
    model_config = ConfigDict(extra="forbid", title="StoredCredentials")

    connection_id: uuid.UUID
    stored_at: datetime
    # A polled connection tries them at once: its status says whether the broker took them.
    next_sync_at: datetime | None


async def set_credentials(call: Call) -> StoredCredentials:
    """Sealed into the vault, the replaced ones revoked. A broker signed in through a cloud
    terminal (MT5 through MetaApi) is refused: its terminal would have to be made again, a
    wait of minutes no request should hold (`poscal-sync connections provision` does it)."""
    connection_id = call.path(ConnectionPath).connection_id
    text = call.body(NewCredentials).credentials.get_secret_value()
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        vault = _vault(call)
        row = await conn.fetchrow(_LIVE_TARGET, connection_id)
        assert row is not None
        if row["lifecycle"] == "revoked":
            raise Refused(_REVOKED)
        try:
            plugin = broker(row["broker"])
        except UnknownBroker:
            raise Refused("this connection's broker is no longer supported") from None
        if plugin.terminals is not None or plugin.poll is None:
            raise NeedsProvisioning()
        try:
            stored = await set_broker_credentials(conn, vault, connection_id, text)
        except InvalidInput as exc:  # its message never quotes the input
            raise ValidationFailed([FieldProblem("body.credentials", str(exc))]) from None
        next_sync_at = await conn.fetchval(_DUE_NOW, connection_id)
    return StoredCredentials(
        connection_id=connection_id, stored_at=stored.stored_at, next_sync_at=next_sync_at
    )


# --- Delete -----------------------------------------------------------------------------------

_TERMINAL = """
SELECT c.broker, t.remote_account_id FROM mt5_connections c
LEFT JOIN cloud_terminals t ON t.connection_id = c.id WHERE c.id = $1
"""


class DeletedConnection(BaseModel):
    model_config = ConfigDict(extra="forbid", title="DeletedConnection")

    connection_id: uuid.UUID
    deleted: Literal[True]
    # Destroyed, ciphertext and all: nothing of them is left to open.
    credentials_destroyed: int
    # Its cloud terminal was removed at the service (MetaApi), so nothing runs or is billed.
    terminal_removed: bool


async def delete(call: Call) -> DeletedConnection:
    """The connection, its credentials and its cloud terminal; its journal rows stay (the
    user's history), unlinked from it. Afterwards it is answered as one that never existed.

    One transaction holds the connection from the ownership check to the end, so a terminal
    service that cannot remove the terminal now rolls everything back: nothing is deleted."""
    connection_id = call.path(ConnectionPath).connection_id
    terminals = call.controls.terminals
    async with call.db.as_service_for(call.caller, connection_id) as conn:
        found = await conn.fetchrow(_TERMINAL, connection_id)
        assert found is not None
        if found["remote_account_id"] is not None and terminals(found["broker"]) is None:
            raise NotConfigured()
        try:
            deleted = await delete_connection(conn, connection_id, terminals)
        except ProvisioningError:
            raise TerminalUnreachable(30) from None
    return DeletedConnection(
        connection_id=connection_id,
        deleted=True,
        credentials_destroyed=deleted.credentials_destroyed,
        terminal_removed=deleted.removed_terminal is not None,
    )


_SAME_AS_MISSING = "Another user's connection is answered exactly as one that does not exist."

OPERATIONS = (
    Operation(
        "POST",
        "/v1/connections/{connection_id}/sync",
        sync_now,
        operation_id="syncConnectionNow",
        summary="Sync a polled connection now",
        description=(
            "Makes the connection due at once; the poller syncs it as soon as it is free. Within"
            " the user's sync rate (`POSCAL_SYNC_RATE_PER_USER`, the poller's own limit) and at"
            " most once per `POSCAL_API_SYNC_NOW_MIN_INTERVAL_SECONDS` per connection, else 429"
            " with Retry-After. A connection its Expert Advisor feeds is refused (409"
            f" `not_polled`): it syncs when the Expert Advisor sends. {_SAME_AS_MISSING}"
        ),
        response=SyncRequest,
        status=202,
        path_params=ConnectionPath,
        errors=(NotPolled, NotReadyToSync, SyncLimited),
    ),
    Operation(
        "POST",
        "/v1/connections/{connection_id}/pause",
        pause_connection,
        operation_id="pauseConnection",
        summary="Pause a connection: no polling, its webhooks held by their sender",
        description=(
            "While paused, a polled connection is not polled and the Expert Advisor's webhooks"
            " are answered 423 with Retry-After: it keeps them and sends them after resume."
            f" Pausing a paused connection changes nothing. {_SAME_AS_MISSING}"
        ),
        response=ConnectionView,
        path_params=ConnectionPath,
        errors=(LifecycleRefused,),
    ),
    Operation(
        "POST",
        "/v1/connections/{connection_id}/resume",
        resume_connection,
        operation_id="resumeConnection",
        summary="Resume a paused connection",
        description=(
            "Active again; a polled connection is due at once. Resuming an active connection"
            f" changes nothing. {_SAME_AS_MISSING}"
        ),
        response=ConnectionView,
        path_params=ConnectionPath,
        errors=(LifecycleRefused,),
    ),
    Operation(
        "POST",
        "/v1/connections/{connection_id}/enable-live",
        enable_live_connection,
        operation_id="enableLiveConnection",
        summary="Let a live connection sync",
        description=(
            "Only once a demo connection of the same broker by the same user has synced"
            f" successfully; the refusal (409 `demo_sync_missing`) says so. {_SAME_AS_MISSING}"
        ),
        response=ConnectionView,
        path_params=ConnectionPath,
        errors=(NotLive, DemoSyncMissing, Refused),
    ),
    Operation(
        "POST",
        "/v1/connections/{connection_id}/webhook-secret",
        rotate_secret,
        operation_id="rotateWebhookSecret",
        summary="A new webhook secret, shown in this answer only",
        description=(
            "The replaced secret keeps verifying for `overlap_seconds`. A locked connection is"
            f" unlocked, its old secret ending at once. {_SAME_AS_MISSING}"
        ),
        response=NewWebhookSecret,
        path_params=ConnectionPath,
        body=SecretRotation,
        errors=(Refused, NotConfigured),
    ),
    Operation(
        "POST",
        "/v1/connections/{connection_id}/webhook-url",
        rotate_url,
        operation_id="rotateWebhookUrl",
        summary="A new webhook URL; the old one stops at once",
        description=_SAME_AS_MISSING,
        response=NewWebhookUrl,
        path_params=ConnectionPath,
        errors=(Refused,),
    ),
    Operation(
        "PUT",
        "/v1/connections/{connection_id}/credentials",
        set_credentials,
        operation_id="setConnectionCredentials",
        summary="Enter new broker credentials for a polled connection",
        description=(
            "Sealed into the vault; the replaced ones are revoked, and a polled connection is"
            " due at once. Never returned. A connection signed in through a cloud terminal"
            f" (MT5) is refused (409 `needs_provisioning`). {_SAME_AS_MISSING}"
        ),
        response=StoredCredentials,
        path_params=ConnectionPath,
        body=NewCredentials,
        errors=(NeedsProvisioning, Refused, NotConfigured),
    ),
    Operation(
        "DELETE",
        "/v1/connections/{connection_id}",
        delete,
        operation_id="deleteConnection",
        summary="Delete a connection: its credentials destroyed, its cloud terminal removed",
        description=(
            "Its journal rows stay, unlinked from it. If its cloud terminal cannot be removed"
            " now, nothing is deleted (503 `terminal_unreachable`): retry. Afterwards it is"
            f" answered as one that does not exist. {_SAME_AS_MISSING}"
        ),
        response=DeletedConnection,
        path_params=ConnectionPath,
        # A terminal removed at its service is a slow outside call.
        cost=3,
        errors=(NotConfigured, TerminalUnreachable),
    ),
)
