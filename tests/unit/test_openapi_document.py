"""The ingest API's OpenAPI document is valid OpenAPI 3.1, documents every route the app serves,
and the copy under schemas/openapi/ is exactly what the code serves."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from openapi_spec_validator import validate
from starlette.applications import Starlette
from starlette.routing import Route

from services.ingest.app import create_app
from services.ingest.errors import IngestRefusal
from services.ingest.openapi import (
    ERROR_STATUSES,
    JSON_MEDIA_TYPES,
    OPENAPI_FILE,
    WEBHOOK_ERRORS,
    openapi_document,
    render,
    serve_openapi,
)
from services.ingest.settings import IngestSettings
from services.shared.crypto import new_master_key_base64
from services.shared.openapi_files import OPENAPI_DIR

WEBHOOK = "/v1/webhooks/{broker}/{webhook_path_id}"
_METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")


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
    assert path.exists(), f"{path} missing: run `python -m services.ingest.openapi`"
    assert path.read_bytes() == render(), (
        f"{OPENAPI_FILE} drifted from services/ingest/openapi.py:"
        " run `python -m services.ingest.openapi` and review the diff"
    )


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"].startswith("3.1.")
    validate(document)  # raises with the offending location when it is not


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
        assert _resolve(document, {"$ref": reference}), reference


def test_the_document_describes_exactly_the_routes_the_app_serves() -> None:
    app = create_app(IngestSettings(master_key=new_master_key_base64()))
    served = {
        (getattr(route, "path", None), method.lower())
        for route in app.routes
        for method in (getattr(route, "methods", None) or set()) - {"HEAD"}
    }
    documented = {(path, method) for path, method, _ in _operations(openapi_document())}
    assert served - documented == set(), "served but not documented"
    assert documented - served == set(), "documented but not served"


def test_every_operation_documents_each_response_with_a_schema() -> None:
    document = openapi_document()
    for path, method, operation in _operations(document):
        assert operation["responses"], f"{method} {path}"
        for status, response in operation["responses"].items():
            content = _resolve(document, response).get("content")
            assert content, f"{method} {path} {status} has no content"
            for media in content.values():
                assert "schema" in media, f"{method} {path} {status}"


def test_the_webhook_documents_its_path_parameters_and_three_signed_headers() -> None:
    document = openapi_document()
    operation = document["paths"][WEBHOOK]["post"]
    parameters = {
        (p["in"], p["name"]): p for p in (_resolve(document, p) for p in operation["parameters"])
    }
    assert set(parameters) == {
        ("path", "broker"),
        ("path", "webhook_path_id"),
        ("header", "webhook-id"),
        ("header", "webhook-timestamp"),
        ("header", "webhook-signature"),
    }
    assert all(p["required"] for p in parameters.values())
    assert parameters[("path", "webhook_path_id")]["schema"]["format"] == "uuid"
    assert operation["requestBody"]["required"] is True
    assert set(operation["requestBody"]["content"]) == set(JSON_MEDIA_TYPES)
    assert operation["security"] == [{"standardWebhooks": []}]
    assert "standardWebhooks" in document["components"]["securitySchemes"]


def test_each_refusal_is_the_error_schema_with_its_own_code() -> None:
    document = openapi_document()
    responses = document["paths"][WEBHOOK]["post"]["responses"]
    error_schema = document["components"]["schemas"]["Error"]
    assert error_schema["required"] == ["error", "detail"]
    assert error_schema["additionalProperties"] is False
    assert error_schema["properties"]["error"]["enum"] == list(ERROR_STATUSES)
    assert set(responses) == {"202"} | {str(status) for status in WEBHOOK_ERRORS.values()}
    for error, status in WEBHOOK_ERRORS.items():
        media = responses[str(status)]["content"]["application/json"]
        assert media["schema"] == {"$ref": "#/components/schemas/Error"}
        assert media["example"]["error"] == error


def test_every_refusal_ingest_can_answer_is_documented() -> None:
    refusals = {cls.error: cls.status_code for cls in IngestRefusal.__subclasses__()}
    assert refusals == WEBHOOK_ERRORS


@pytest.mark.parametrize("status", ["429", "503"])
def test_responses_that_ask_for_a_retry_document_retry_after(status: str) -> None:
    document = openapi_document()
    response = document["paths"][WEBHOOK]["post"]["responses"][status]
    header = _resolve(document, response["headers"]["Retry-After"])
    assert header["required"] is True


async def test_the_endpoint_serves_the_document_as_json() -> None:
    app = Starlette(routes=[Route("/openapi.json", serve_openapi)])
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://ingest"
    ) as client:
        response = await client.get("/openapi.json")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.json() == openapi_document()
