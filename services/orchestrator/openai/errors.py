"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` with the status the SDK
maps to its typed exceptions (400 BadRequestError, 401 AuthenticationError, 404 NotFoundError,
409 ConflictError, 429 RateLimitError with ``Retry-After``, 503 InternalServerError ...).

The door's handlers raise domain errors (or the edge's ``HTTPError``) like every other endpoint;
``openai_errors`` renders them the OpenAI way, with the status and headers of ``problems.problem``.
Validation errors (422 elsewhere) are 400 here, as OpenAI answers them.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.errors import DomainError
from services.orchestrator.http import HTTPError
from services.orchestrator.problems import problem

Endpoint = Callable[[Request], Awaitable[Response]]

_TYPES = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    413: ("invalid_request_error", "request_too_large"),
    422: ("invalid_request_error", None),
    429: ("rate_limit_error", "rate_limit_exceeded"),
    502: ("server_error", "execution_failed"),
    503: ("server_error", "service_unavailable"),
    504: ("server_error", "timeout"),
}


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> HTTPError:
    """A 400 naming the request field that is wrong or not supported."""
    return HTTPError(400, message, detail={"param": param, "code": code})


def error_body(status: int, message: str, *, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    kind, default_code = _TYPES.get(status, ("server_error" if status >= 500 else "invalid_request_error", None))
    return {"error": {"message": message, "type": kind, "param": param, "code": code or default_code}}


def render(exc: DomainError) -> Response:
    mapped = problem(exc)
    detail = mapped.detail if isinstance(mapped.detail, dict) else {}
    param, code = detail.get("param"), detail.get("code")
    message = mapped.error
    if isinstance(mapped.detail, list) and mapped.detail:  # pydantic validation errors: name the first field
        first = mapped.detail[0]
        param = ".".join(str(p) for p in first.get("loc", ()))
        message = f"{mapped.error}: {param}: {first.get('msg')}"
    status = 400 if mapped.status == 422 else mapped.status
    return JSONResponse(error_body(status, message, param=param, code=code), status_code=status, headers=mapped.headers)


def openai_errors(endpoint: Endpoint) -> Endpoint:
    async def wrapped(request: Request) -> Response:
        try:
            return await endpoint(request)
        except DomainError as exc:
            return render(exc)

    wrapped.__doc__ = endpoint.__doc__
    wrapped.__name__ = endpoint.__name__
    return wrapped
