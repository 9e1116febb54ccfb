"""HTTP plumbing every endpoint shares: the edge's own error, body parsing, credentials, state access.

``HTTPError`` (a ``DomainError`` with its status) and the domain's errors are rendered as
``{"error": "...", "detail": ...}`` by ``problems.handler``, the apps' exception handler.
"""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import HTTPConnection, Request

from schemas.bounds import ID_PATTERN, MAX_ID_LENGTH, json_problem, parse_cursor
from services.common.errors import DomainError, InvalidInput
from services.common.observability.logs import bind

if TYPE_CHECKING:
    from services.orchestrator.app import State
    from services.orchestrator.auth import TenantContext

M = TypeVar("M", bound=BaseModel)


class HTTPError(DomainError):
    """A refusal of the HTTP edge itself (a body too large, a query parameter out of range): it knows
    its status. Below the edge the domain raises ``DomainError``'s kinds; problems.py maps both."""

    def __init__(self, status: int, error: str, detail: Any = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(error, detail=detail)
        self.status, self.headers = status, headers
        self.retriable = status in (408, 429, 503)


def state_of(conn: HTTPConnection) -> State:
    state: State = conn.app.state.agentstream
    return state


def header_credential(conn: HTTPConnection) -> str | None:
    """The credential of ``Authorization: Bearer`` or ``X-API-Key``: the only places the admin token is read."""
    auth = conn.headers.get("authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    return conn.headers.get("x-api-key")


def api_key(conn: HTTPConnection) -> str | None:
    """A tenant's API key: a header, or ``?api_key=`` (browsers cannot set headers on a WebSocket)."""
    return header_credential(conn) or conn.query_params.get("api_key")


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
        raise InvalidInput(f"invalid {what}", detail=validation_errors(exc)) from exc


_ID = re.compile(ID_PATTERN)


def path_id(request: Request, name: str, what: str) -> str:
    """An id from the path; one that no id could be (schemas/bounds.py) is simply not found."""
    value = str(request.path_params[name])
    if len(value) > MAX_ID_LENGTH or _ID.fullmatch(value) is None:
        raise HTTPError(404, f"{what} not found")
    return value


def query_int(conn: HTTPConnection, name: str, default: int, *, low: int, high: int) -> int:
    """An integer query parameter within ``[low, high]``: not an integer is a 422, out of range a 400."""
    raw = conn.query_params.get(name)
    if raw is None:
        return default
    reason = f"query parameter {name!r} must be an integer from {low} to {high}"
    if re.fullmatch(r"\s*[-+]?[0-9]+\s*", raw) is None:
        raise HTTPError(422, reason, detail={name: raw[:100]})
    if len(raw) > 40 or not low <= int(raw) <= high:
        raise HTTPError(400, reason, detail={name: raw[:100]})
    return int(raw)


# 0001-01-01 to 9999-12-31: what ``datetime`` can show; anything beyond is not a time a client means.
_MIN_TIME, _MAX_TIME = datetime(1, 1, 2, tzinfo=UTC).timestamp(), datetime(9999, 12, 31, tzinfo=UTC).timestamp()


def query_time(conn: HTTPConnection, name: str) -> float | None:
    """A time query parameter: ISO 8601 with a zone, or unix seconds (422 if neither), within years 1 to
    9999 (400 if not: ``1e20``, ``inf``, ``nan``)."""
    raw = conn.query_params.get(name)
    if raw is None:
        return None
    reason = f"query parameter {name!r} must be an ISO 8601 time with a zone or unix seconds, within years 1 to 9999"
    value = _unix_seconds(raw)
    if value is None:
        parsed = _iso_time(raw)
        if parsed is None:
            raise HTTPError(422, reason, detail={name: raw[:100]})
        if parsed.tzinfo is None:
            raise HTTPError(422, f"query parameter {name!r} needs a time zone (e.g. 2025-01-01T00:00:00Z)", detail={name: raw[:100]})
        value = parsed.timestamp()
    if not math.isfinite(value) or not _MIN_TIME <= value <= _MAX_TIME:
        raise HTTPError(400, reason, detail={name: raw[:100]})
    return value


def _unix_seconds(raw: str) -> float | None:
    try:
        return float(raw)
    except ValueError:
        return None


def _iso_time(raw: str) -> datetime | None:
    try:
        return datetime.fromisoformat(raw)
    except ValueError:
        return None


def cursor_of(raw: object) -> int | None:
    """A client's resume cursor (``Last-Event-ID``, ``?cursor=``, a WebSocket ``cursor``): None if absent;
    HTTPError 400 unless ``-1 <= n < 2**63`` (a Kafka offset; -1: before the first event)."""
    if raw is None or raw == "":
        return None
    try:
        return parse_cursor(raw)
    except ValueError as exc:
        raise HTTPError(400, str(exc)) from exc


async def require_tenant(conn: HTTPConnection) -> TenantContext:
    context = await state_of(conn).runtime.auth.context_for(api_key(conn))
    if context is None:
        raise HTTPError(401, "missing or invalid API key: send `Authorization: Bearer <key>`", headers={"WWW-Authenticate": "Bearer"})
    bind(tenant_id=context.id)  # every later log line of this request carries the tenant
    return context


def shown(value: Any) -> Any:
    """A stored free-form value as the API shows it. New values are bounded where they enter; one stored
    before (or written by a foreign producer) may not serialize: a placeholder then, not a 500 for ever."""
    problem = json_problem(value)
    return value if problem is None else {"error": f"the stored value cannot be shown: JSON value {problem}"}


def iso(ts: float | None) -> str | None:
    return None if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
