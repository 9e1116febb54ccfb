"""Structured outputs: a JSON Schema an execution's final answer must match, checked in one place.

The orchestrator validates the schema itself when a request enters (HTTP 4xx) and the executor
validates the model's answer against it; both use this module, so what one accepts the other runs.
"""

from __future__ import annotations

from typing import Annotated, Any

import jsonschema
import orjson
from pydantic import AfterValidator

from schemas.bounds import JsonObject

MAX_SCHEMA_BYTES = 64 * 1024
MAX_SCHEMA_DEPTH = 32


def _depth(value: Any, level: int = 0) -> int:
    if level > MAX_SCHEMA_DEPTH:
        return level
    if isinstance(value, dict):
        return max((_depth(v, level + 1) for v in value.values()), default=level)
    if isinstance(value, list):
        return max((_depth(v, level + 1) for v in value), default=level)
    return level


def check_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """A valid JSON Schema (2020-12), bounded in size and nesting; ValueError says why not."""
    if len(orjson.dumps(schema)) > MAX_SCHEMA_BYTES:
        raise ValueError(f"output schema is larger than {MAX_SCHEMA_BYTES} bytes")
    if _depth(schema) > MAX_SCHEMA_DEPTH:
        raise ValueError(f"output schema is nested deeper than {MAX_SCHEMA_DEPTH} levels")
    try:
        jsonschema.Draft202012Validator.check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise ValueError(f"output schema is not a valid JSON Schema: {exc.message}") from None
    return schema


# Bounded like every free-form JSON (depth, size) before jsonschema walks it.
OutputSchema = Annotated[JsonObject, AfterValidator(check_schema)]


def output_mismatch(schema: dict[str, Any], text: str) -> str | None:
    """Why ``text`` is not a JSON document matching ``schema``; None when it is."""
    try:
        document = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        return f"the answer is not valid JSON ({exc})"
    error = jsonschema.exceptions.best_match(jsonschema.Draft202012Validator(schema).iter_errors(document))
    if error is None:
        return None
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return f"the answer does not match the output schema at {where}: {error.message}"
