"""``Idempotency-Key`` on POSTs: the same key and payload returns the original response; the same
key with another payload is a 409. Kept in memory per replica, or in Redis when ``redis_url`` is set
(idemkeys.py: no database round trip before the 202), with the store as the durable copy written
behind the answer and read back at start, so it holds across restarts (and replicas, with Redis).

The key is reserved (a row without a response) before the work starts, so two concurrent retries
cannot both create an execution; a reservation whose request crashed is taken over when stale.
Failed requests (4xx/5xx) release the key: a corrected retry may use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.errors import Conflict
from services.orchestrator.auth import TenantContext
from services.orchestrator.http import HTTPError, read_body, require_tenant, state_of

Handler = Callable[[Request, TenantContext, bytes], Awaitable[tuple[int, Any]]]


def _fingerprint(request: Request, body: bytes) -> str:
    try:
        canonical = orjson.dumps(orjson.loads(body), option=orjson.OPT_SORT_KEYS) if body else b""
    except (orjson.JSONDecodeError, orjson.JSONEncodeError):  # not JSON, or deeper than orjson writes: the bytes themselves
        canonical = body
    return hashlib.sha256(f"{request.method} {request.url.path}\n".encode() + canonical).hexdigest()


def idempotent(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        status, payload, replayed = await run_idempotently(request, handler)
        return JSONResponse(payload, status_code=status, headers={"Idempotent-Replayed": "true"} if replayed else None)

    return endpoint


async def run_idempotently(request: Request, handler: Handler) -> tuple[int, Any, bool]:
    """(status, payload, replayed): the handler's answer, or the one stored with the request's key.

    Endpoints that answer with more than the stored JSON (the OpenAI door streams the execution the
    payload names) call this directly.
    """
    state = state_of(request)
    context = await require_tenant(request)
    body = await read_body(request, state.settings.max_body_bytes)
    key = request.headers.get("idempotency-key")
    if key is None:
        status, payload = await handler(request, context, body)
        return status, payload, False
    if not 1 <= len(key) <= 255 or not key.isprintable():
        raise HTTPError(400, "Idempotency-Key must be 1 to 255 printable characters")
    return await with_key(request, context, body, key, handler)


async def with_key(request: Request, context: TenantContext, body: bytes, key: str, handler: Handler) -> tuple[int, Any, bool]:
    """``run_idempotently`` with a key the caller found (a door whose protocol names its requests:
    AG-UI's ``runId``, A2A's ``messageId``): same key and payload replays, another payload is a 409."""
    state = state_of(request)
    keys = state.runtime.keys
    fingerprint = _fingerprint(request, body)
    held = await keys.claim(context.id, key, fingerprint, stale_s=state.settings.idempotency_stale_s)
    if held is not None:
        if held.request_hash != fingerprint:
            raise Conflict("Idempotency-Key was already used with a different request", detail={"idempotency_key": key})
        if held.status_code is None:
            raise Conflict("a request with this Idempotency-Key is still in progress; retry later", retry_after=1)
        return held.status_code, held.response, True
    try:
        status, payload = await handler(request, context, body)
    except BaseException:
        await keys.release(context.id, key)
        raise
    await keys.complete(context.id, key, fingerprint, status, payload)
    return status, payload, False
