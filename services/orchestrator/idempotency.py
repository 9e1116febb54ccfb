"""``Idempotency-Key`` on POSTs: the same key and payload returns the original response; the same
key with another payload is a 409. Kept in the state store, so it holds across restarts/replicas.

The key is reserved (a row without a response) before the work starts, so two concurrent retries
cannot both create an execution; a reservation whose request crashed is taken over when stale.
Failed requests (4xx/5xx) release the key: a corrected retry may use it.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.errors import Conflict
from services.orchestrator.auth import TenantContext
from services.orchestrator.http import HTTPError, read_body, require_tenant, state_of
from services.orchestrator.store import records

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
    store = state.runtime.store
    fingerprint = _fingerprint(request, body)
    async with store.begin() as conn:
        held = await records.claim_idempotency_key(conn, context.id, key, fingerprint)
    if held is not None and held.status_code is None and held.created_at < time.time() - state.settings.idempotency_stale_s:
        async with store.begin() as conn:  # the request that reserved it never finished
            await records.release_idempotency_key(conn, context.id, key, only_older_than=time.time() - state.settings.idempotency_stale_s)
            held = await records.claim_idempotency_key(conn, context.id, key, fingerprint)
    if held is not None:
        if held.request_hash != fingerprint:
            raise Conflict("Idempotency-Key was already used with a different request", detail={"idempotency_key": key})
        if held.status_code is None:
            raise Conflict("a request with this Idempotency-Key is still in progress; retry later", retry_after=1)
        return held.status_code, held.response, True
    try:
        status, payload = await handler(request, context, body)
    except BaseException:
        async with store.begin() as conn:
            await records.release_idempotency_key(conn, context.id, key)
        raise
    async with store.begin() as conn:
        await records.complete_idempotency_key(conn, context.id, key, status, payload)
    return status, payload, False
