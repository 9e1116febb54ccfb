"""Where cached Query and Embedding results live: in this process (a bounded LRU) or in Redis.

Both stores implement :class:`CacheStore`; keys are :class:`CacheKey` (tenant, service, model and
the digest of the normalized request), values are opaque bytes with a TTL. The store never decides
what is cached or for how long: that is ``servicecache.py``. A store may fail (Redis down): the
caller treats every exception as a miss.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson


@dataclass(frozen=True)
class CacheKey:
    tenant_id: str
    service: str
    model: str
    digest: str  # sha256 of the request's canonical JSON (``digest_of``)

    def name(self, prefix: str) -> str:
        return f"{tenant_prefix(prefix, self.tenant_id)}{self.service}:{self.digest}:{self.model}"


def tenant_prefix(prefix: str, tenant_id: str) -> str:
    """What every entry name of one tenant starts with, and no other tenant's: ids have no braces
    (schemas/bounds.py), so ``{a}`` never prefixes ``{a:b}``; the service has no colon and the
    digest is 64 hex digits, so the model (any text) can go last without making names ambiguous."""
    return f"{prefix}cache:{{{tenant_id}}}:"


def digest_of(normalized: dict[str, Any]) -> str:
    """The request's meaningful fields as canonical JSON (sorted keys), hashed."""
    return hashlib.sha256(orjson.dumps(normalized, option=orjson.OPT_SORT_KEYS)).hexdigest()


class CacheStore(Protocol):
    shared: bool  # every replica sees the same entries (Redis), or only this process (memory)

    async def start(self) -> None: ...
    async def stop(self) -> None: ...
    async def get(self, key: CacheKey) -> bytes | None: ...
    async def put(self, key: CacheKey, value: bytes, ttl_s: float) -> None: ...
    async def invalidate(self, tenant_id: str) -> int: ...


class MemoryStore:
    """One replica's LRU, bounded by entries and by bytes; an expired entry is a miss (and is dropped)."""

    shared = False

    def __init__(self, *, max_entries: int, max_bytes: int, clock: Any = time.monotonic) -> None:
        self._items: OrderedDict[CacheKey, tuple[float, bytes]] = OrderedDict()
        self._max_entries = max(1, max_entries)
        self._max_bytes = max(1, max_bytes)
        self._bytes = 0
        self._clock = clock

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._items)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        self._items.clear()
        self._bytes = 0

    async def get(self, key: CacheKey) -> bytes | None:
        item = self._items.get(key)
        if item is None:
            return None
        expires, value = item
        if expires <= self._clock():
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return value

    async def put(self, key: CacheKey, value: bytes, ttl_s: float) -> None:
        if len(value) > self._max_bytes:
            return
        self._drop(key)
        self._items[key] = (self._clock() + ttl_s, value)
        self._bytes += len(value)
        while len(self._items) > self._max_entries or self._bytes > self._max_bytes:
            self._drop(next(iter(self._items)))

    async def invalidate(self, tenant_id: str) -> int:
        mine = [k for k in self._items if k.tenant_id == tenant_id]
        for key in mine:
            self._drop(key)
        return len(mine)

    def _drop(self, key: CacheKey) -> None:
        item = self._items.pop(key, None)
        if item is not None:
            self._bytes -= len(item[1])


_GLOB = re.compile(r"([*?\[\]\\])")


class RedisStore:
    """One Redis string per entry (``SET .. PX ttl``), shared by every replica.

    Short socket timeouts: a Redis that hangs must cost a request little before it counts as a miss.
    Invalidation scans the tenant's prefix (an admin operation, rare) and unlinks what it finds.
    """

    shared = True

    def __init__(self, url: str, *, prefix: str, timeout_s: float = 0.5) -> None:
        self._url = url
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._redis: Any = None

    async def start(self) -> None:
        if self._redis is None:
            import redis.asyncio as redis  # local import: the embedded default never needs it

            # No ping: a Redis that is down at start is a miss per request, not a failed start.
            self._redis = redis.from_url(self._url, socket_timeout=self._timeout_s, socket_connect_timeout=self._timeout_s)

    async def stop(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    async def get(self, key: CacheKey) -> bytes | None:
        raw = await self._redis.get(key.name(self._prefix))
        return bytes(raw) if raw is not None else None

    async def put(self, key: CacheKey, value: bytes, ttl_s: float) -> None:
        await self._redis.set(key.name(self._prefix), value, px=max(1, int(ttl_s * 1000)))

    async def invalidate(self, tenant_id: str) -> int:
        pattern = _GLOB.sub(r"\\\1", tenant_prefix(self._prefix, tenant_id)) + "*"
        dropped = 0
        batch: list[bytes] = []
        async for name in self._redis.scan_iter(match=pattern, count=500):
            batch.append(name)
            if len(batch) >= 500:
                dropped += int(await self._redis.unlink(*batch))
                batch.clear()
        if batch:
            dropped += int(await self._redis.unlink(*batch))
        return dropped
