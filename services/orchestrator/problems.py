"""The one place where a domain error becomes what a client sees: an HTTP status, the body
``{"error": "...", "detail": ...}`` and ``Retry-After``, or a WebSocket close code.

The domain (lifecycle, sessions, ingress, executions, the coordinator) raises ``DomainError``'s kinds
(services/common/errors.py) and knows nothing of HTTP; the app's exception handler, the OpenAI door's
renderer, the Kafka door's refusals and the WebSocket endpoints all ask here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.websockets import WebSocket

from services.common.errors import (
    Conflict,
    DomainError,
    Gone,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from services.orchestrator.http import HTTPError

# Ordered most specific first: the first class an error is an instance of decides.
_STATUS: tuple[tuple[type[DomainError], int], ...] = (
    (InvalidInput, 422),
    (Unauthorized, 401),
    (NotFound, 404),
    (Conflict, 409),
    (Gone, 410),
    (RateLimited, 429),
    (Unavailable, 503),
)

# 4000 + the HTTP status where the WebSocket protocol has no code of its own (4401 is what clients
# of /v1/stream already see for a bad key); 1008 policy violation; 1013 try again later; 1011 a bug.
_CLOSE: tuple[tuple[type[DomainError], int], ...] = (
    (InvalidInput, 1008),
    (Unauthorized, 4401),
    (NotFound, 4404),
    (Conflict, 4409),
    (Gone, 4410),
    (RateLimited, 4429),
    (Unavailable, 1013),
)
CLOSE_INTERNAL_ERROR = 1011


@dataclass(frozen=True, slots=True)
class Problem:
    status: int
    error: str
    detail: Any
    headers: dict[str, str] | None


def status_of(exc: DomainError) -> int:
    if isinstance(exc, HTTPError):
        return exc.status
    for kind, status in _STATUS:
        if isinstance(exc, kind):
            return status
    return 503 if exc.retriable else 400


def problem(exc: DomainError) -> Problem:
    headers = dict(exc.headers) if isinstance(exc, HTTPError) and exc.headers else None
    if exc.retry_after is not None:
        # Retry-After is whole seconds; never 0, which some clients read as "at once, in a loop".
        headers = (headers or {}) | {"Retry-After": str(max(1, int(exc.retry_after + 0.999)))}
    return Problem(status_of(exc), exc.error, exc.detail, headers)


def body_of(p: Problem) -> dict[str, Any]:
    body: dict[str, Any] = {"error": p.error}
    if p.detail is not None:
        body["detail"] = p.detail
    return body


def response(exc: DomainError) -> JSONResponse:
    p = problem(exc)
    return JSONResponse(body_of(p), status_code=p.status, headers=p.headers)


async def handler(request: Request, exc: Exception) -> Response:
    """The apps' exception handler for ``DomainError`` (``exception_handlers={DomainError: handler}``)."""
    assert isinstance(exc, DomainError)
    return response(exc)


def close_code(exc: BaseException) -> int:
    """The WebSocket close code of an error that ends a connection."""
    if isinstance(exc, HTTPError):
        return 4000 + exc.status if 400 <= exc.status < 500 else (1013 if exc.retriable else CLOSE_INTERNAL_ERROR)
    if isinstance(exc, DomainError):
        for kind, code in _CLOSE:
            if isinstance(exc, kind):
                return code
    return CLOSE_INTERNAL_ERROR


async def close(websocket: WebSocket, exc: DomainError) -> None:
    """End a WebSocket because of ``exc``: its close code, its message as the reason (at most the 123
    bytes a close frame holds)."""
    await websocket.close(code=close_code(exc), reason=exc.error.encode()[:123].decode(errors="ignore"))
