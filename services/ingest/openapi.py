"""The ingest HTTP API's OpenAPI 3.1 document, served at /openapi.json and kept in schemas/: its
error codes from the refusal types, its limits and defaults from the settings."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices

from services.ingest.errors import ROUTER_ERRORS, IngestRefusal, RateLimited, Unavailable
from services.ingest.settings import IngestSettings
from services.ingest.webhooks import WEBHOOK_ROUTE
from services.shared.openapi_files import PublishedDocument

OPENAPI_FILE = "ingest.json"


def _refusal_types(base: type[IngestRefusal] = IngestRefusal) -> list[type[IngestRefusal]]:
    found: list[type[IngestRefusal]] = []
    for cls in base.__subclasses__():
        found += [cls, *_refusal_types(cls)]
    return found


# The `error` codes of the webhook's refusals, with the status each is sent with: one per type
# of refusal ingest can answer (subtypes share their parent's code).
WEBHOOK_ERRORS: dict[str, int] = dict(
    sorted({cls.error: cls.status_code for cls in _refusal_types()}.items(), key=lambda e: e[1])
)
# Refusals that tell the sender when to retry (those with a wait of their own).
RETRY_AFTER_STATUSES = frozenset(
    cls.status_code for cls in _refusal_types() if issubclass(cls, RateLimited | Unavailable)
)
ROUTING_ERRORS: dict[str, int] = {error: status for status, error in ROUTER_ERRORS.items()}
ERROR_STATUSES = WEBHOOK_ERRORS | ROUTING_ERRORS
JSON_MEDIA_TYPES = ("application/json", "application/*+json")


def _variable(name: str) -> str:
    """A setting's environment variable, as the documents name it."""
    alias = IngestSettings.model_fields[name].validation_alias
    variable = alias.choices[0] if isinstance(alias, AliasChoices) else name.upper()
    return f"`{variable}`"


def _setting(name: str) -> str:
    """A setting as the documents name it: its variable and its default."""
    return f"{_variable(name)} (default {IngestSettings.model_fields[name].default})"


_SECURITY = f"""\
Every delivery is signed as [Standard Webhooks](https://www.standardwebhooks.com/) describe: the
signed content is `{{webhook-id}}.{{webhook-timestamp}}.{{raw body}}`, exactly the bytes sent.
`webhook-signature` holds space-separated entries, any of which may verify:

- `v1,<base64 HMAC-SHA256>` keyed with the base64-decoded connection secret (after `whsec_`);
- `v1a,<base64 Ed25519 signature>` checked against the connection's public keys.

Several secrets or keys may be active while one rotates. A timestamp further than
{_setting("signature_tolerance_seconds")} from the server's clock is refused. Unknown
URLs, wrong brokers and failed verifications all get the same 401. Failed verifications are
counted per connection and client address: after {_setting("failures_before_throttle")}
that address's failures get 429, for a `Retry-After` that doubles with each further failure (up
to {_setting("failure_throttle_cap_seconds")}). Nothing another address sends can stop a
delivery that verifies. Every refusal but a 503 of our own spends a refusal budget
({_setting("refusals_per_client")}): a refusal of a correctly signed delivery
its sender's on that connection, any other the client address's (an IPv6 address counts as its
/64). Over it, a malformed or unknown URL from that address is answered 429 at once, and its
refusals are recorded folded; a delivery that verifies is never refused by it. Deliveries are
rate-limited per connection ({_setting("rate_limit_per_connection")}) and per user
({_setting("rate_limit_per_user")}); client addresses are taken from
forwarding headers only when the peer is in {_variable("trusted_proxies")}."""


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: str) -> dict[str, Any]:
    return {"application/json": {"schema": _ref("schemas", schema)}}


def _paused_or_locked() -> dict[str, Any]:
    """423 carries Retry-After only when the connection is paused (a lock has none)."""
    response = _refusal(_REFUSALS[423], "locked")
    response["headers"] = {
        "Retry-After": {
            "description": "Sent when the connection is paused: seconds to wait before resending.",
            "required": False,
            "schema": {"type": "string", "pattern": "^[0-9]+$"},
        }
    }
    return response


def _refusal(description: str, error: str, *, retry_after: bool = False) -> dict[str, Any]:
    response: dict[str, Any] = {
        "description": description,
        "content": {
            "application/json": {
                "schema": _ref("schemas", "Error"),
                "example": {"error": error, "detail": "a sentence for people, not programs"},
            }
        },
    }
    if retry_after:
        response["headers"] = {"Retry-After": _ref("headers", "RetryAfter")}
    return response


# What each refusal status means for a sender (the codes and statuses come from errors.py).
_REFUSALS: dict[int, str] = {
    400: ("The connection closed before the whole body arrived (nothing was accepted)."),
    401: (
        "Unknown URL, wrong broker, missing or malformed webhook headers, a"
        " timestamp outside the tolerance, or no matching signature: indistinguishable"
        " on purpose."
    ),
    403: (
        "A live connection that `poscal-sync connections enable-live` has not enabled"
        " yet (a demo connection of the same broker must have synced first). Only"
        " correctly signed deliveries learn this."
    ),
    408: (
        f"The body did not arrive within {_setting('body_timeout_seconds')} of"
        " the headers; nothing was accepted and the connection is closed."
    ),
    409: (
        "This connection has already durably accepted (published to Kafka) a delivery"
        " with this `webhook-id`: stop sending it. Never answered for a delivery that"
        " is not on Kafka yet."
    ),
    413: f"The body (or its declared `Content-Length`) is over {_variable('max_body_bytes')}.",
    415: (
        "The body is not declared as JSON: its content type is neither"
        " `application/json` nor `application/*+json`."
    ),
    423: (
        "Without `Retry-After`: the connection's operator locked it (`poscal-sync connections"
        " lock`); nothing is accepted until they unlock it or rotate its secret. With"
        " `Retry-After`: its user paused it; keep the delivery and send it again then, it is"
        " accepted once the connection is resumed. Only correctly signed deliveries learn"
        " either: failed ones still get 401."
    ),
    429: (
        "Over the connection's or the user's delivery rate, a malformed or unknown URL"
        " from a client address over its refusal budget (answered before anything"
        " else is read), or this address failed verification repeatedly (its failures"
        " are held off for a time that doubles per further failure). A delivery that"
        " verifies is accepted whatever its address did. Retry after `Retry-After`."
    ),
    503: (
        "Nothing was accepted: the connection could not be looked up, the event could"
        " not be made durable, ingest is still waiting for Postgres or Kafka, more"
        f" requests are in progress than {_variable('max_concurrent_requests')}, or a delivery"
        " with this `webhook-id` is still being published (its publisher may have"
        " stopped; `Retry-After` is then the time left before the retry may take it"
        " over). Retry after `Retry-After`."
    ),
}


def _webhook_operation() -> dict[str, Any]:
    return {
        "operationId": "receiveWebhook",
        "summary": "Deliver one signed broker webhook",
        "description": (
            "Verifies the delivery against its connection, then publishes the exact raw body to"
            " the raw topic. 202 is answered only once Kafka has acknowledged the event"
            " (`acks=all`): a 202 is durable. The event id is derived from the connection and"
            " the `webhook-id`, so a sender's retry of one delivery is the same event: retry"
            " 429, 503 and unanswered requests with the same `webhook-id` until 202 or 409,"
            " and nothing is lost or doubled."
        ),
        "tags": ["webhooks"],
        "security": [{"standardWebhooks": []}],
        "parameters": [
            _ref("parameters", "Broker"),
            _ref("parameters", "WebhookPathId"),
            _ref("parameters", "WebhookId"),
            _ref("parameters", "WebhookTimestamp"),
            _ref("parameters", "WebhookSignature"),
        ],
        "requestBody": {
            "required": True,
            "description": (
                "The broker's payload, any JSON object or array, at most"
                f" {_setting('max_body_bytes')} bytes. Signed and stored byte for byte: it is never"
                " re-serialised. Content type `application/json` or any `application/*+json`."
            ),
            "content": {
                media_type: {"schema": _ref("schemas", "WebhookPayload")}
                for media_type in JSON_MEDIA_TYPES
            },
        },
        "responses": {
            "202": {
                "description": "Verified, and acknowledged by Kafka.",
                "content": _json("Accepted"),
            },
            **{
                str(status): _refusal(
                    _REFUSALS[status], error, retry_after=status in RETRY_AFTER_STATUSES
                )
                for error, status in WEBHOOK_ERRORS.items()
            }
            | {"423": _paused_or_locked()},
        },
    }


def _components() -> dict[str, Any]:
    return {
        "securitySchemes": {
            "standardWebhooks": {
                "type": "apiKey",
                "in": "header",
                "name": "webhook-signature",
                "description": _SECURITY,
            }
        },
        "parameters": {
            "Broker": {
                "name": "broker",
                "in": "path",
                "required": True,
                "description": "The connection's broker; any other broker gets 401.",
                "schema": {"type": "string", "examples": ["mt5"]},
            },
            "WebhookPathId": {
                "name": "webhook_path_id",
                "in": "path",
                "required": True,
                "description": (
                    "The last segment of the connection's webhook URL, as `connections create`"
                    " or `connections rotate-url` printed it: random, and not the connection's"
                    " id (connections made before URLs could be rotated use their id until"
                    " rotated). Any other value gets 401."
                ),
                "schema": {"type": "string", "format": "uuid"},
            },
            "WebhookId": {
                "name": "webhook-id",
                "in": "header",
                "required": True,
                "description": (
                    "The sender's unique id for this delivery; the same on every retry of it."
                ),
                "schema": {"type": "string", "minLength": 1, "maxLength": 256},
                "example": "msg_2KWPBgLlAfxdpx2AI54pPJ85f4W",
            },
            "WebhookTimestamp": {
                "name": "webhook-timestamp",
                "in": "header",
                "required": True,
                "description": "When the delivery was signed, in whole Unix seconds.",
                "schema": {"type": "string", "pattern": "^[0-9]{1,12}$"},
                "example": "1767225600",
            },
            "WebhookSignature": {
                "name": "webhook-signature",
                "in": "header",
                "required": True,
                "description": (
                    "Space-separated `v1,<base64 HMAC-SHA256>` and/or `v1a,<base64 Ed25519>`"
                    " entries; see the `standardWebhooks` security scheme."
                ),
                "schema": {"type": "string", "minLength": 1},
                "example": "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=",
            },
        },
        "headers": {
            "RetryAfter": {
                "description": "Seconds to wait before retrying.",
                "required": True,
                "schema": {"type": "string", "pattern": "^[0-9]+$"},
                "example": "5",
            }
        },
        "schemas": {
            "WebhookPayload": {
                "description": "Any JSON object or array; the broker adapter reads it later.",
                "type": ["object", "array"],
            },
            "Accepted": {
                "type": "object",
                "required": ["status", "event_id"],
                "additionalProperties": False,
                "properties": {
                    "status": {"const": "accepted"},
                    "event_id": {"type": "string", "format": "uuid"},
                },
            },
            "Error": {
                "description": (
                    "Every refusal, including the router's own "
                    + " and ".join(
                        f"{status} (`{error}`)" for status, error in ROUTER_ERRORS.items()
                    )
                    + ". `error` is for programs; `detail` is for people and may change."
                    " Neither says more than the status does."
                ),
                "type": "object",
                "required": ["error", "detail"],
                "additionalProperties": False,
                "properties": {
                    "error": {"type": "string", "enum": list(ERROR_STATUSES)},
                    "detail": {"type": "string"},
                },
            },
            "Health": {
                "type": "object",
                "required": ["status"],
                "additionalProperties": False,
                "properties": {"status": {"const": "ok"}},
            },
            "Readiness": {
                "type": "object",
                "required": ["status"],
                "additionalProperties": False,
                "properties": {"status": {"enum": ["ready", "unavailable"]}},
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "PosCal broker sync ingest",
            "version": "1",
            "summary": "Signed broker webhooks in; durable raw events out to Kafka.",
            "description": _SECURITY,
        },
        "tags": [
            {"name": "webhooks", "description": "Deliveries from brokers and bridges."},
            {"name": "operations", "description": "For load balancers and monitoring."},
        ],
        "paths": {
            WEBHOOK_ROUTE: {"post": _webhook_operation()},
            "/healthz": {
                "get": {
                    "operationId": "health",
                    "summary": "Liveness: the process answers",
                    "tags": ["operations"],
                    "responses": {"200": {"description": "Alive.", "content": _json("Health")}},
                }
            },
            "/readyz": {
                "get": {
                    "operationId": "readiness",
                    "summary": "Readiness: Postgres and Kafka both answer",
                    "tags": ["operations"],
                    "responses": {
                        "200": {"description": "Ready for traffic.", "content": _json("Readiness")},
                        "503": {
                            "description": "Not ready: keep traffic away.",
                            "content": _json("Readiness"),
                        },
                    },
                }
            },
            "/metrics": {
                "get": {
                    "operationId": "metrics",
                    "summary": "Prometheus metrics",
                    "tags": ["operations"],
                    "responses": {
                        "200": {
                            "description": "The Prometheus text exposition format.",
                            "content": {"text/plain": {"schema": {"type": "string"}}},
                        }
                    },
                }
            },
            "/openapi.json": {
                "get": {
                    "operationId": "openapi",
                    "summary": "This document",
                    "tags": ["operations"],
                    "responses": {
                        "200": {
                            "description": "The OpenAPI 3.1 document.",
                            "content": {"application/json": {"schema": {"type": "object"}}},
                        }
                    },
                }
            },
        },
        "components": _components(),
    }


DOCUMENT = PublishedDocument(OPENAPI_FILE, openapi_document)
render = DOCUMENT.render
export = DOCUMENT.export
serve_openapi = DOCUMENT.serve


if __name__ == "__main__":
    print(export())
