"""Per-tenant rate limits: requests/minute, tokens/minute (from reported usage), concurrent executions.

``RateLimiter`` has two implementations behind one protocol: ``LocalLimiter`` (in-process, the
embedded default) and ``RedisLimiter`` (atomic Lua scripts, so the limits hold across replicas).
Each check returns ``None`` when allowed, else the seconds after which to retry.
"""

from __future__ import annotations

import collections
import time
from typing import Protocol

WINDOW_S = 60.0


class RateLimiter(Protocol):
    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def hit_request(self, tenant: str, limit: int) -> float | None: ...
    async def check_tokens(self, tenant: str, limit: int) -> float | None: ...
    async def add_tokens(self, tenant: str, execution_id: str, tokens: int) -> None: ...
    async def acquire_slot(self, tenant: str, execution_id: str, limit: int, ttl_s: float) -> float | None: ...
    async def release_slot(self, tenant: str, execution_id: str) -> None: ...


class LocalLimiter:
    def __init__(self) -> None:
        self._requests: dict[str, collections.deque[float]] = collections.defaultdict(collections.deque)
        self._tokens: dict[str, collections.deque[tuple[float, int]]] = collections.defaultdict(collections.deque)
        self._slots: dict[str, dict[str, float]] = collections.defaultdict(dict)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def hit_request(self, tenant: str, limit: int) -> float | None:
        if limit <= 0:
            return None
        now = time.time()
        log = self._requests[tenant]
        while log and log[0] <= now - WINDOW_S:
            log.popleft()
        if len(log) < limit:
            log.append(now)
            return None
        return max(log[0] + WINDOW_S - now, 0.001)

    async def check_tokens(self, tenant: str, limit: int) -> float | None:
        if limit <= 0:
            return None
        now = time.time()
        log = self._tokens[tenant]
        while log and log[0][0] <= now - WINDOW_S:
            log.popleft()
        used = sum(n for _, n in log)
        if used < limit:
            return None
        for ts, n in log:  # when enough of the window's usage has aged out
            used -= n
            if used < limit:
                return max(ts + WINDOW_S - now, 0.001)
        return WINDOW_S

    async def add_tokens(self, tenant: str, execution_id: str, tokens: int) -> None:
        if tokens > 0:
            self._tokens[tenant].append((time.time(), tokens))

    async def acquire_slot(self, tenant: str, execution_id: str, limit: int, ttl_s: float) -> float | None:
        now = time.time()
        slots = self._slots[tenant]
        # Slots are kept in the order they were taken, so the expired ones are mostly in front: drop
        # those without scanning every slot per request (a scan per POST was O(slots) at the intake);
        # only a request about to be refused scans them all, so no expired slot refuses one.
        while slots:
            first, expires = next(iter(slots.items()))
            if expires > now:
                break
            del slots[first]
        if limit > 0 and execution_id not in slots and len(slots) >= limit:
            for eid in [e for e, expires in slots.items() if expires <= now]:
                del slots[eid]
        if limit <= 0 or execution_id in slots or len(slots) < limit:
            slots[execution_id] = now + ttl_s
            return None
        return 1.0

    async def release_slot(self, tenant: str, execution_id: str) -> None:
        self._slots[tenant].pop(execution_id, None)


# Every script takes the time from Redis itself, so replicas with skewed clocks agree on windows.
_NOW = "local t = redis.call('TIME'); local now = tonumber(t[1]) + tonumber(t[2]) / 1000000\n"

_HIT_REQUEST = (
    _NOW
    + """
local window = tonumber(ARGV[1]); local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now, ARGV[3])
  redis.call('PEXPIRE', KEYS[1], math.ceil(window * 1000))
  return '0'
end
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return tostring(math.max(tonumber(oldest[2]) + window - now, 0.001))
"""
)

_CHECK_TOKENS = (
    _NOW
    + """
local window = tonumber(ARGV[1]); local limit = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
local used = 0
for i = 1, #entries, 2 do used = used + tonumber(string.match(entries[i], ':(%d+)$')) end
if used < limit then return '0' end
for i = 1, #entries, 2 do
  used = used - tonumber(string.match(entries[i], ':(%d+)$'))
  if used < limit then return tostring(math.max(tonumber(entries[i + 1]) + window - now, 0.001)) end
end
return tostring(window)
"""
)

_ADD_TOKENS = (
    _NOW
    + """
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], math.ceil(tonumber(ARGV[1]) * 1000))
return '0'
"""
)

_ACQUIRE_SLOT = (
    _NOW
    + """
local limit = tonumber(ARGV[1]); local ttl = tonumber(ARGV[2]); local member = ARGV[3]
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if limit <= 0 or redis.call('ZSCORE', KEYS[1], member) or redis.call('ZCARD', KEYS[1]) < limit then
  redis.call('ZADD', KEYS[1], now + ttl, member)
  redis.call('PEXPIRE', KEYS[1], math.ceil(ttl * 1000) + 60000)
  return '0'
end
return '1'
"""
)


class RedisLimiter:
    def __init__(self, url: str, *, prefix: str = "agentstream:") -> None:
        self._url = url
        self._prefix = prefix
        self._redis: object | None = None
        self._scripts: dict[str, object] = {}

    async def start(self) -> None:
        import redis.asyncio as redis  # local import: the embedded default never needs it

        client = redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)
        await client.ping()
        self._redis = client
        for name, body in (
            ("hit", _HIT_REQUEST),
            ("check_tokens", _CHECK_TOKENS),
            ("add_tokens", _ADD_TOKENS),
            ("acquire", _ACQUIRE_SLOT),
        ):
            self._scripts[name] = client.register_script(body)

    async def stop(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()  # type: ignore[attr-defined]  # redis-py's stubs lack aclose (added in 5.0.1)

    def _key(self, tenant: str, what: str) -> str:
        return f"{self._prefix}limits:{{{tenant}}}:{what}"

    async def _run(self, name: str, key: str, *args: object) -> float | None:
        script = self._scripts[name]
        result = await script(keys=[key], args=list(args))  # type: ignore[operator]  # redis-py types a script's call as sync or async
        value = float(result.decode() if isinstance(result, bytes) else result)
        return value if value > 0 else None

    async def hit_request(self, tenant: str, limit: int) -> float | None:
        if limit <= 0:
            return None
        import uuid

        return await self._run("hit", self._key(tenant, "requests"), WINDOW_S, limit, uuid.uuid4().hex)

    async def check_tokens(self, tenant: str, limit: int) -> float | None:
        if limit <= 0:
            return None
        return await self._run("check_tokens", self._key(tenant, "tokens"), WINDOW_S, limit)

    async def add_tokens(self, tenant: str, execution_id: str, tokens: int) -> None:
        if tokens > 0:
            await self._run("add_tokens", self._key(tenant, "tokens"), WINDOW_S, f"{execution_id}:{tokens}")

    async def acquire_slot(self, tenant: str, execution_id: str, limit: int, ttl_s: float) -> float | None:
        return await self._run("acquire", self._key(tenant, "slots"), limit, ttl_s, execution_id)

    async def release_slot(self, tenant: str, execution_id: str) -> None:
        await self._redis.zrem(self._key(tenant, "slots"), execution_id)  # type: ignore[union-attr]  # started before use; redis-py types zrem as sync or async


LIMITERS: dict[str, type[LocalLimiter] | type[RedisLimiter]] = {"local": LocalLimiter, "redis": RedisLimiter}


def make_limiter(redis_url: str | None, *, prefix: str) -> RateLimiter:
    return RedisLimiter(redis_url, prefix=prefix) if redis_url else LocalLimiter()
