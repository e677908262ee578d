"""What ingest answers when it refuses a delivery, mapped to HTTP in one place (app.py)."""

from __future__ import annotations

# The router's own refusals of a path or method it does not serve, in the same JSON shape.
ROUTER_ERRORS: dict[int, str] = {404: "not_found", 405: "method_not_allowed"}


class IngestRefusal(Exception):
    """A delivery refused, with what the sender is told:

    IngestRefusal
     ├── IncompleteBody         400: the sender went away before the whole body arrived
     ├── Unauthorized           401: unknown URL, a secret that does not decrypt, or failed
     │                          verification (indistinguishable to the sender)
     ├── LiveNotEnabled         403: a live connection before `connections enable-live`
     ├── RequestTimeout         408: the body did not arrive in time (the connection is closed)
     ├── Replay                 409: this webhook id is durably accepted (on Kafka) already
     ├── PayloadTooLarge        413
     ├── UnsupportedMediaType   415: the body is not declared as JSON
     ├── Locked                 423: an operator locked the connection (`connections lock`)
     │    └── Paused                its user paused it: with Retry-After, to be sent again
     ├── RateLimited            429: with Retry-After, over the connection's or user's rate
     │    ├── ClientThrottled       a malformed or unknown URL from a client over its refusal
     │    │                         budget
     │    └── VerificationThrottled this source failed verification repeatedly
     └── Unavailable            503: the connection could not be looked up, the webhook id not
          │                     claimed or the event not made durable, or ingest is not ready
          │                     yet; the sender should retry
          ├── InProgress            this webhook id is claimed by a publish that has not
          │                         finished (its replica may have died): retry after its lease
          └── Overloaded            more requests in progress than this replica answers at once

    `reason` is a code from a fixed set, for audit, logs and metrics only; the sender sees
    `error` and `public_detail`, which never say which part of a signature was wrong. Every
    refusal but our own 503s spends a refusal budget (`spends_refusal_budget`, see
    client_refusals.py): the sender's for a refusal of a delivery that verified (`verified`),
    else the client address's.
    """

    status_code = 400
    error = "bad_request"
    public_detail = "the request was refused"
    # The client caused it, so it counts towards a refusal budget.
    spends_refusal_budget = True
    # Only ever raised for a delivery that verified: it is the sender's, not the address's.
    verified = False

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def headers(self) -> dict[str, str]:
        return {}


class IncompleteBody(IngestRefusal):
    status_code = 400
    error = "incomplete_body"
    public_detail = "the body ended before it was complete"


class Unauthorized(IngestRefusal):
    status_code = 401
    error = "unauthorized"
    public_detail = "the webhook could not be verified for this connection"


class LiveNotEnabled(IngestRefusal):
    status_code = 403
    error = "live_not_enabled"
    public_detail = "this live connection is not enabled yet; sync a demo connection first"
    verified = True


class RequestTimeout(IngestRefusal):
    status_code = 408
    error = "request_timeout"
    public_detail = "the body did not arrive in time"

    def headers(self) -> dict[str, str]:
        # The rest of a body this slow may still be on its way: nothing else can follow it on
        # this connection.
        return {"Connection": "close"}


class Replay(IngestRefusal):
    status_code = 409
    error = "replay"
    public_detail = "this webhook-id is already accepted for this connection: do not resend it"
    verified = True


class PayloadTooLarge(IngestRefusal):
    status_code = 413
    error = "payload_too_large"
    public_detail = "the body is larger than this endpoint accepts"


class UnsupportedMediaType(IngestRefusal):
    status_code = 415
    error = "unsupported_media_type"
    public_detail = "the body must be JSON (content-type application/json)"


class Locked(IngestRefusal):
    status_code = 423
    error = "locked"
    public_detail = "this connection is locked by its operator; ask them to unlock it"
    verified = True


class Paused(Locked):
    """Unlike a lock, a pause ends without the sender doing anything: Retry-After tells it to
    keep the delivery and send it again (the Expert Advisor does; clients/mt5). Its code is
    its parent's, `locked`, as every subtype's is: the Retry-After is what tells them apart."""

    public_detail = "this connection is paused by its user; keep this webhook and retry later"

    def __init__(self, reason: str, retry_after_seconds: int) -> None:
        super().__init__(reason)
        self.retry_after_seconds = max(1, retry_after_seconds)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class RateLimited(IngestRefusal):
    status_code = 429
    error = "rate_limited"
    public_detail = "too many webhooks; retry after the time in Retry-After"
    verified = True

    def __init__(self, reason: str, retry_after_seconds: int) -> None:
        super().__init__(reason)
        self.retry_after_seconds = max(1, retry_after_seconds)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class ClientThrottled(RateLimited):
    public_detail = "too many refused requests from this address; retry after Retry-After"
    verified = False


class VerificationThrottled(RateLimited):
    public_detail = "too many failed verifications from this address; retry after Retry-After"
    verified = False


class Unavailable(IngestRefusal):
    status_code = 503
    error = "unavailable"
    public_detail = "the event could not be stored; retry later"
    spends_refusal_budget = False  # our fault, not the client's

    def __init__(self, reason: str, retry_after_seconds: int = 5) -> None:
        super().__init__(reason)
        self.retry_after_seconds = max(1, retry_after_seconds)

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after_seconds)}


class InProgress(Unavailable):
    public_detail = (
        "a delivery with this webhook-id is still being stored; nothing is accepted yet:"
        " retry after Retry-After"
    )
    # Not our failure: the sender's own duplicate, sent while the first is being stored.
    spends_refusal_budget = True
    verified = True


class Overloaded(Unavailable):
    public_detail = "too many requests in progress; retry later"

    def __init__(self, reason: str) -> None:
        super().__init__(reason, retry_after_seconds=1)
