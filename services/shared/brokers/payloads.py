"""Reading a JSON payload into a mapper's pydantic model, the one way every JSON mapper does:
numbers as exact Decimals, and an unreadable payload an InvalidEvent saying where and why."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from services.shared.errors import InvalidEvent

M = TypeVar("M", bound=BaseModel)


def parse_json_payload(body: bytes, model: type[M]) -> M:
    try:
        # Decimal straight from the text: 0.1 stays 0.1, never a binary float.
        document = json.loads(body, parse_float=Decimal)
    except (ValueError, InvalidOperation) as exc:
        raise InvalidEvent("malformed_json", str(exc)) from None
    except RecursionError:
        raise InvalidEvent("malformed_json", "nested too deeply") from None
    try:
        return model.model_validate(document)
    except ValidationError as exc:
        raise InvalidEvent("invalid_payload", describe_validation_error(exc)) from None


def describe_validation_error(exc: ValidationError) -> str:
    """`deals.3.price: Input should be a valid decimal; ...`: each problem where it is."""
    return "; ".join(
        f"{'.'.join(str(p) for p in e['loc']) or '<body>'}: {e['msg']}" for e in exc.errors()
    )


def json_object_or_none(body: bytes) -> dict[str, Any] | None:
    """The payload as a JSON object, or None if it is not one (for best-effort peeks)."""
    try:
        document = json.loads(body, parse_float=Decimal)
    except (ValueError, InvalidOperation, RecursionError):
        return None
    return document if isinstance(document, dict) else None
