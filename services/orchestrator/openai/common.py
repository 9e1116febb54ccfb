"""What chat completions and responses share: field checks, message text, priority, submission, SSE."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, get_args

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

from schemas.outputs import check_schema
from schemas.topics import Priority
from services.common.errors import NotFound
from services.orchestrator.auth import TenantContext
from services.orchestrator.cachecontrol import no_cache
from services.orchestrator.executions import traceparent_of
from services.orchestrator.http import state_of
from services.orchestrator.openai.errors import invalid
from services.orchestrator.submission import Submission

PRIORITY_HEADER = "x-agentstream-priority"
MAX_TEXT = 200_000  # what /v1/executions takes as input
MAX_METADATA_KEYS = 16  # OpenAI's own bounds: 16 pairs, keys up to 64 and values up to 512 characters


def refuse_unknown(body: dict[str, Any], accepted: Iterable[str], why: dict[str, str]) -> None:
    """A 400 for a field we do not honour: silently ignoring it would change what the caller gets."""
    allowed = set(accepted)
    for name, value in body.items():
        if name in allowed or value is None:
            continue
        reason = why.get(name, "it is not supported by agentstream (see docs/openai.md)")
        raise invalid(f"Unsupported parameter: '{name}': {reason}", param=name, code="unsupported_parameter")


def validated(model: type[BaseModel], raw: dict[str, Any]) -> None:
    """Types and bounds of every field (the documented request model): a 400 naming the first bad one."""
    try:
        model.model_validate(raw)
    except ValidationError as exc:
        first = exc.errors(include_url=False, include_input=False)[0]
        param = ".".join(str(p) for p in first["loc"])
        raise invalid(f"Invalid value for '{param}': {first['msg']}", param=param, code="invalid_value") from None


def text_of(content: Any, param: str) -> str:
    """A message's text: a string, or a list of text parts."""
    if isinstance(content, str):
        return _bounded(content, param)
    if isinstance(content, list):
        pieces = []
        for i, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") not in ("text", "input_text", "output_text")
                or not isinstance(part.get("text"), str)
            ):
                raise invalid("only text content parts are supported (text, input_text, output_text)", param=f"{param}[{i}]")
            pieces.append(part["text"])
        return _bounded("".join(pieces), param)
    raise invalid("message content must be a string or a list of text parts", param=param)


def _bounded(text: str, param: str) -> str:
    if len(text) > MAX_TEXT:
        raise invalid(f"a message is at most {MAX_TEXT} characters, as on /v1/executions", param=param)
    return text


def metadata_of(raw: Any) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict) or len(raw) > MAX_METADATA_KEYS:
        raise invalid(f"metadata must be an object of at most {MAX_METADATA_KEYS} string pairs", param="metadata")
    for key, value in raw.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise invalid("metadata keys are up to 64 and values up to 512 characters, values strings", param=f"metadata.{key}")
    return dict(raw)


def priority_of(request: Request, metadata: dict[str, str]) -> Priority:
    """The ``X-Agentstream-Priority`` header, else ``metadata.priority``, else standard."""
    value = request.headers.get(PRIORITY_HEADER) or metadata.get("priority") or "standard"
    if value not in get_args(Priority):
        raise invalid(f"priority must be one of {list(get_args(Priority))}, not {value!r}", param="metadata.priority")
    return value  # type: ignore[return-value]  # checked against the Literal's values just above


def schema_format(fmt: Any, param: str) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(output schema, ``response_format`` for the model) of a chat ``response_format`` / responses ``text.format``."""
    if fmt is None:
        return None, None
    if not isinstance(fmt, dict):
        raise invalid("must be an object with a type", param=param)
    kind = fmt.get("type")
    if kind == "text":
        return None, None
    if kind == "json_object":
        return {"type": "object"}, {"type": "json_object"}
    if kind != "json_schema":
        raise invalid(f"type must be text, json_object or json_schema, not {kind!r}", param=f"{param}.type")
    # chat completions nest it ({"json_schema": {"name", "schema", "strict"}}); responses do not.
    spec = fmt.get("json_schema") if "json_schema" in fmt else fmt
    if not isinstance(spec, dict) or not isinstance(spec.get("schema"), dict):
        raise invalid("json_schema needs a `schema` object", param=f"{param}.schema")
    try:
        schema = check_schema(spec["schema"])
    except ValueError as exc:
        raise invalid(str(exc), param=f"{param}.schema") from exc
    name = str(spec.get("name") or "output")
    model_format = {"type": "json_schema", "json_schema": {"name": name, "schema": schema, "strict": bool(spec.get("strict", False))}}
    return schema, model_format


def new_submission(request: Request, ctx: TenantContext, **fields: Any) -> Submission:
    return Submission(tenant_id=ctx.id, traceparent=traceparent_of(request), no_cache=no_cache(request), **fields)


async def submit(request: Request, ctx: TenantContext, sub: Submission) -> None:
    """The submission path of ``/v1/executions``: admission (limits), then acknowledged by Kafka."""
    await state_of(request).runtime.lifecycle.accept(ctx, [sub])


def parse_body(body: bytes) -> dict[str, Any]:
    try:
        raw = orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise invalid(f"We could not parse the JSON body of your request: {exc}") from exc
    if not isinstance(raw, dict):
        raise invalid("the request body must be a JSON object")
    return raw


def sse(data: Any, event: str | None = None) -> bytes:
    head = b"event: " + event.encode() + b"\n" if event else b""
    return head + b"data: " + orjson.dumps(data) + b"\n\n"


def stream_settings(request: Request) -> dict[str, Any]:
    settings = state_of(request).settings
    return {"max_bytes": settings.stream_buffer_kb * 1024, "heartbeat_s": settings.heartbeat_s}


def not_found() -> NotFound:
    return NotFound("response not found", detail={"code": "not_found"})
