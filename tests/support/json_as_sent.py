"""JSON as any sender may write it, for specs that feed ingest or the mappers what orjson would
refuse to write: exact numbers, every string escaped (even a lone surrogate), raw JSON text."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any


class Verbatim(str):
    """JSON text to put into a document as it is."""


def json_as_sent(document: Any) -> bytes:
    """The document as JSON: Decimals as their text (a NaN, which JSON cannot write, as the string
    "NaN"), every string JSON-escaped, Verbatim text as it is."""

    def encode(value: Any) -> str:
        if isinstance(value, Decimal) and not value.is_finite():
            return '"NaN"'
        if isinstance(value, Verbatim | Decimal):
            return str(value)
        if isinstance(value, dict):
            return "{" + ",".join(f"{json.dumps(k)}:{encode(v)}" for k, v in value.items()) + "}"
        if isinstance(value, list):
            return "[" + ",".join(encode(v) for v in value) + "]"
        return json.dumps(value)

    return encode(document).encode()
