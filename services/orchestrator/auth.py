"""Who is calling: tenants from API keys (settings bootstrap keys, then hashed keys in the store),
the admin token and internal services' tokens."""

from __future__ import annotations

import asyncio
import hmac
import time
from dataclasses import dataclass

from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store
from services.orchestrator.store import tenants as tenant_repo
from services.orchestrator.store.tenants import Tenant, hash_key


@dataclass(frozen=True)
class Limits:
    requests_per_minute: int
    tokens_per_minute: int
    concurrent: int


@dataclass(frozen=True)
class TenantContext:
    id: str
    limits: Limits


class Authenticator:
    def __init__(self, settings: OrchestratorSettings, store: Store) -> None:
        self._settings = settings
        self._store = store
        self._keys: dict[str, tuple[float, TenantContext | None]] = {}  # key digest -> (expires, context)
        self._tenants: dict[str, tuple[float, TenantContext]] = {}
        self._loading: dict[str, asyncio.Future[TenantContext]] = {}

    async def bootstrap(self) -> None:
        """Give the tenants of settings-configured keys a row (limits, webhook secret) in the store."""
        async with self._store.begin() as conn:
            for tenant_id in sorted(set(self._settings.api_keys.values())):
                await tenant_repo.ensure_tenant(conn, tenant_id)

    def _context(self, tenant: Tenant | None, tenant_id: str) -> TenantContext:
        own = tenant.limits if tenant else {}
        s = self._settings
        return TenantContext(
            tenant_id,
            Limits(
                requests_per_minute=int(own.get("requests_per_minute", s.requests_per_minute)),
                tokens_per_minute=int(own.get("tokens_per_minute", s.tokens_per_minute)),
                concurrent=int(own.get("concurrent", s.concurrent_executions)),
            ),
        )

    async def tenant_context(self, tenant_id: str) -> TenantContext:
        now = time.monotonic()
        cached = self._tenants.get(tenant_id)
        if cached and cached[0] > now:
            return cached[1]
        # Single flight: a burst of requests after the entry expired waits for one lookup instead of
        # each running its own transaction (1,000 WebSocket connects were 1,000 SQLite transactions).
        pending = self._loading.get(tenant_id)
        if pending is None:
            pending = self._loading[tenant_id] = asyncio.ensure_future(self._load_tenant(tenant_id))
            pending.add_done_callback(lambda _: self._loading.pop(tenant_id, None))
        return await asyncio.shield(pending)

    async def _load_tenant(self, tenant_id: str) -> TenantContext:
        async with self._store.begin() as conn:
            tenant = await tenant_repo.get_tenant(conn, tenant_id)
        context = self._context(tenant, tenant_id)
        self._tenants[tenant_id] = (time.monotonic() + self._settings.auth_cache_s, context)
        return context

    async def context_for(self, key: str | None) -> TenantContext | None:
        if not key or len(key) > 512:
            return None
        bootstrap = self._settings.tenant_for(key)
        if bootstrap is not None:
            return await self.tenant_context(bootstrap)
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._keys.get(digest)
        if cached and cached[0] > now:
            return cached[1]
        async with self._store.begin() as conn:
            tenant = await tenant_repo.tenant_for_key(conn, key)
        context = self._context(tenant, tenant.id) if tenant else None
        self._keys[digest] = (now + self._settings.auth_cache_s, context)
        if len(self._keys) > 100_000:  # unknown keys are cached too; keep a flood of them bounded
            self._keys.clear()
        return context

    async def tenant_for(self, key: str | None) -> str | None:
        context = await self.context_for(key)
        return context.id if context else None

    def forget(self) -> None:
        """Drop cached lookups (after a key was revoked or a tenant changed here)."""
        self._keys.clear()
        self._tenants.clear()

    def is_admin(self, token: str | None) -> bool:
        expected = self._settings.admin_token
        return bool(token and expected and hmac.compare_digest(token, expected.get_secret_value()))

    def service_for(self, token: str | None) -> str | None:
        if not token:
            return None
        for service, expected in self._settings.service_tokens.items():
            if hmac.compare_digest(token, expected.get_secret_value()):
                return service
        return None
