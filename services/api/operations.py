"""A route of the API as one declaration (`Operation`): its handler, its models, its cost and
its refusals, from which both the route and its OpenAPI description are built."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.api.errors import (
    ApiError,
    FieldProblem,
    InternalError,
    InvalidToken,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    Unauthenticated,
    Unavailable,
    UnsupportedMediaType,
    ValidationFailed,
)
from services.api.tokens import Caller
from services.shared.client_ip import client_address, client_source
from services.shared.logging import get_logger

if TYPE_CHECKING:
    from services.api.bootstrap import ApiWiring, Controls
    from services.api.database import Database

M = TypeVar("M", bound=BaseModel)
Handler = Callable[["Call"], Awaitable[BaseModel]]
_log = get_logger("poscal.api")


@dataclass(frozen=True)
class Call:
    """One request as a handler sees it: who is asking (verified), the door to the database,
    and the path, query and body already validated against the operation's models."""

    request: Request
    caller: Caller
    db: Database
    controls: Controls
    _path: BaseModel | None = None
    _query: BaseModel | None = None
    _body: BaseModel | None = None

    def path(self, model: type[M]) -> M:
        return _as(self._path, model)

    def query(self, model: type[M]) -> M:
        return _as(self._query, model)

    def body(self, model: type[M]) -> M:
        return _as(self._body, model)


def _as(value: BaseModel | None, model: type[M]) -> M:
    if not isinstance(value, model):
        raise TypeError(f"this operation declares no {model.__name__}")
    return value


@dataclass(frozen=True)
class Operation:
    """One method on one path, answered by `handler` for a signed-in user.

    `cost` is what a request spends of the user's budget (POSCAL_API_RATE_LIMIT_PER_USER):
    declare more than 1 for a route that costs us more (a broker call, a large read).
    `errors` are the refusals of its own (NotFound, ...); those every operation can answer
    (401, 429, 422 for what it validates, 413 and 415 for a body, 500, 503) are added."""

    method: str
    path: str
    handler: Handler
    operation_id: str
    summary: str
    response: type[BaseModel]
    tag: str = "app"
    description: str = ""
    status: int = 200
    path_params: type[BaseModel] | None = None
    query: type[BaseModel] | None = None
    body: type[BaseModel] | None = None
    cost: int = 1
    errors: tuple[type[ApiError], ...] = field(default=())

    def refusals(self) -> tuple[type[ApiError], ...]:
        """Every refusal this operation can answer with, by status."""
        found: list[type[ApiError]] = [Unauthenticated, InvalidToken, RateLimited, *self.errors]
        if self.path_params is not None:
            found.append(NotFound)  # an id of no resource of the user's, however it is written
        if self.query is not None or self.body is not None:
            found.append(ValidationFailed)
        if self.body is not None:
            found += [PayloadTooLarge, UnsupportedMediaType]
        found += [InternalError, Unavailable]
        return tuple(sorted(dict.fromkeys(found), key=lambda cls: cls.status_code))

    def route(self) -> Route:
        return Route(self.path, self._answer, methods=[self.method], name=self.operation_id)

    async def _answer(self, request: Request) -> Response:
        wiring: ApiWiring | None = getattr(request.app.state, "wiring", None)
        if wiring is None:
            raise Unavailable()
        caller = await authenticate(request, wiring)
        wiring.budgets.spend(caller.user_id, self.cost)
        call = Call(
            request,
            caller,
            wiring.db,
            wiring.controls,
            _path=self._path_params(request),
            _query=_validated(self.query, dict(request.query_params), "query"),
            _body=await self._body(request),
        )
        result = await self.handler(call)
        return json_response(result.model_dump(mode="json"), self.status)

    def _path_params(self, request: Request) -> BaseModel | None:
        if self.path_params is None:
            return None
        try:
            return self.path_params.model_validate(request.path_params)
        except ValidationError:
            # An id that is no id names nothing of the user's either: the same 404.
            raise NotFound() from None

    async def _body(self, request: Request) -> BaseModel | None:
        if self.body is None:
            return None
        if not is_json(request.headers.get("content-type", "")):
            raise UnsupportedMediaType()
        raw = await request.body()  # the body limit refuses past POSCAL_API_MAX_BODY_BYTES
        try:
            return self.body.model_validate_json(raw or b"null")
        except ValidationError as exc:
            raise ValidationFailed(_problems(exc, "body")) from None


def _validated(model: type[BaseModel] | None, values: dict[str, Any], where: str) -> Any:
    if model is None:
        return None
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        raise ValidationFailed(_problems(exc, where)) from None


def _problems(exc: ValidationError, where: str) -> list[FieldProblem]:
    """Each error's location and message; never the input, which may be anything."""
    return [
        FieldProblem(".".join([where, *(str(part) for part in error["loc"])]), error["msg"])
        for error in exc.errors(include_input=False, include_url=False)
    ]


def is_json(content_type: str) -> bool:
    media_type = content_type.split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (
        media_type.startswith("application/") and media_type.endswith("+json")
    )


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    return Response(orjson.dumps(body), status, headers=headers, media_type="application/json")


async def authenticate(request: Request, wiring: ApiWiring) -> Caller:
    """The caller of a bearer token, or Unauthenticated; a refusal spends the client address's
    failure budget, and past it is ClientThrottled (429) instead."""
    try:
        return await wiring.tokens.verify(_bearer_token(request))
    except Unauthenticated as refused:
        source = client_source(
            client_address(
                request.client.host if request.client else None,
                request.headers.get("x-forwarded-for"),
                wiring.trusted_proxies,
            )
        )
        reason = refused.reason if isinstance(refused, InvalidToken) else "no_token"
        _log.info("sign-in refused", reason=reason, source=source)
        wiring.budgets.failed(source)
        raise


def _bearer_token(request: Request) -> str:
    values = request.headers.getlist("authorization")
    if not values:
        raise Unauthenticated()
    if len(values) > 1:
        raise InvalidToken("several_authorization_headers")
    scheme, _, token = values[0].strip().partition(" ")
    if scheme.lower() != "bearer":
        raise Unauthenticated()  # no bearer credentials at all (RFC 6750: no error code)
    token = token.strip()
    if not token:
        raise InvalidToken("empty")
    return token
