"""The app API's OpenAPI document is valid OpenAPI 3.1, describes exactly the routes the app
serves with every refusal they can answer, and the copy under schemas/openapi/ is what the app
serves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate

from services.api.app import create_app
from services.api.errors import error_types
from services.api.openapi import OPENAPI_FILE, openapi_document, render
from services.api.routes import OPERATIONS
from services.api.settings import ApiSettings
from services.shared.openapi_files import OPENAPI_DIR

_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
SETTINGS = ApiSettings(jwt_secret="a-secret-for-the-document-test-" + "x" * 16)


def _operations(document: dict[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method in _METHODS:
            if method in item:
                yield path, method, item[method]


def _resolve(document: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        kind, name = node["$ref"].removeprefix("#/components/").split("/")
        node = document["components"][kind][name]
    return node


def test_the_file_matches_the_document() -> None:
    path = OPENAPI_DIR / OPENAPI_FILE
    assert path.exists(), f"{path} missing: run `poscal-sync export-schemas`"
    assert path.read_bytes() == render(), (
        f"{OPENAPI_FILE} drifted from the API's operations: run `poscal-sync export-schemas`"
        " and review the diff"
    )


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    validate(document)


def test_every_reference_resolves() -> None:
    document = openapi_document()
    references: list[str] = []

    def collect(node: object) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("$ref"), str):
                references.append(node["$ref"])
            for value in node.values():
                collect(value)
        elif isinstance(node, list):
            for value in node:
                collect(value)

    collect(document)
    assert references
    for reference in references:
        kind, name = reference.removeprefix("#/components/").split("/")
        assert name in document["components"][kind], reference


def test_the_document_describes_exactly_the_routes_the_app_serves() -> None:
    app = create_app(SETTINGS)
    served = {
        (getattr(route, "path", None), method.lower())
        for route in app.routes
        for method in (getattr(route, "methods", None) or set()) - {"HEAD"}
    }
    documented = {(path, method) for path, method, _ in _operations(openapi_document())}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_every_app_operation_needs_a_token_and_documents_the_bearer_challenge() -> None:
    document = openapi_document()
    for operation in OPERATIONS:
        described = document["paths"][operation.path][operation.method.lower()]
        assert described["security"] == [{"supabaseAccessToken": []}]
        assert described["x-rate-limit-cost"] == operation.cost
        challenge = described["responses"]["401"]["headers"]["WWW-Authenticate"]
        assert _resolve(document, challenge)["required"] is True
        assert set(described["responses"]["401"]["content"]["application/json"]["examples"]) == {
            "unauthenticated",
            "invalid_token",
        }


def test_a_route_with_an_id_documents_the_404_and_one_with_a_body_its_413_and_415() -> None:
    document = openapi_document()
    change = document["paths"]["/v1/connections/{connection_id}"]["patch"]
    assert {"404", "413", "415", "422"} <= set(change["responses"])
    assert change["requestBody"]["required"] is True
    me = document["paths"]["/v1/me"]["get"]
    assert not {"404", "413", "415", "422"} & set(me["responses"])


@pytest.mark.parametrize("status", ["429", "503"])
def test_answers_that_ask_for_a_retry_document_retry_after(status: str) -> None:
    document = openapi_document()
    for path, method, operation in _operations(document):
        if path.startswith("/v1/"):
            header = operation["responses"][status]["headers"]["Retry-After"]
            assert _resolve(document, header)["required"] is True, f"{method} {path}"


def test_every_error_code_is_in_the_error_schema() -> None:
    schema = openapi_document()["components"]["schemas"]["Error"]
    assert set(schema["properties"]["error"]["enum"]) == {c.error for c in error_types()}
    assert schema["additionalProperties"] is False


def test_every_operation_documents_each_response_with_a_schema() -> None:
    document = openapi_document()
    for path, method, operation in _operations(document):
        for status, response in operation["responses"].items():
            content = _resolve(document, response).get("content")
            assert content, f"{method} {path} {status} has no content"
            assert all("schema" in media for media in content.values()), f"{method} {path}"


async def test_the_app_serves_the_file() -> None:
    app = create_app(SETTINGS)
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://api"
    ) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.content == (OPENAPI_DIR / OPENAPI_FILE).read_bytes()
