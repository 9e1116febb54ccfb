"""HTTP plumbing every endpoint shares: the error type, body parsing, credentials, state access.

``HTTPError`` is rendered as ``{"error": "...", "detail": ...}`` by the app's exception handler.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection, Request

from services.common.observability.logs import bind

if TYPE_CHECKING:
    from services.orchestrator.app import State
    from services.orchestrator.auth import TenantContext

M = TypeVar("M", bound=BaseModel)


class HTTPError(Exception):
    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(error)
        self.status, self.error, self.detail, self.headers = status, error, detail, headers

    @property
    def retriable(self) -> bool:
        return self.status in (408, 429, 503)


def state_of(conn: HTTPConnection) -> State:
    state: State = conn.app.state.agentstream
    return state


def api_key(conn: HTTPConnection) -> str | None:
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return conn.headers.get("x-api-key") or conn.query_params.get("api_key")


async def read_body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPError(413, f"request body is larger than {limit} bytes")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise HTTPError(413, f"request body is larger than {limit} bytes")
    return body


def parse_json(body: bytes) -> Any:
    try:
        return orjson.loads(body or b"{}")
    except orjson.JSONDecodeError as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from exc


async def json_body(request: Request, limit: int) -> Any:
    return parse_json(await read_body(request, limit))


def validation_errors(exc: ValidationError) -> list[dict[str, Any]]:
    return [{"loc": list(e["loc"]), "msg": e["msg"], "type": e["type"]} for e in exc.errors(include_url=False, include_input=False)]


def validate(model: type[M], raw: Any, what: str) -> M:
    try:
        return model.model_validate(raw)
    except ValidationError as exc:
        raise HTTPError(422, f"invalid {what}", detail=validation_errors(exc)) from exc


def path_id(request: Request, name: str, what: str) -> str:
    value = str(request.path_params[name])
    if not value or len(value) > 128:
        raise HTTPError(404, f"{what} not found")
    return value


async def require_tenant(conn: HTTPConnection) -> TenantContext:
    context = await state_of(conn).runtime.auth.context_for(api_key(conn))
    if context is None:
        raise HTTPError(401, "missing or invalid API key: send `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"})
    bind(tenant_id=context.id)  # every later log line of this request carries the tenant
    return context


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
