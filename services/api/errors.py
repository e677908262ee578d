"""What the app API answers when it refuses a request, in one JSON shape, mapped to HTTP in one
place (app.py): raise one of these anywhere below a route."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

REALM = "poscal"


@dataclass(frozen=True)
class FieldProblem:
    """One invalid part of a request: where (`query.limit`, `body.label`) and what is wrong."""

    path: str
    message: str


class ApiError(Exception):
    """A refusal, with what the client is told:

    ApiError
     ├── BadRequest              400: a CORS preflight from an origin not configured
     ├── Unauthenticated         401: no bearer token (WWW-Authenticate without an error)
     │    └── InvalidToken            a token that does not verify, for whatever reason
     ├── NotFound                404: no such route, or no such resource of this user's (the
     │                           same answer whether it does not exist or is another user's)
     ├── MethodNotAllowed        405
     ├── Refused                 409: the connection cannot do that now; `detail` says why
     │    ├── NotPolled               sync now of a connection its Expert Advisor feeds
     │    ├── NotReadyToSync          sync now of a paused, unenabled or credential-less one
     │    ├── LifecycleRefused        pause/resume of a locked or revoked connection
     │    ├── NotLive                 enable live of a demo connection
     │    ├── DemoSyncMissing         enable live before a demo of the broker has synced
     │    └── NeedsProvisioning       new credentials of a cloud-terminal connection
     ├── PayloadTooLarge         413: over POSCAL_API_MAX_BODY_BYTES, refused before reading on
     ├── UnsupportedMediaType    415: a body that is not declared JSON
     ├── ValidationFailed        422: the query, path or body, with each field's problem
     ├── RateLimited             429: with Retry-After, over the user's request budget
     │    ├── ClientThrottled         too many failed sign-ins from this client address
     │    └── SyncLimited             over the per-user sync rate, or this connection just synced
     ├── InternalError           500: never says what went wrong inside
     └── Unavailable             503: with Retry-After, not ready yet (Postgres, the JWKS)
          ├── NotConfigured           a control that needs what this deployment lacks (the
          │                           master key, a terminal service)
          └── TerminalUnreachable     a cloud terminal could not be removed now (nothing was
                                      deleted)

    `error` is for programs, `public_detail` for people; neither says more than the status does.
    """

    status_code = 500
    error = "internal_error"
    public_detail = "something went wrong on our side; it has been logged"

    def headers(self) -> dict[str, str]:
        return {}

    def body(self) -> dict[str, Any]:
        return {"error": self.error, "detail": self.public_detail}


class BadRequest(ApiError):
    status_code = 400
    error = "bad_request"
    public_detail = "the request was refused"


class Unauthenticated(ApiError):
    status_code = 401
    error = "unauthenticated"
    public_detail = "sign in: this needs a bearer access token"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}"'}


class InvalidToken(Unauthenticated):
    """`reason` is for logs and metrics only; the client is told nothing RFC 6750 does not
    allow (`invalid_token`), so no one learns which check a forged token failed."""

    error = "invalid_token"
    public_detail = "the access token is invalid or expired; sign in again"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": f'Bearer realm="{REALM}", error="invalid_token"'}


class NotFound(ApiError):
    status_code = 404
    error = "not_found"
    public_detail = "there is nothing here"


class MethodNotAllowed(ApiError):
    status_code = 405
    error = "method_not_allowed"
    public_detail = "this method is not allowed here"

    def __init__(self, allow: str = "") -> None:
        super().__init__()
        self.allow = allow

    def headers(self) -> dict[str, str]:
        return {"Allow": self.allow} if self.allow else {}


class Refused(ApiError):
    """A control the connection cannot take as it is. `detail`, when given, says what the user
    can do about it; it names nothing but the caller's own connection."""

    status_code = 409
    error = "refused"
    public_detail = "this connection cannot do that now"

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail or self.public_detail)
        if detail:
            self.public_detail = detail


class NotPolled(Refused):
    error = "not_polled"
    public_detail = (
        "this connection syncs when its Expert Advisor sends: there is nothing to poll; check"
        " that the Expert Advisor runs in MetaTrader"
    )


class NotReadyToSync(Refused):
    error = "not_ready_to_sync"
    public_detail = "this connection cannot sync now"


class LifecycleRefused(Refused):
    error = "lifecycle_refused"
    public_detail = "only an active connection can be paused, and only a paused one resumed"


class NotLive(Refused):
    error = "not_live"
    public_detail = "this is a demo connection: only live connections need enabling"


class DemoSyncMissing(Refused):
    error = "demo_sync_missing"
    public_detail = (
        "a live connection is enabled only once a demo connection of the same broker has"
        " synced successfully: connect a demo account first, let it sync, then enable this one"
    )


class NeedsProvisioning(Refused):
    error = "needs_provisioning"
    public_detail = (
        "this connection signs in through a cloud terminal: new credentials mean making its"
        " terminal again, which the app cannot do yet; delete the connection and connect the"
        " account again with the new credentials"
    )


class PayloadTooLarge(ApiError):
    status_code = 413
    error = "payload_too_large"
    public_detail = "the body is larger than this API accepts"


class UnsupportedMediaType(ApiError):
    status_code = 415
    error = "unsupported_media_type"
    public_detail = "the body must be JSON (content-type application/json)"


class ValidationFailed(ApiError):
    status_code = 422
    error = "invalid_request"
    public_detail = "the request is not valid: see fields"

    def __init__(self, problems: Sequence[FieldProblem]) -> None:
        super().__init__()
        self.problems = tuple(problems)

    def body(self) -> dict[str, Any]:
        return super().body() | {
            "fields": [{"path": p.path, "message": p.message} for p in self.problems]
        }


class RateLimited(ApiError):
    status_code = 429
    error = "rate_limited"
    public_detail = "too many requests; retry after the time in Retry-After"

    def __init__(self, retry_after_seconds: int) -> None:
        super().__init__()
        self.retry_after_seconds = max(1, retry_after_seconds)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class ClientThrottled(RateLimited):
    public_detail = "too many failed sign-ins from this address; retry after Retry-After"


class SyncLimited(RateLimited):
    error = "sync_rate_limited"
    public_detail = "too many syncs asked for; retry after the time in Retry-After"


class InternalError(ApiError):
    pass


class Unavailable(ApiError):
    status_code = 503
    error = "unavailable"
    public_detail = "the API is not ready; retry after the time in Retry-After"

    def __init__(self, retry_after_seconds: int = 5) -> None:
        super().__init__()
        self.retry_after_seconds = max(1, retry_after_seconds)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class NotConfigured(Unavailable):
    error = "not_configured"
    public_detail = "this control is not available on this server yet; retry later"


class TerminalUnreachable(Unavailable):
    error = "terminal_unreachable"
    public_detail = (
        "the connection's cloud terminal could not be removed now, so nothing was deleted;"
        " retry after the time in Retry-After"
    )


def error_types(base: type[ApiError] = ApiError) -> list[type[ApiError]]:
    """Every refusal type there is, depth first (the OpenAPI document is derived from them)."""
    found: list[type[ApiError]] = []
    for cls in base.__subclasses__():
        found += [cls, *error_types(cls)]
    return found
