"""The topic contracts as JSON Schema documents, kept as files under schemas/json/."""

from __future__ import annotations

from pathlib import Path

import orjson
from pydantic import BaseModel

from services.shared.canonical import CanonicalBatch
from services.shared.dead_letters import DeadLetter
from services.shared.envelope import RawEvent

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas" / "json"

CONTRACTS: dict[str, type[BaseModel]] = {
    "raw_event.v1.schema.json": RawEvent,
    "canonical_batch.v1.schema.json": CanonicalBatch,
    "dead_letter.v1.schema.json": DeadLetter,
}


def render(model: type[BaseModel]) -> bytes:
    schema = model.model_json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return orjson.dumps(schema, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def export(directory: Path = SCHEMA_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, model in CONTRACTS.items():
        path = directory / name
        path.write_bytes(render(model))
        written.append(path)
    return written
