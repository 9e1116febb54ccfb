"""Tenants and their API keys. Keys are stored as SHA-256 digests: shown once, at creation."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
import uuid
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from services.orchestrator.store import insert_ignore
from services.orchestrator.store.tables import api_keys, tenants

KEY_PREFIX = "as_"


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    disabled: bool
    limits: dict[str, int]
    webhook_secret: str
    created_at: float


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    name: str
    prefix: str
    created_at: float
    revoked_at: float | None


def hash_key(key: str) -> str:
    # API keys are 256-bit random strings, so a fast digest is enough (no password stretching needed).
    return hashlib.sha256(key.encode()).hexdigest()


def new_webhook_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


def _tenant(row: Any) -> Tenant:
    return Tenant(row.id, row.name, bool(row.disabled), dict(row.limits or {}), row.webhook_secret, row.created_at)


def _key(row: Any) -> ApiKey:
    return ApiKey(row.id, row.tenant_id, row.name, row.prefix, row.created_at, row.revoked_at)


async def create_tenant(conn: AsyncConnection, tenant_id: str, *, name: str = "", limits: dict[str, int] | None = None) -> Tenant | None:
    """Create a tenant; None if the id is taken."""
    values = {
        "id": tenant_id,
        "name": name or tenant_id,
        "disabled": False,
        "limits": limits or {},
        "webhook_secret": new_webhook_secret(),
        "created_at": time.time(),
    }
    if not await insert_ignore(conn, tenants, values, ["id"]):
        return None
    return await get_tenant(conn, tenant_id)


async def ensure_tenant(conn: AsyncConnection, tenant_id: str) -> Tenant:
    """Get or create (used for tenants that settings-configured keys name)."""
    await create_tenant(conn, tenant_id)
    tenant = await get_tenant(conn, tenant_id)
    assert tenant is not None
    return tenant


async def get_tenant(conn: AsyncConnection, tenant_id: str) -> Tenant | None:
    row = (await conn.execute(select(tenants).where(tenants.c.id == tenant_id))).first()
    return _tenant(row) if row else None


async def list_tenants(conn: AsyncConnection) -> list[Tenant]:
    return [_tenant(r) for r in await conn.execute(select(tenants).order_by(tenants.c.created_at, tenants.c.id))]


async def create_key(conn: AsyncConnection, tenant_id: str, *, name: str = "") -> tuple[ApiKey, str]:
    """Create a key for an existing tenant; return it with the secret (the only time it is visible)."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey("key_" + uuid.uuid4().hex[:16], tenant_id, name, secret[:10], time.time(), None)
    await conn.execute(
        api_keys.insert().values(
            id=key.id, tenant_id=tenant_id, name=name, prefix=key.prefix, key_hash=hash_key(secret), created_at=key.created_at
        )
    )
    return key, secret


async def list_keys(conn: AsyncConnection, tenant_id: str | None = None) -> list[ApiKey]:
    query = select(api_keys).order_by(api_keys.c.created_at)
    if tenant_id is not None:
        query = query.where(api_keys.c.tenant_id == tenant_id)
    return [_key(r) for r in await conn.execute(query)]


async def revoke_key(conn: AsyncConnection, key_id: str) -> ApiKey | None:
    """Revoke (idempotent); None if there is no such key."""
    await conn.execute(update(api_keys).where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None)).values(revoked_at=time.time()))
    row = (await conn.execute(select(api_keys).where(api_keys.c.id == key_id))).first()
    return _key(row) if row else None


async def tenant_for_key(conn: AsyncConnection, secret: str) -> Tenant | None:
    """The tenant of an active key of an enabled tenant."""
    query = (
        select(tenants)
        .join(api_keys, api_keys.c.tenant_id == tenants.c.id)
        .where(api_keys.c.key_hash == hash_key(secret), api_keys.c.revoked_at.is_(None), tenants.c.disabled.is_(False))
    )
    row = (await conn.execute(query)).first()
    return _tenant(row) if row else None
