"""``/v1/admin``: tenants and API keys, behind the admin token (absent: the admin API is 404)."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.errors import KafkaError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.api import KeyCreate, TenantCreate
from services.common.errors import Conflict, NotFound
from services.orchestrator import tenantlog
from services.orchestrator.http import HTTPError, header_credential, iso, json_body, path_id, state_of, validate
from services.orchestrator.store import tenants
from services.orchestrator.store.tenants import ApiKey, Tenant

log = logging.getLogger(__name__)


def _require_admin(request: Request) -> None:
    auth = state_of(request).runtime.auth
    if state_of(request).settings.admin_token is None:
        raise NotFound("not found")
    # Only a header: a token in the URL ends up in access logs, proxies and browser history.
    if not auth.is_admin(header_credential(request)):
        raise HTTPError(401, "missing or invalid admin token", headers={"WWW-Authenticate": "Bearer"})


def tenant_json(t: Tenant, *, secret: bool = False) -> dict[str, Any]:
    out: dict[str, Any] = {"tenant_id": t.id, "name": t.name, "disabled": t.disabled, "limits": t.limits, "created_at": iso(t.created_at)}
    if secret:
        out["webhook_secret"] = t.webhook_secret
    return out


def key_json(k: ApiKey) -> dict[str, Any]:
    return {
        "key_id": k.id,
        "tenant_id": k.tenant_id,
        "name": k.name,
        "prefix": k.prefix,
        "created_at": iso(k.created_at),
        "revoked_at": iso(k.revoked_at),
    }


async def create_tenant(request: Request) -> Response:
    _require_admin(request)
    state = state_of(request)
    req = validate(TenantCreate, await json_body(request, state.settings.max_body_bytes), "tenant")
    limits = req.limits.model_dump(exclude_none=True)
    async with state.runtime.store.begin() as conn:
        tenant = await tenants.create_tenant(conn, req.tenant_id, name=req.name, limits=limits)
    if tenant is None:
        raise Conflict(f"tenant {req.tenant_id!r} exists")
    try:
        await tenantlog.publish(state.producer, state.settings, tenant)  # executors run its work once they read this
    except KafkaError as exc:  # the tenant exists; every orchestrator start publishes every tenant again
        log.warning("tenant %s created but not yet published to executors: %s", tenant.id, exc)
    return JSONResponse(tenant_json(tenant, secret=True), status_code=201)


async def list_tenants(request: Request) -> Response:
    _require_admin(request)
    async with state_of(request).runtime.store.begin() as conn:
        items = await tenants.list_tenants(conn)
    return JSONResponse({"tenants": [tenant_json(t) for t in items]})


async def get_tenant(request: Request) -> Response:
    _require_admin(request)
    async with state_of(request).runtime.store.begin() as conn:
        tenant = await tenants.get_tenant(conn, path_id(request, "tenant_id", "tenant"))
    if tenant is None:
        raise NotFound("tenant not found")
    return JSONResponse(tenant_json(tenant, secret=True))


async def create_key(request: Request) -> Response:
    _require_admin(request)
    state = state_of(request)
    req = validate(KeyCreate, await json_body(request, state.settings.max_body_bytes), "key")
    async with state.runtime.store.begin() as conn:
        tenant = await tenants.get_tenant(conn, path_id(request, "tenant_id", "tenant"))
        if tenant is None:
            raise NotFound("tenant not found")
        key, secret = await tenants.create_key(conn, tenant.id, name=req.name)
    # The only time the key is visible: the store keeps its SHA-256 digest.
    return JSONResponse({**key_json(key), "api_key": secret}, status_code=201)


async def list_keys(request: Request) -> Response:
    _require_admin(request)
    async with state_of(request).runtime.store.begin() as conn:
        tenant_id = path_id(request, "tenant_id", "tenant")
        if await tenants.get_tenant(conn, tenant_id) is None:
            raise NotFound("tenant not found")
        items = await tenants.list_keys(conn, tenant_id)
    return JSONResponse({"keys": [key_json(k) for k in items]})


async def revoke_key(request: Request) -> Response:
    _require_admin(request)
    state = state_of(request)
    async with state.runtime.store.begin() as conn:
        key = await tenants.revoke_key(conn, path_id(request, "key_id", "key"))
    if key is None:
        raise NotFound("key not found")
    state.runtime.auth.forget()
    return JSONResponse(key_json(key))
