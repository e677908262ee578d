"""An OpenAPI document as a service serves it and schemas/openapi/ keeps it: rendered once per
process (it never changes while it runs), in a stable key order, byte for byte the same."""

from __future__ import annotations

from collections.abc import Callable
from functools import cache
from pathlib import Path
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import Response

OPENAPI_DIR = Path(__file__).resolve().parents[2] / "schemas" / "openapi"


class PublishedDocument:
    def __init__(self, file_name: str, build: Callable[[], dict[str, Any]]) -> None:
        self.file_name = file_name
        self._build = build
        self.render = cache(self._render)

    def _render(self) -> bytes:
        """The document as the file holds it: stable key order, indented."""
        return (
            orjson.dumps(self._build(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"
        )

    def export(self, directory: Path = OPENAPI_DIR) -> Path:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / self.file_name
        path.write_bytes(self.render())
        return path

    async def serve(self, _: Request) -> Response:
        return Response(self.render(), media_type="application/json")
