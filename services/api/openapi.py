"""The app API's OpenAPI 3.1 document, served at /openapi.json and kept in schemas/openapi/:
derived from the operations (paths, models, costs), the refusal types and the settings."""

from __future__ import annotations

from typing import Any

from pydantic import AliasChoices, BaseModel

from services.api.dashboard import ASSET_PATH, PAGE_PATH, asset_names
from services.api.errors import (
    ApiError,
    MethodNotAllowed,
    NotFound,
    RateLimited,
    Unauthenticated,
    Unavailable,
    error_types,
)
from services.api.operations import Operation
from services.api.routes import OPERATIONS
from services.api.settings import ApiSettings
from services.shared.openapi_files import PublishedDocument

OPENAPI_FILE = "api.json"
_REF = "#/components/schemas/{model}"

# Every `error` code the API answers with, and its status (a subtype may have a code of its own).
ERROR_STATUSES: dict[str, int] = dict(
    sorted({cls.error: cls.status_code for cls in error_types()}.items(), key=lambda e: e[1])
)
# The router's own refusals, answered for any path or method it does not serve.
ROUTING_REFUSALS: tuple[type[ApiError], ...] = (NotFound, MethodNotAllowed)


def _setting(name: str) -> str:
    """A setting as the documents name it: its variable and its default."""
    field = ApiSettings.model_fields[name]
    alias = field.validation_alias
    variable = alias.choices[0] if isinstance(alias, AliasChoices) else name.upper()
    return f"`{variable}` (default `{field.default}`)"


_AUTH = f"""\
A Supabase access token of the signed-in user, as `Authorization: Bearer <token>`: HS256 with the
project's JWT secret, or ES256/RS256 with a key of the project's JWKS. Its audience must be
`authenticated`, its `role` `authenticated` and its `sub` the user's UUID; `exp` is required, and
`exp`, `nbf` and `iat` are honoured with {_setting("jwt_leeway_seconds")} seconds of leeway.
Every query then runs as that user under row-level security. Anything else is 401 with
`WWW-Authenticate: Bearer realm="poscal", error="invalid_token"` (without `error` when no token
was sent), saying nothing of which check failed."""

_LIMITS = f"""\
Each user has a request budget per replica, {_setting("rate_limit_per_user")}, which every
request spends by its operation's `x-rate-limit-cost`; a request that does not fit is refused
with 429 and `Retry-After`, and spends nothing. Requests without a valid token spend their
client address's budget, {_setting("auth_failures_per_client")}, past which they get 429: a valid
token is never refused by it. Bodies over {_setting("max_body_bytes")} bytes are refused (413)."""

# What each refusal status means for a client (the codes and statuses come from errors.py).
_MEANING: dict[int, str] = {
    400: (
        "A CORS preflight from an origin not in `POSCAL_API_CORS_ORIGINS`; in the wizard,"
        " credentials the broker refused (`detail` says what to change)."
    ),
    401: (
        "No bearer token (`unauthenticated`), or one that does not verify (`invalid_token`):"
        " sign in again. `WWW-Authenticate` says which, as RFC 6750 does."
    ),
    404: (
        "Nothing here: no such route, or no such resource among the user's. Another user's"
        " resource is answered exactly so."
    ),
    405: "This path does not take this method; `Allow` lists those it takes.",
    409: (
        "The connection cannot take this control as it is (paused, locked, revoked, webhook-fed,"
        " a demo, not enabled yet), or the wizard session or the account picked cannot be"
        " confirmed now: `error` says which, `detail` what the user can do."
    ),
    413: "The body is over `POSCAL_API_MAX_BODY_BYTES`; nothing past the limit was read.",
    415: "The body is not declared as JSON (`application/json`).",
    422: "The query, path or body is not valid: `fields` names each part and its problem.",
    429: (
        "Over the user's request budget, over the user's sync rate (`sync_rate_limited`), or"
        " too many requests without a valid token from this address. Retry after `Retry-After`."
    ),
    500: "Something failed on our side; the answer never says what.",
    502: (
        "The broker could not be reached, did not answer in time, or answered what we cannot"
        " read: try again later."
    ),
    503: (
        "Not ready yet (Postgres, or the JWKS, has not answered), a control this server is not"
        " configured for yet (`not_configured`), or a cloud terminal that could not be removed"
        " now (`terminal_unreachable`). Retry after `Retry-After`."
    ),
}
_HEADERS: dict[type[ApiError], tuple[str, str]] = {
    Unauthenticated: ("WWW-Authenticate", "WwwAuthenticate"),
    MethodNotAllowed: ("Allow", "Allow"),
    RateLimited: ("Retry-After", "RetryAfter"),
    Unavailable: ("Retry-After", "RetryAfter"),
}


def _ref(kind: str, name: str) -> dict[str, str]:
    return {"$ref": f"#/components/{kind}/{name}"}


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


class _Schemas:
    """The models' JSON Schemas as pydantic writes them, gathered into components."""

    def __init__(self) -> None:
        self.components: dict[str, Any] = {}

    def add(self, model: type[BaseModel], mode: str = "serialization") -> dict[str, Any]:
        schema = model.model_json_schema(ref_template=_REF, mode=mode)  # type: ignore[arg-type]
        self.components.update(schema.pop("$defs", {}))
        # By class name, as pydantic names the models it nests in $defs: one name per model.
        name = model.__name__
        self.components[name] = schema
        return {"$ref": _REF.format(model=name)}

    def parameters(self, model: type[BaseModel], where: str) -> list[dict[str, Any]]:
        schema = model.model_json_schema(ref_template=_REF)
        required = set(schema.get("required", []))
        found = []
        for name, prop in schema.get("properties", {}).items():
            prop = {k: v for k, v in prop.items() if k != "title"}
            # An optional parameter is absent, never null: its schema is the other branch.
            branches = [b for b in prop.pop("anyOf", []) if b != {"type": "null"}]
            if len(branches) == 1:
                prop |= branches[0]
            elif branches:
                prop["anyOf"] = branches
            if prop.get("default", 0) is None:
                del prop["default"]
            description = prop.pop("description", None)
            parameter = {
                "name": name,
                "in": where,
                "required": where == "path" or name in required,
                "schema": prop,
            }
            if description:
                parameter["description"] = description
            found.append(parameter)
        return found


def _refusals(refusals: tuple[type[ApiError], ...]) -> dict[str, Any]:
    """One response per status, with every code of that status as an example each."""
    by_status: dict[int, list[type[ApiError]]] = {}
    for cls in refusals:
        by_status.setdefault(cls.status_code, []).append(cls)
    responses: dict[str, Any] = {}
    for status, types in sorted(by_status.items()):
        media: dict[str, Any] = {"schema": _ref("schemas", "Error")}
        media["examples"] = {
            cls.error: {"value": {"error": cls.error, "detail": cls.public_detail}}
            for cls in dict.fromkeys(types)
        }
        response: dict[str, Any] = {
            "description": _MEANING[status],
            "content": {"application/json": media},
        }
        headers = {
            header: _ref("headers", component)
            for cls in types
            for base, (header, component) in _HEADERS.items()
            if issubclass(cls, base)
        }
        if headers:
            response["headers"] = headers
        responses[str(status)] = response
    return responses


def _operation(operation: Operation, schemas: _Schemas) -> dict[str, Any]:
    described: dict[str, Any] = {
        "operationId": operation.operation_id,
        "summary": operation.summary,
        "tags": [operation.tag],
        "security": [{"supabaseAccessToken": []}],
        "x-rate-limit-cost": operation.cost,
    }
    if operation.description:
        described["description"] = operation.description
    parameters = []
    if operation.path_params is not None:
        parameters += schemas.parameters(operation.path_params, "path")
    if operation.query is not None:
        parameters += schemas.parameters(operation.query, "query")
    if parameters:
        described["parameters"] = parameters
    if operation.body is not None:
        described["requestBody"] = {
            "required": True,
            "content": _json(schemas.add(operation.body, "validation")),
        }
    described["responses"] = {
        str(operation.status): {
            "description": operation.summary,
            "content": _json(schemas.add(operation.response)),
        },
        **_refusals(operation.refusals()),
    }
    return described


def _plain(operation_id: str, summary: str, responses: dict[str, Any]) -> dict[str, Any]:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["operations"],
            "security": [],
            "responses": responses,
        }
    }


def _dashboard_paths() -> dict[str, Any]:
    """The dashboard's page and files: public (the page signs in itself), never cached."""
    page = _plain(
        "dashboard",
        "The dashboard page: connections, their sync status and the analytics, for a browser",
        {
            "200": {
                "description": (
                    "The page. It signs in with an access token in its URL fragment"
                    " (`#access_token=...`, never sent to the server) or pasted into it, and"
                    " keeps it in the tab's session storage."
                ),
                "content": {"text/html": {"schema": {"type": "string"}}},
            }
        },
    )
    asset = _plain(
        "dashboardAsset",
        "A script, style sheet or icon of the dashboard page",
        {
            "200": {
                "description": "The file.",
                "content": {
                    "text/javascript": {"schema": {"type": "string"}},
                    "text/css": {"schema": {"type": "string"}},
                    "image/svg+xml": {"schema": {"type": "string"}},
                },
            },
            "404": {"description": "No such file.", "content": _json(_ref("schemas", "Error"))},
        },
    )
    asset["get"]["parameters"] = [
        {
            "name": "asset",
            "in": "path",
            "required": True,
            "schema": {"type": "string", "enum": asset_names()},
        }
    ]
    return {PAGE_PATH: page, ASSET_PATH: asset}


def _error_schema() -> dict[str, Any]:
    return {
        "description": (
            "Every refusal, the router's own 404 and 405 included. `error` is for programs;"
            " `detail` is for people and may change; `fields` (422 only) names each invalid"
            " part of the request (`query.limit`, `body.label`) and its problem."
        ),
        "type": "object",
        "required": ["error", "detail"],
        "additionalProperties": False,
        "properties": {
            "error": {"type": "string", "enum": list(ERROR_STATUSES)},
            "detail": {"type": "string"},
            "fields": {
                "type": "array",
                "items": {
                    "type": "object",
                    "required": ["path", "message"],
                    "additionalProperties": False,
                    "properties": {"path": {"type": "string"}, "message": {"type": "string"}},
                },
            },
        },
    }


def openapi_document() -> dict[str, Any]:
    schemas = _Schemas()
    paths: dict[str, Any] = {}
    for operation in OPERATIONS:
        paths.setdefault(operation.path, {})[operation.method.lower()] = _operation(
            operation, schemas
        )
    status = {"type": "object", "required": ["status"], "additionalProperties": False}
    paths["/healthz"] = _plain(
        "health",
        "Liveness: the process answers",
        {"200": {"description": "Alive.", "content": _json(_ref("schemas", "Health"))}},
    )
    paths["/readyz"] = _plain(
        "readiness",
        "Readiness: Postgres answers and the JWKS (if configured) was fetched",
        {
            "200": {
                "description": "Ready for traffic.",
                "content": _json(_ref("schemas", "Readiness")),
            },
            "503": {
                "description": "Not ready: keep traffic away.",
                "content": _json(_ref("schemas", "Readiness")),
            },
        },
    )
    paths["/openapi.json"] = _plain(
        "openapi",
        "This document",
        {
            "200": {
                "description": "The OpenAPI 3.1 document.",
                "content": _json({"type": "object"}),
            }
        },
    )
    paths.update(_dashboard_paths())
    return {
        "openapi": "3.1.0",
        "jsonSchemaDialect": "https://spec.openapis.org/oas/3.1/dialect/base",
        "info": {
            "title": "PosCal broker sync app API",
            "version": "1",
            "summary": "What the PosCal frontend calls to connect, control and watch broker sync.",
            "description": f"{_AUTH}\n\n{_LIMITS}",
        },
        "tags": [
            {"name": "app", "description": "For the signed-in user, as that user."},
            {"name": "operations", "description": "For load balancers and monitoring."},
        ],
        "paths": paths,
        "components": {
            "securitySchemes": {
                "supabaseAccessToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "bearerFormat": "JWT",
                    "description": _AUTH,
                }
            },
            "headers": {
                "RetryAfter": {
                    "description": "Seconds to wait before retrying.",
                    "required": True,
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
                "WwwAuthenticate": {
                    "description": "The bearer challenge (RFC 6750).",
                    "required": True,
                    "schema": {"type": "string", "pattern": '^Bearer realm="poscal"'},
                },
                "Allow": {
                    "description": "The methods this path takes.",
                    "required": True,
                    "schema": {"type": "string"},
                },
            },
            "schemas": {
                **dict(sorted(schemas.components.items())),
                "Error": _error_schema(),
                "Health": status | {"properties": {"status": {"const": "ok"}}},
                "Readiness": status
                | {"properties": {"status": {"enum": ["ready", "unavailable"]}}},
            },
        },
    }


DOCUMENT = PublishedDocument(OPENAPI_FILE, openapi_document)
render = DOCUMENT.render
export = DOCUMENT.export
serve_openapi = DOCUMENT.serve


if __name__ == "__main__":
    print(export())
