"""One cache for Query and Embedding results, behind the orchestrator's door to those services.

The coordinator asks it before delegating a job: a hit answers the job at once (no call to the
service, no tokens); a miss is delegated, and a successful result is stored when the job completes.

- Key: tenant, service, the service's model (``ServiceEndpoint.model``) and the sha256 of the
  request's canonical JSON after validation (defaults filled in, a query's whitespace collapsed), so
  ``{"query": "a  b"}`` and ``{"query": "a b", "top_k": 3}`` are one entry and two tenants never
  share one.
- TTL per service (``result_cache_ttl_s``; 0 or absent: that service is not cached).
- Store: Redis when configured (shared by every replica), else this process's bounded LRU
  (``resultcache.py``). A store that fails is a miss (counted as ``error``), never a failed job;
  after a few failures in a row a circuit breaker skips the store for a while (``skipped``), so a
  Redis that hangs costs each job nothing instead of a timeout per lookup and per store.
- Only successful results, each at most ``result_cache_max_value_bytes`` encoded.

The cache is a disposable copy: every entry is a result the log already reported (a job's
completion); losing it costs one more call to the service, nothing else.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import orjson
from pydantic import ValidationError

from schemas.jobs import SERVICE_INPUTS
from services.common.errors import Unavailable
from services.common.observability import metrics
from services.orchestrator.breaker import CircuitBreaker
from services.orchestrator.resultcache import CacheKey, CacheStore, MemoryStore, RedisStore, digest_of
from services.orchestrator.settings import OrchestratorSettings

log = logging.getLogger(__name__)

_SPACES = re.compile(r"\s+")


@dataclass(frozen=True)
class CachedResult:
    result: Any
    job_id: str  # the job whose completion this is
    stored_at: float


def normalized(service: str, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The request's meaningful fields, or None if it is not a valid request of that service."""
    model = SERVICE_INPUTS.get(service)
    if model is None:
        return None
    try:
        fields = model.model_validate(payload).model_dump(mode="json")
    except ValidationError:
        return None
    if service == "query":
        fields["query"] = _SPACES.sub(" ", str(fields["query"])).strip()
    return fields


class ServiceCache:
    def __init__(
        self,
        store: CacheStore,
        *,
        ttl_s: dict[str, float],
        models: dict[str, str],
        max_value_bytes: int,
        breaker: CircuitBreaker | None = None,
    ) -> None:
        self.store = store
        self.breaker = breaker or CircuitBreaker(failures=3, reset_s=5.0)
        self._ttl_s = ttl_s
        self._models = models
        self._max_value_bytes = max_value_bytes

    @property
    def shared(self) -> bool:
        return self.store.shared

    async def start(self) -> None:
        await self.store.start()

    async def stop(self) -> None:
        await self.store.stop()

    def key_for(self, tenant_id: str, service: str, payload: dict[str, Any]) -> CacheKey | None:
        """The entry a request maps to; None if that service is not cached or the request is invalid."""
        if self._ttl_s.get(service, 0) <= 0:
            return None
        fields = normalized(service, payload)
        if fields is None:
            return None
        return CacheKey(tenant_id=tenant_id, service=service, model=self._models.get(service, ""), digest=digest_of(fields))

    async def get(self, key: CacheKey) -> CachedResult | None:
        if not self.breaker.allow():
            metrics.CACHE_LOOKUPS.labels(service=key.service, outcome="skipped").inc()
            return None
        try:
            raw = await self.store.get(key)
        except Exception as exc:  # Redis down: a miss, never a failed job
            self.breaker.failure()
            log.warning("result cache lookup failed (%s: %s); treated as a miss", type(exc).__name__, exc)
            metrics.CACHE_LOOKUPS.labels(service=key.service, outcome="error").inc()
            return None
        self.breaker.success()
        try:
            found = _decode(raw) if raw is not None else None
        except (ValueError, KeyError, TypeError) as exc:  # a damaged entry: a miss (the next result replaces it)
            log.warning("result cache entry of %s unreadable (%s); treated as a miss", key.service, exc)
            metrics.CACHE_LOOKUPS.labels(service=key.service, outcome="error").inc()
            return None
        metrics.CACHE_LOOKUPS.labels(service=key.service, outcome="hit" if found is not None else "miss").inc()
        return found

    def bypassed(self, service: str) -> None:
        metrics.CACHE_LOOKUPS.labels(service=service, outcome="bypass").inc()

    async def put(self, key: CacheKey, result: Any, *, job_id: str) -> bool:
        """Store one successful result; False if it is too large or the store failed."""
        value = orjson.dumps({"r": result, "j": job_id, "t": time.time()})
        if len(value) > self._max_value_bytes:
            metrics.CACHE_STORES.labels(service=key.service, outcome="too_large").inc()
            return False
        if not self.breaker.allow():
            metrics.CACHE_STORES.labels(service=key.service, outcome="skipped").inc()
            return False
        try:
            await self.store.put(key, value, self._ttl_s[key.service])
        except Exception as exc:
            self.breaker.failure()
            log.warning("result cache store failed (%s: %s)", type(exc).__name__, exc)
            metrics.CACHE_STORES.labels(service=key.service, outcome="error").inc()
            return False
        self.breaker.success()
        metrics.CACHE_STORES.labels(service=key.service, outcome="stored").inc()
        return True

    async def invalidate(self, tenant_id: str) -> int:
        """Drop every entry of one tenant; ``Unavailable`` if the store fails (the admin must know)."""
        try:
            dropped = await self.store.invalidate(tenant_id)
        except Exception as exc:  # Redis down: the entries expire on their TTL meanwhile
            log.warning("invalidating the result cache of %s failed: %s: %s", tenant_id, type(exc).__name__, exc)
            raise Unavailable(f"the result cache did not answer ({type(exc).__name__}); retry later") from exc
        metrics.CACHE_INVALIDATIONS.inc()
        return dropped


def _decode(raw: bytes) -> CachedResult:
    d = orjson.loads(raw)
    return CachedResult(result=d["r"], job_id=str(d["j"]), stored_at=float(d["t"]))


def make_cache(settings: OrchestratorSettings) -> ServiceCache | None:
    """The cache the settings ask for: ``off``, ``memory``, or ``auto`` (Redis when a URL is set, else memory)."""
    if settings.result_cache == "off":
        return None
    secret = settings.result_cache_redis_url or settings.redis_url
    url = secret.get_secret_value() if secret is not None else None
    store: CacheStore
    if settings.result_cache == "auto" and url:
        store = RedisStore(url, prefix=settings.redis_key_prefix, timeout_s=settings.result_cache_redis_timeout_s)
    else:
        store = MemoryStore(max_entries=settings.result_cache_max_entries, max_bytes=settings.result_cache_max_bytes)
    models = {
        name: endpoint.model
        for name, endpoint in (("query", settings.query_service), ("embedding", settings.embedding_service))
        if endpoint is not None
    }
    return ServiceCache(store, ttl_s=settings.result_cache_ttl_s, models=models, max_value_bytes=settings.result_cache_max_value_bytes)
