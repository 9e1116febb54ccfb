"""The HTTP side of the A2A door: authentication, bounds, the agent card, and the SDK's JSON-RPC
dispatcher over our request handler.

A request is authenticated (the tenant's API key, ``Authorization: Bearer``) and its body bounded and
checked (size, JSON depth and counts, ``schemas/bounds.py``) before the dispatcher parses it. Errors
of the protocol are JSON-RPC errors (HTTP 200) as the SDK writes them; a missing key is an HTTP 401,
an unknown agent a 404, and limits and outages keep their HTTP status (429/503 with ``Retry-After``)
with a JSON-RPC error body, so clients and proxies back off as they do on every other route.
"""

from __future__ import annotations

from typing import Any

import orjson
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.types import Message

from schemas.bounds import json_problem
from services.common.errors import DomainError
from services.orchestrator import problems
from services.orchestrator.a2a.calls import CALL, Call, ContextBuilder
from services.orchestrator.a2a.card import agent_card
from services.orchestrator.a2a.handler import AgentstreamHandler
from services.orchestrator.http import HTTPError, read_body, require_tenant, state_of

_INVALID_REQUEST = -32600
_SERVER_ERROR = -32000  # JSON-RPC's range for implementation-defined server errors
_dispatcher: JsonRpcDispatcher | None = None


def dispatcher() -> JsonRpcDispatcher:
    global _dispatcher
    if _dispatcher is None:  # built on first use: the SDK's dispatcher holds no state of ours
        _dispatcher = JsonRpcDispatcher(request_handler=AgentstreamHandler(), context_builder=ContextBuilder())
    return _dispatcher


def _rpc_error(status: int, code: int, message: str, headers: dict[str, str] | None = None, id_: Any = None) -> Response:
    body = {"jsonrpc": "2.0", "id": id_, "error": {"code": code, "message": message, "data": {"httpStatus": status}}}
    return JSONResponse(body, status_code=status, headers=headers)


async def _agent(request: Request) -> tuple[Call, str]:
    ctx = await require_tenant(request)
    agent = str(request.path_params["agent"])
    if agent not in state_of(request).agents:
        raise HTTPError(404, f"agent {agent!r} not found: known agents are {sorted(state_of(request).agents)}")
    return Call(request=request, tenant=ctx, agent=agent), agent


async def get_card(request: Request) -> Response:
    """A2A: the agent card of an agent (for the tenant's key): its JSON-RPC endpoint, skills, auth."""
    try:
        _, agent = await _agent(request)
    except DomainError as exc:
        p = problems.problem(exc)
        return JSONResponse({"error": p.error}, status_code=p.status, headers=p.headers)
    card = agent_card(state_of(request).agents[agent], str(request.base_url))
    return JSONResponse(agent_card_to_dict(card))


async def rpc(request: Request) -> Response:
    """A2A JSON-RPC 1.0: SendMessage, SendStreamingMessage, GetTask, CancelTask, SubscribeToTask."""
    try:
        call, _ = await _agent(request)
        body = await read_body(request, state_of(request).settings.max_body_bytes)
    except DomainError as exc:
        p = problems.problem(exc)
        return _rpc_error(p.status, _INVALID_REQUEST if p.status < 500 else _SERVER_ERROR, p.error, p.headers)
    try:
        problem = json_problem(orjson.loads(body))
    except orjson.JSONDecodeError:
        problem = None  # the dispatcher answers a JSON parse error the protocol's way
    if problem is not None:
        return _rpc_error(400, _INVALID_REQUEST, f"the request is out of bounds: {problem}")
    sent = False

    async def replay() -> Message:  # the body once more, for the dispatcher (it was read to bound it)
        nonlocal sent
        if sent:
            return {"type": "http.disconnect"}
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    scope = dict(request.scope)
    scope[CALL] = call
    inner = Request(scope, replay)
    scope[CALL] = Call(request=inner, tenant=call.tenant, agent=call.agent)
    try:
        return await dispatcher().handle_requests(inner)
    except HTTPException as exc:  # limits and outages: their HTTP status, a JSON-RPC error body
        return _rpc_error(exc.status_code, _SERVER_ERROR, str(exc.detail), dict(exc.headers or {}))
