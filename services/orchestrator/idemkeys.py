"""Where ``Idempotency-Key`` reservations and answers live: in memory per replica (the embedded
default) or in Redis when ``redis_url`` is set (shared by replicas), so a POST with a key makes its
decision without a database round trip.

The store stays the durable copy, off the hot path: every answer is written behind the response
(``Keys`` batches them on a background task), and the in-memory registry loads the answers of the
last ``ttl_s`` at start, so a key replays the same response after a restart too. A key replays for
``ttl_s`` (24 h, the window payment APIs give their idempotency keys) and, in memory, for the newest
``max_keys``; after that it is a new request.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from services.common.taskset import TaskSet
from services.orchestrator.store import Store, insert_ignore
from services.orchestrator.store.tables import idempotency

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Held:
    """A key's reservation (``status_code`` None: its request is still running) or its answer."""

    request_hash: str
    status_code: int | None
    response: Any
    created_at: float


class KeyRegistry(Protocol):
    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def claim(self, tenant_id: str, key: str, request_hash: str, *, stale_s: float) -> Held | None:
        """Reserve the key for this request: None if reserved now, else what holds it. A reservation
        older than ``stale_s`` whose request never finished is taken over."""
        ...

    async def complete(self, tenant_id: str, key: str, held: Held) -> None: ...

    async def release(self, tenant_id: str, key: str) -> None:
        """Free a reservation (the request failed): a corrected retry may use the key."""
        ...

    def load(self, tenant_id: str, key: str, held: Held) -> None:
        """An answer read back from the durable copy at start (in-memory only)."""
        ...


class MemoryKeys:
    def __init__(self, *, ttl_s: float = 86_400.0, max_keys: int = 200_000) -> None:
        self._ttl = ttl_s
        self._max = max_keys
        self._items: OrderedDict[tuple[str, str], Held] = OrderedDict()  # oldest first

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def _expire(self, now: float) -> None:
        while self._items:
            (first, held) = next(iter(self._items.items()))
            if held.created_at >= now - self._ttl and len(self._items) <= self._max:
                return
            del self._items[first]

    async def claim(self, tenant_id: str, key: str, request_hash: str, *, stale_s: float) -> Held | None:
        now = time.time()
        self._expire(now)
        held = self._items.get((tenant_id, key))
        if held is not None and not (held.status_code is None and held.created_at < now - stale_s):
            return held
        self._items[(tenant_id, key)] = Held(request_hash, None, None, now)
        self._items.move_to_end((tenant_id, key))
        return None

    async def complete(self, tenant_id: str, key: str, held: Held) -> None:
        self._items[(tenant_id, key)] = held

    async def release(self, tenant_id: str, key: str) -> None:
        held = self._items.get((tenant_id, key))
        if held is not None and held.status_code is None:
            del self._items[(tenant_id, key)]

    def load(self, tenant_id: str, key: str, held: Held) -> None:
        self._items.setdefault((tenant_id, key), held)


class RedisKeys:
    """One Redis string per key (``SET NX`` reserves it; the answer replaces it), expiring after ``ttl_s``."""

    def __init__(self, url: str, *, prefix: str, ttl_s: float = 86_400.0) -> None:
        self._url = url
        self._prefix = prefix
        self._ttl = int(ttl_s)
        self._redis: Any = None

    async def start(self) -> None:
        if self._redis is None:
            import redis.asyncio as redis  # local import: the embedded default never needs it

            self._redis = redis.from_url(self._url, socket_timeout=5, socket_connect_timeout=5)

    async def stop(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()

    def _key(self, tenant_id: str, key: str) -> str:
        return f"{self._prefix}idem:{tenant_id}:{key}"

    @staticmethod
    def _encode(held: Held) -> bytes:
        return orjson.dumps({"h": held.request_hash, "s": held.status_code, "r": held.response, "t": held.created_at})

    @staticmethod
    def _decode(raw: bytes) -> Held:
        d = orjson.loads(raw)
        return Held(str(d["h"]), d["s"], d["r"], float(d["t"]))

    async def claim(self, tenant_id: str, key: str, request_hash: str, *, stale_s: float) -> Held | None:
        name = self._key(tenant_id, key)
        mine = self._encode(Held(request_hash, None, None, time.time()))
        for _ in range(2):
            if await self._redis.set(name, mine, nx=True, ex=self._ttl):
                return None
            raw = await self._redis.get(name)
            if raw is None:
                continue  # expired or released meanwhile: try again
            held = self._decode(raw)
            if held.status_code is None and held.created_at < time.time() - stale_s:
                await self._redis.delete(name)  # its request never finished
                continue
            return held
        raw = await self._redis.get(name)
        return self._decode(raw) if raw is not None else None

    async def complete(self, tenant_id: str, key: str, held: Held) -> None:
        await self._redis.set(self._key(tenant_id, key), self._encode(held), ex=self._ttl)

    async def release(self, tenant_id: str, key: str) -> None:
        name = self._key(tenant_id, key)
        raw = await self._redis.get(name)
        if raw is not None and self._decode(raw).status_code is None:
            await self._redis.delete(name)

    def load(self, tenant_id: str, key: str, held: Held) -> None:
        pass  # Redis is the shared copy already


class Keys:
    """The registry the doors use, and the durable copy in the store written behind the answers."""

    def __init__(self, registry: KeyRegistry, store: Store, *, ttl_s: float = 86_400.0, max_load: int = 200_000) -> None:
        self.registry = registry
        self._store = store
        self._ttl = ttl_s
        self._max_load = max_load
        self._behind: list[tuple[str, str, Held]] = []
        self._wake = asyncio.Event()
        self._tasks = TaskSet("idempotency-keys", log=log)

    async def start(self) -> None:
        await self.registry.start()
        if isinstance(self.registry, MemoryKeys):
            await self._load()
        self._tasks.spawn(self._write_behind(), name="idempotency-write-behind")

    async def stop(self) -> None:
        await self._tasks.stop()
        if self._behind:
            await self._flush()  # best effort at a clean stop
        await self.registry.stop()

    async def _load(self) -> None:
        from sqlalchemy import select

        since = time.time() - self._ttl
        async with self._store.begin() as conn:
            rows = await conn.execute(
                select(idempotency)
                .where(idempotency.c.status_code.is_not(None), idempotency.c.created_at >= since)
                .order_by(idempotency.c.created_at.desc())
                .limit(self._max_load)
            )
            for r in reversed(rows.all()):  # oldest first, as the registry keeps them
                self.registry.load(r.tenant_id, r.key, Held(r.request_hash, r.status_code, r.response, r.created_at))

    async def claim(self, tenant_id: str, key: str, request_hash: str, *, stale_s: float) -> Held | None:
        return await self.registry.claim(tenant_id, key, request_hash, stale_s=stale_s)

    async def release(self, tenant_id: str, key: str) -> None:
        await self.registry.release(tenant_id, key)

    async def complete(self, tenant_id: str, key: str, request_hash: str, status_code: int, response: Any) -> None:
        held = Held(request_hash, status_code, response, time.time())
        await self.registry.complete(tenant_id, key, held)
        self._behind.append((tenant_id, key, held))
        self._wake.set()

    async def _write_behind(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._flush()
            except Exception:
                log.warning("could not write idempotency keys to the store; trying again", exc_info=True)
                await asyncio.sleep(1)
                self._wake.set()

    async def _flush(self) -> None:
        batch, self._behind = self._behind, []
        try:
            async with self._store.begin() as conn:  # one transaction for what gathered meanwhile
                for tenant_id, key, held in batch:
                    values = {
                        "tenant_id": tenant_id,
                        "key": key,
                        "request_hash": held.request_hash,
                        "status_code": held.status_code,
                        "response": held.response,
                        "created_at": held.created_at,
                    }
                    if not await insert_ignore(conn, idempotency, values, ["tenant_id", "key"]):
                        await conn.execute(
                            idempotency.update()
                            .where(idempotency.c.tenant_id == tenant_id, idempotency.c.key == key)
                            .values(request_hash=held.request_hash, status_code=held.status_code, response=held.response)
                        )
        except BaseException:
            self._behind[:0] = batch
            raise


def make_keys(store: Store, redis_url: str | None, *, prefix: str) -> Keys:
    registry: KeyRegistry = RedisKeys(redis_url, prefix=prefix) if redis_url else MemoryKeys()
    return Keys(registry, store)
