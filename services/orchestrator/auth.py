"""Who is calling: tenants from API keys (settings bootstrap keys, then hashed keys in the store),
the admin token and internal services' tokens; and closing what a revoked key still holds open."""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import hmac
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass

from schemas.bounds import ID_PATTERN, MAX_ID_LENGTH
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store
from services.orchestrator.store import tenants as tenant_repo
from services.orchestrator.store.tenants import Tenant, hash_key

log = logging.getLogger(__name__)

_ID = re.compile(ID_PATTERN)


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
        self.connections = KeyWatch(self, period_s=settings.auth_cache_s)

    async def bootstrap(self) -> None:
        """Give the tenants of settings-configured keys a row (limits, webhook secret) in the store."""
        bad = sorted(t for t in set(self._settings.api_keys.values()) if _ID.fullmatch(t) is None or len(t) > MAX_ID_LENGTH)
        if bad:  # every record of theirs would be refused (schemas/bounds.py): say so at start, not per request
            raise ValueError(f"AGENTSTREAM_API_KEYS: tenant ids must be 1-{MAX_ID_LENGTH} characters of {ID_PATTERN}: {bad[:5]}")
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
            pending.add_done_callback(lambda done: self._loaded(tenant_id, done))
        if cached is not None:
            # Expired: answer with the limits known and refresh them behind, so no request waits for
            # the store every auth_cache_s (issue 14: no database round trip before a 202). A tenant
            # whose limits changed here is dropped from the cache (``forget``) and looked up at once.
            return cached[1]
        return await asyncio.shield(pending)

    def _loaded(self, tenant_id: str, done: asyncio.Future[TenantContext]) -> None:
        self._loading.pop(tenant_id, None)
        if not done.cancelled() and done.exception() is not None:  # retrieved: a refresh nobody awaited failed
            log.warning("could not refresh tenant %s: %s", tenant_id, done.exception())

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
        cached = self._keys.get(hash_key(key))
        if cached and cached[0] > time.monotonic():
            return cached[1]
        return await self.lookup_key(key)

    async def lookup_key(self, key: str) -> TenantContext | None:
        """A stored key's tenant, from the store (not the cache, which it refreshes)."""
        async with self._store.begin() as conn:
            tenant = await tenant_repo.tenant_for_key(conn, key)
        context = self._context(tenant, tenant.id) if tenant else None
        if len(self._keys) > 100_000:  # unknown keys are cached too; keep a flood of them bounded
            self._keys.clear()
        self._keys[hash_key(key)] = (time.monotonic() + self._settings.auth_cache_s, context)
        return context

    def revocable(self, key: str) -> bool:
        """Settings (bootstrap) keys live as long as the process; stored keys can be revoked."""
        return bool(key) and self._settings.tenant_for(key) is None

    async def tenant_for(self, key: str | None) -> str | None:
        context = await self.context_for(key)
        return context.id if context else None

    def forget(self) -> None:
        """Drop cached lookups (after a key was revoked or a tenant changed here); recheck open connections now."""
        self._keys.clear()
        self._tenants.clear()
        self.connections.recheck()

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


class KeyWatch:
    """Connections that outlive a request (WebSockets, SSE) by the stored key that opened them.

    Every ``period_s`` (the auth cache's lifetime) each distinct watched key is looked up in the store
    again, past the cache, and the connections of a key that no longer resolves (revoked, tenant
    disabled) are told to close: within one cache lifetime on every replica, at once on the replica
    that revoked it (``recheck``). One lookup per key, not per connection; the loop runs only while
    something is watched. A store that does not answer closes nothing: the next round tries again.
    """

    def __init__(self, auth: Authenticator, *, period_s: float) -> None:
        self._auth = auth
        self._period = max(period_s, 0.25)  # a cache of 0 s (none) must not mean a loop without pause
        self._watched: dict[str, tuple[str, set[Callable[[], None]]]] = {}  # digest -> (key, on_revoked callbacks)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def watch(self, key: str, on_revoked: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_revoked`` when ``key`` stops resolving; returns the function that stops watching."""
        if not self._auth.revocable(key):
            return lambda: None
        digest = hash_key(key)
        self._watched.setdefault(digest, (key, set()))[1].add(on_revoked)
        if self._task is None or self._task.done():
            # Its own context: not the log fields (tenant, trace) of the request that happened to start it.
            self._task = asyncio.get_running_loop().create_task(self._run(), name="key-watch", context=contextvars.Context())

        def unwatch() -> None:
            entry = self._watched.get(digest)
            if entry is not None:
                entry[1].discard(on_revoked)
                if not entry[1]:
                    del self._watched[digest]
            if not self._watched:
                self._wake.set()  # let the loop end now rather than after its sleep

        return unwatch

    def recheck(self) -> None:
        self._wake.set()

    async def _run(self) -> None:
        while self._watched:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self._period):
                    await self._wake.wait()
            self._wake.clear()
            for key, callbacks in list(self._watched.values()):
                try:
                    context = await self._auth.lookup_key(key)
                except Exception as exc:
                    log.warning("could not recheck an API key of open connections: %s", exc)
                    continue
                if context is None:
                    for on_revoked in list(callbacks):
                        on_revoked()
