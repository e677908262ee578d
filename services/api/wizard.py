"""The connection wizard (seed plan §8): verify what the user entered with the broker
(`POST /v1/wizard/sessions`), preview the accounts it reaches (`GET .../{session_id}`), confirm
one (`POST .../{session_id}/confirm`): the connection is made and its first sync starts."""

from __future__ import annotations

import unicodedata
import uuid
from datetime import datetime
from typing import TYPE_CHECKING, Annotated, Any, Literal

import orjson
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from services.api.brokers import syncs_by
from services.api.errors import FieldProblem, NotFound, Unavailable, ValidationFailed
from services.api.operations import Call, Operation
from services.api.wizard_errors import (
    AccountMismatched,
    AccountTypeMismatch,
    AlreadyConnected,
    BrokerFailed,
    BrokerRateLimited,
    BrokerUnreachable,
    CredentialsRefused,
    DemoSyncRequired,
    NoAccounts,
    ProvisioningBusy,
    SessionConfirmed,
    SessionFailed,
    SessionNotReady,
    TokenExpired,
    UnknownAccount,
    UnknownServer,
    conflict,
)
from services.api.wizard_verification import Wizard
from services.shared.brokers import Broker, InvalidCredential, broker, broker_names
from services.shared.brokers.discovery import FoundAccount, type_mismatch
from services.shared.connection_admin.connections import MAX_LABEL_LENGTH
from services.shared.connection_admin.live import demo_first, demo_synced
from services.shared.connection_admin.wizard_sessions import (
    SessionGone,
    SessionRefused,
    cancel_session,
    confirm_session,
    open_session,
    verifications_under_way,
)

if TYPE_CHECKING:
    from services.api.bootstrap import ApiWiring

MAX_FIELD_CHARS = 4096
_SESSION = """
SELECT id, broker, connection_type, sync_method, state, accounts, progress, error,
       connection_id, created_at, expires_at,
       state = 'verifying' AND updated_at < now() - make_interval(secs => $2) AS stalled
FROM wizard_sessions WHERE id = $1 AND expires_at > now()
"""
# A verification that has not moved for this long past its own deadline has no run left (the
# API replica running it stopped): it is shown failed, so the client stops waiting.
STALLED_AFTER_SECONDS = 60.0
STALLED = {
    "code": "timed_out",
    "message": "the verification stopped before it finished: start again",
}
INSTALL_HINT = (
    "In MetaTrader 5: Tools > Options > Expert Advisors, tick 'Allow WebRequest for listed URL'"
    " and add the webhook URL's origin; attach the PosCal Expert Advisor to one chart of the"
    " account and paste the webhook URL and secret into its inputs. The secret is shown only"
    " now: keep it in the EA's inputs, nowhere else. The account appears once its first"
    " webhook arrives."
)
EA_NOTE = (
    "nothing is checked with the broker: the Expert Advisor signs its webhooks. The webhook URL"
    " and its secret are shown once, when the connection is confirmed"
)


def _a_broker(value: str) -> str:
    if value not in broker_names():
        raise ValueError(f"no broker {value!r}: one of {', '.join(broker_names())}")
    return value


def _a_label(value: str) -> str:
    value = value.strip()
    if any(unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value):
        raise ValueError("a label is printable text (no control or format characters)")
    if not value:
        raise ValueError("a label is not blank")
    return value


class SessionRequest(BaseModel):
    """What the user entered: the broker, demo or live, how it should sync (MT5: `webhook`
    for the Expert Advisor, `poll` for cloud sync; may be omitted for a broker with one way), the
    broker's credential fields (`GET /v1/brokers` lists them; for the Expert Advisor only
    `login` and `server`). Never stored unless the broker accepts them, then only sealed."""

    model_config = ConfigDict(extra="forbid", title="WizardSessionRequest")

    broker: Annotated[
        str,
        Field(json_schema_extra={"enum": list(broker_names())}),
        AfterValidator(_a_broker),
    ]
    connection_type: Literal["demo", "live"]
    sync: Literal["webhook", "poll"] | None = None
    credentials: dict[
        Annotated[str, Field(min_length=1, max_length=64)],
        Annotated[str, Field(max_length=MAX_FIELD_CHARS)],
    ] = Field(max_length=8)

    def __repr__(self) -> str:  # never print the credentials
        return f"SessionRequest({self.broker}, {self.connection_type}, {self.sync})"


class SessionPath(BaseModel):
    model_config = ConfigDict(extra="forbid", title="WizardSessionPath")

    session_id: uuid.UUID


class WizardAccount(BaseModel):
    model_config = ConfigDict(extra="forbid", title="WizardAccount")

    account_number: str
    # What the broker says the account is (null: it does not say).
    connection_type: Literal["demo", "live"] | None
    # Whether it can be confirmed as the session's connection type.
    matches_connection_type: bool
    server: str | None
    title: str | None
    currency: str | None
    balance: str | None
    details: dict[str, str]


class WizardStep(BaseModel):
    model_config = ConfigDict(extra="forbid", title="WizardStep")

    step: str
    detail: str


class WizardFailure(BaseModel):
    model_config = ConfigDict(extra="forbid", title="WizardFailure")

    code: str
    message: str


class WizardSession(BaseModel):
    """A wizard session: `verifying` (follow it: a cloud terminal is being provisioned,
    `progress` says where), `verified` (pick one of `accounts` and confirm), `failed`
    (`error` says why: start again), `confirmed` (`connection_id`, followed at `status_url`)."""

    model_config = ConfigDict(extra="forbid", title="WizardSession")

    id: uuid.UUID
    broker: str
    connection_type: Literal["demo", "live"]
    sync: Literal["webhook", "poll"]
    state: Literal["verifying", "verified", "failed", "confirmed"]
    accounts: list[WizardAccount]
    progress: WizardStep | None
    error: WizardFailure | None
    note: str | None
    connection_id: uuid.UUID | None
    status_url: str | None
    created_at: datetime
    expires_at: datetime


class ConfirmRequest(BaseModel):
    model_config = ConfigDict(extra="forbid", title="WizardConfirmRequest")

    account_number: str = Field(min_length=1, max_length=64)
    account_label: Annotated[
        str, Field(min_length=1, max_length=MAX_LABEL_LENGTH), AfterValidator(_a_label)
    ]


class WebhookSetup(BaseModel):
    """For the Expert Advisor: where it posts and the secret it signs with, shown this once."""

    model_config = ConfigDict(extra="forbid", title="WizardWebhookSetup")

    url: str
    secret: str
    install_hint: str


class ConfirmedConnection(BaseModel):
    model_config = ConfigDict(extra="forbid", title="WizardConfirmed")

    connection_id: uuid.UUID
    # Follow the connection (its state, first sync, errors) here.
    status_url: str
    # due_now: the poller syncs it at once; after_first_webhook: once the EA posts.
    first_sync: Literal["due_now", "after_first_webhook"]
    webhook: WebhookSetup | None


def _wizard(call: Call) -> Wizard:
    wiring: ApiWiring = call.request.app.state.wiring
    if wiring.wizard is None:
        raise Unavailable()  # no vault key configured: nothing could be sealed
    return wiring.wizard


def _sync_of(plugin: Broker, asked: Literal["webhook", "poll"] | None) -> str:
    ways = syncs_by(plugin)
    if asked is None and len(ways) == 1:
        return ways[0]
    if asked is None or asked not in ways:
        raise ValidationFailed(
            [FieldProblem("body.sync", f"{plugin.title} syncs by {' or '.join(ways)} only")]
        )
    return asked


MAX_NAME_CHARS = 128  # a login, a server name, a query id: what is shown and stored as text


def _plain_fields(plugin: Broker, fields: dict[str, str]) -> None:
    """The fields that are no secret become the account's number and server, shown and kept
    as text: printable, and short."""
    for spec in plugin.credentials.fields:
        value = fields.get(spec.name)
        if spec.secret or value is None:
            continue
        if len(value) > MAX_NAME_CHARS or any(
            unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn") for ch in value
        ):
            raise ValidationFailed(
                [
                    FieldProblem(
                        f"body.credentials.{spec.name}",
                        f"{spec.label} is printable text of at most {MAX_NAME_CHARS} characters",
                    )
                ]
            )


def entered_credentials(plugin: Broker, sync: str, fields: dict[str, str]) -> bytes:
    """The credentials in the vault's form; ValidationFailed naming what is wrong, never it."""
    _plain_fields(plugin, fields)
    if sync == "webhook":
        wanted = {"login", "server"} if plugin.needs_server else {"login"}
        unknown, missing = sorted(set(fields) - wanted), sorted(wanted - set(fields))
        if unknown or missing or not all(fields[k].strip() for k in wanted):
            raise ValidationFailed(
                [
                    FieldProblem(
                        "body.credentials",
                        f"the Expert Advisor path takes {' and '.join(sorted(wanted))} only,"
                        " each non-empty (no password: nothing signs in to the broker)",
                    )
                ]
            )
        return orjson.dumps({k: fields[k].strip() for k in sorted(wanted)})
    try:
        if plugin.credentials.token:
            (name,) = plugin.credentials.names
            if set(fields) != {name}:
                raise InvalidCredential(f"{plugin.name} credentials are one field: {name!r}")
            return plugin.credentials.seal_form(plugin.name, fields[name])
        return plugin.credentials.seal_form(plugin.name, orjson.dumps(fields).decode())
    except InvalidCredential as exc:
        raise ValidationFailed([FieldProblem("body.credentials", str(exc))]) from None


async def start_session(call: Call) -> WizardSession:
    body = call.body(SessionRequest)
    wizard = _wizard(call)
    plugin = broker(body.broker)
    if body.connection_type not in plugin.connection_types:
        raise ValidationFailed(
            [FieldProblem("body.connection_type", f"{plugin.title} takes no such connections")]
        )
    sync = _sync_of(plugin, body.sync)
    entered = entered_credentials(plugin, sync, body.credentials)
    caller = call.caller
    if body.connection_type == "live":
        async with call.db.as_service_for_self(caller) as conn:
            if not await demo_synced(conn, caller.user_id, plugin.name):
                raise DemoSyncRequired(demo_first(plugin.title))
    common: dict[str, Any] = {
        "user_id": caller.user_id,
        "broker_name": plugin.name,
        "connection_type": body.connection_type,
        "sync_method": sync,
        "lifetime": wizard.session_lifetime,
    }
    if sync == "webhook":
        sign_in = orjson.loads(entered)
        account = FoundAccount(sign_in["login"], body.connection_type, server=sign_in.get("server"))
        async with call.db.as_service_for_self(caller) as conn:
            session_id = await open_session(conn, wizard.vault, accounts=[account], **common)
    elif plugin.discover is not None:
        accounts = await wizard.discover(plugin, entered, body.connection_type)
        if not accounts:
            raise NoAccounts()
        async with call.db.as_service_for_self(caller) as conn:
            session_id = await open_session(
                conn, wizard.vault, credentials=entered, accounts=accounts, **common
            )
    else:
        sign_in = orjson.loads(entered)
        async with call.db.as_service_for_self(caller) as conn:
            under_way = await verifications_under_way(conn, caller.user_id)
            if under_way >= wizard.settings.wizard_provisioning_per_user:
                raise ProvisioningBusy(30)
            session_id = await open_session(
                conn,
                wizard.vault,
                progress={"step": "queued", "detail": "provisioning the cloud terminal"},
                **common,
            )
        wizard.provision(
            call.db,
            caller,
            session_id,
            plugin,
            body.connection_type,
            entered,
            sign_in["login"].strip(),
            sign_in["server"].strip(),
        )
    return await _read_session(call, session_id)


async def _read_session(call: Call, session_id: uuid.UUID) -> WizardSession:
    wizard = _wizard(call)
    stalled_after = wizard.settings.wizard_provisioning_timeout_seconds + STALLED_AFTER_SECONDS
    async with call.db.as_user(call.caller) as conn:
        row = await conn.fetchrow(_SESSION, session_id, stalled_after)
    if row is None:
        raise NotFound()
    state, error = row["state"], row["error"]
    if row["stalled"]:
        state, error = "failed", STALLED
    plugin = broker(row["broker"])
    accounts = []
    for document in row["accounts"]:
        found = FoundAccount(
            account_number=document["account_number"],
            connection_type=document.get("connection_type"),
            server=document.get("server"),
        )
        accounts.append(
            WizardAccount(
                account_number=found.account_number,
                connection_type=found.connection_type,
                matches_connection_type=type_mismatch(plugin.title, found, row["connection_type"])
                is None,
                server=found.server,
                title=document.get("title"),
                currency=document.get("currency"),
                balance=document.get("balance"),
                details=document.get("details") or {},
            )
        )
    connection_id = row["connection_id"]
    return WizardSession(
        id=row["id"],
        broker=row["broker"],
        connection_type=row["connection_type"],
        sync=row["sync_method"],
        state=state,
        accounts=accounts,
        progress=None if row["progress"] is None else WizardStep(**row["progress"]),
        error=None if error is None else WizardFailure(**error),
        note=EA_NOTE if row["sync_method"] == "webhook" else None,
        connection_id=connection_id,
        status_url=None if connection_id is None else f"/v1/connections/{connection_id}",
        created_at=row["created_at"],
        expires_at=row["expires_at"],
    )


async def get_session(call: Call) -> WizardSession:
    return await _read_session(call, call.path(SessionPath).session_id)


async def confirm(call: Call) -> ConfirmedConnection:
    session_id = call.path(SessionPath).session_id
    body = call.body(ConfirmRequest)
    wizard = _wizard(call)
    try:
        async with call.db.as_service_for_session(call.caller, session_id) as conn:
            broker_name = await conn.fetchval(
                "SELECT broker FROM wizard_sessions WHERE id = $1", session_id
            )
            done = await confirm_session(
                conn,
                wizard.vault,
                session_id=session_id,
                user_id=call.caller.user_id,
                account_number=body.account_number,
                account_label=body.account_label,
                ingest_url=wizard.settings.ingest_url,
                api_url=wizard.api_url(broker_name),
                poll_interval_seconds=wizard.settings.poll_interval_seconds,
            )
    except SessionGone:
        raise NotFound() from None
    except SessionRefused as exc:
        raise conflict(exc.code, exc.message) from None
    webhook = None
    if done.sync_method == "webhook":
        webhook = WebhookSetup(
            url=done.created.webhook_url,
            secret=done.created.webhook_secret,
            install_hint=INSTALL_HINT,
        )
    return ConfirmedConnection(
        connection_id=done.connection_id,
        status_url=f"/v1/connections/{done.connection_id}",
        first_sync="due_now" if done.polled else "after_first_webhook",
        webhook=webhook,
    )


class WizardCancelled(BaseModel):
    model_config = ConfigDict(extra="forbid", title="WizardCancelled")

    id: uuid.UUID
    # Whether a cloud terminal verified for it was removed now (false: none, or it is removed
    # later, once its service answers).
    terminal_removed: bool


async def cancel(call: Call) -> WizardCancelled:
    session_id = call.path(SessionPath).session_id
    wizard = _wizard(call)
    async with call.db.as_service_for_session(call.caller, session_id) as conn:
        terminal = await cancel_session(conn, session_id, call.caller.user_id)
    removed = terminal is not None and await wizard.remove_terminal(call.db, terminal)
    return WizardCancelled(id=session_id, terminal_removed=removed)


_VERIFY_REFUSALS = (
    CredentialsRefused,
    TokenExpired,
    UnknownServer,
    AccountMismatched,
    NoAccounts,
    DemoSyncRequired,
    BrokerRateLimited,
    ProvisioningBusy,
    BrokerUnreachable,
    BrokerFailed,
)
_CONFIRM_REFUSALS = (
    SessionNotReady,
    SessionFailed,
    SessionConfirmed,
    UnknownAccount,
    AccountTypeMismatch,
    AlreadyConnected,
    DemoSyncRequired,
)

OPERATIONS = (
    Operation(
        "POST",
        "/v1/wizard/sessions",
        start_session,
        operation_id="startWizardSession",
        summary="Verify credentials with the broker and list the accounts they reach",
        description=(
            "The broker's adapter signs in with the credentials, bounded by"
            " `POSCAL_API_WIZARD_VERIFY_TIMEOUT_SECONDS`; nothing is stored unless it succeeds,"
            " then only sealed in the vault, and never returned. For MT5 cloud sync the session"
            " starts `verifying` while a cloud terminal is provisioned: follow it with"
            " getWizardSession. For the MT5 Expert Advisor nothing is checked with the broker."
            " A live session needs a demo connection of the same broker that has synced."
        ),
        response=WizardSession,
        status=201,
        body=SessionRequest,
        # A sign-in at the broker (a cloud terminal's provisioning), and sealing.
        cost=3,
        errors=_VERIFY_REFUSALS,
    ),
    Operation(
        "GET",
        "/v1/wizard/sessions/{session_id}",
        get_session,
        operation_id="getWizardSession",
        summary="A wizard session: its state, progress, and the accounts found",
        description="Another user's session, and an expired one, are answered as one that"
        " does not exist.",
        response=WizardSession,
        path_params=SessionPath,
    ),
    Operation(
        "DELETE",
        "/v1/wizard/sessions/{session_id}",
        cancel,
        operation_id="cancelWizardSession",
        summary="Back out of the wizard: the session and what it verified go",
        description=(
            "The sealed credentials are destroyed and a cloud terminal verified for the session"
            " is removed. A connection already confirmed stays. Another user's session is"
            " answered as one that does not exist."
        ),
        response=WizardCancelled,
        path_params=SessionPath,
    ),
    Operation(
        "POST",
        "/v1/wizard/sessions/{session_id}/confirm",
        confirm,
        operation_id="confirmWizardSession",
        summary="Connect the account picked; its first sync starts",
        description=(
            "Creates the connection with the label given and its credentials, and starts its"
            " first sync (polled ones are due at once). Follow it at `status_url`. For the"
            " Expert Advisor the answer holds the webhook URL and its secret, shown only this"
            " once. A live connection is enabled only after a demo connection of the same"
            " broker has synced."
        ),
        response=ConfirmedConnection,
        status=201,
        path_params=SessionPath,
        body=ConfirmRequest,
        cost=2,
        errors=_CONFIRM_REFUSALS,
    ),
)
