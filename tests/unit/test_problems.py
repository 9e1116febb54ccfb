"""The one mapping of domain errors to HTTP (status, body, Retry-After) and WebSocket close codes."""

from __future__ import annotations

import orjson
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from services.common.errors import (
    AgentstreamError,
    Conflict,
    DomainError,
    Gone,
    InvalidInput,
    NotFound,
    RateLimited,
    Unauthorized,
    Unavailable,
)
from services.orchestrator import problems
from services.orchestrator.callbacks import CallbackURLError
from services.orchestrator.http import HTTPError
from services.orchestrator.openai.errors import render


@pytest.mark.parametrize(
    ("exc", "status", "body", "retry_after"),
    [
        (NotFound("execution not found"), 404, {"error": "execution not found"}, None),
        (
            Conflict("execution already finished (completed); nothing to cancel", detail={"status": "completed"}),
            409,
            {"error": "execution already finished (completed); nothing to cancel", "detail": {"status": "completed"}},
            None,
        ),
        (InvalidInput("unknown agent 'x'"), 422, {"error": "unknown agent 'x'"}, None),
        (CallbackURLError("callback_url must not carry credentials"), 422, {"error": "callback_url must not carry credentials"}, None),
        (Gone("past retention"), 410, {"error": "past retention"}, None),
        (Unauthorized("missing key"), 401, {"error": "missing key"}, None),
        (
            RateLimited("rate limit: more than 5 requests per minute", retry_after=1.2345),
            429,
            {"error": "rate limit: more than 5 requests per minute", "detail": {"retry_after_s": 1.234}},
            "2",
        ),
        (RateLimited("slow down", retry_after=0.01), 429, {"error": "slow down", "detail": {"retry_after_s": 0.01}}, "1"),
        (Unavailable("Kafka did not acknowledge the request", retry_after=1), 503, {"error": "Kafka did not acknowledge the request"}, "1"),
        (HTTPError(413, "request body is larger than 10 bytes"), 413, {"error": "request body is larger than 10 bytes"}, None),
    ],
)
def test_http_mapping(exc: DomainError, status: int, body: dict[str, object], retry_after: str | None) -> None:
    response = problems.response(exc)
    assert response.status_code == status
    assert orjson.loads(bytes(response.body)) == body
    assert response.headers.get("retry-after") == retry_after


def test_the_edge_keeps_its_own_headers() -> None:
    response = problems.response(HTTPError(401, "missing or invalid admin token", headers={"WWW-Authenticate": "Bearer"}))
    assert (response.status_code, response.headers["www-authenticate"]) == (401, "Bearer")


def test_retriable_follows_the_kind() -> None:
    assert RateLimited("x", retry_after=1).retriable and Unavailable("x").retriable
    assert not NotFound("x").retriable and not Conflict("x").retriable and not InvalidInput("x").retriable
    assert HTTPError(503, "x").retriable and not HTTPError(400, "x").retriable


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (Unauthorized("x"), 4401),
        (NotFound("x"), 4404),
        (Conflict("x"), 4409),
        (Gone("x"), 4410),
        (RateLimited("x", retry_after=1), 4429),
        (Unavailable("x"), 1013),
        (InvalidInput("x"), 1008),
        (HTTPError(401, "x"), 4401),
        (HTTPError(503, "x"), 1013),
        (AgentstreamError("a bug"), 1011),
        (RuntimeError("a bug"), 1011),
    ],
)
def test_close_codes(exc: BaseException, code: int) -> None:
    assert problems.close_code(exc) == code


def test_the_openai_door_renders_the_same_mapping() -> None:
    response = render(RateLimited("rate limit: more than 5 requests per minute", retry_after=2.5))
    assert response.status_code == 429 and response.headers["retry-after"] == "3"
    assert orjson.loads(bytes(response.body))["error"]["type"] == "rate_limit_error"
    assert render(InvalidInput("invalid request", detail=[{"loc": ["input"], "msg": "required"}])).status_code == 400


def test_an_app_raising_domain_errors_answers_through_the_mapping_and_closes_websockets() -> None:
    async def refused(request: Request) -> Response:
        raise Conflict("the session has an execution running", detail={"active_execution_id": "e1"})

    async def socket(websocket: WebSocket) -> None:
        await websocket.accept()
        await problems.close(websocket, Unauthorized("missing or invalid API key"))

    async def handler(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, DomainError)
        return problems.response(exc)

    app = Starlette(routes=[Route("/x", refused), WebSocketRoute("/ws", socket)], exception_handlers={DomainError: handler})
    with TestClient(app) as client:
        answer = client.get("/x")
        assert answer.status_code == 409
        assert answer.json() == {"error": "the session has an execution running", "detail": {"active_execution_id": "e1"}}
        with client.websocket_connect("/ws") as ws, pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert (closed.value.code, closed.value.reason) == (4401, "missing or invalid API key")
