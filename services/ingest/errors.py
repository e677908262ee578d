"""What ingest answers when it refuses a delivery, mapped to HTTP in one place (app.py).

IngestRefusal
 ├── Unauthorized      401: unknown connection, a secret that does not decrypt, or failed
 │                     verification (indistinguishable to the sender)
 ├── PayloadTooLarge   413
 └── Unavailable       503: the connection could not be looked up or the event could not be
                       made durable; the sender should retry
"""

from __future__ import annotations


class IngestRefusal(Exception):
    status_code = 400
    error = "bad_request"
    public_detail = "the request was refused"

    def __init__(self, reason: str) -> None:
        # `reason` is for audit and logs only; the client sees `public_detail`.
        super().__init__(reason)
        self.reason = reason


class Unauthorized(IngestRefusal):
    status_code = 401
    error = "unauthorized"
    public_detail = "the webhook could not be verified for this connection"


class PayloadTooLarge(IngestRefusal):
    status_code = 413
    error = "payload_too_large"
    public_detail = "the body is larger than this endpoint accepts"


class Unavailable(IngestRefusal):
    status_code = 503
    error = "unavailable"
    public_detail = "the event could not be stored; retry later"
