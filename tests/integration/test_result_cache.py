"""The result cache's stores behave the same (in-process LRU and real Redis); the cache in front of
them keys by tenant, service, model and the normalized request, stores only what fits, and treats a
store that fails (a Redis nobody listens on) as a miss."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from typing import cast

import pytest
from aiokafka import AIOKafkaProducer
from pydantic import ValidationError
from starlette.requests import Request

from services.common.errors import PoisonRecord, Unavailable
from services.common.settings import KafkaSettings
from services.common.sources import MemorySource
from services.orchestrator.breaker import CircuitBreaker
from services.orchestrator.cachecontrol import no_cache
from services.orchestrator.cachefeed import CacheInvalidations
from services.orchestrator.resultcache import CacheKey, CacheStore, MemoryStore, RedisStore
from services.orchestrator.servicecache import ServiceCache
from services.orchestrator.settings import OrchestratorSettings
from tests.databases import REDIS_URL


def key(tenant: str = "tenant-a", digest: str = "0" * 64, *, service: str = "embedding", model: str = "m") -> CacheKey:
    return CacheKey(tenant_id=tenant, service=service, model=model, digest=digest)


@pytest.fixture(params=["memory", "redis"])
async def store(request: pytest.FixtureRequest) -> AsyncIterator[CacheStore]:
    made: CacheStore = (
        MemoryStore(max_entries=100, max_bytes=1_000_000)
        if request.param == "memory"
        else RedisStore(REDIS_URL, prefix=f"t{uuid.uuid4().hex[:8]}:")
    )
    await made.start()
    yield made
    await made.stop()


async def test_an_entry_is_served_until_its_ttl_and_only_under_its_own_key(store: CacheStore) -> None:
    await store.put(key(), b"v1", 30)
    assert await store.get(key()) == b"v1"
    assert await store.get(key("tenant-b")) is None
    assert await store.get(key(model="other")) is None
    assert await store.get(key(service="query")) is None
    await store.put(key(), b"v2", 30)  # a refresh replaces it
    assert await store.get(key()) == b"v2"

    await store.put(key(digest="1" * 64), b"short", 0.05)
    async with asyncio.timeout(10):
        while await store.get(key(digest="1" * 64)) is not None:
            await asyncio.sleep(0.05)


async def test_invalidation_drops_one_tenants_entries_only(store: CacheStore) -> None:
    # "tenant-a:x" starts with "tenant-a": a prefix of the id must not select the other tenant.
    for tenant in ("tenant-a", "tenant-a:x", "tenant-b"):
        for digest in ("1" * 64, "2" * 64):
            await store.put(key(tenant, digest), tenant.encode(), 30)
    assert await store.invalidate("tenant-a") == 2
    assert await store.get(key("tenant-a", "1" * 64)) is None and await store.get(key("tenant-a", "2" * 64)) is None
    assert await store.get(key("tenant-a:x", "1" * 64)) == b"tenant-a:x"
    assert await store.get(key("tenant-b", "2" * 64)) == b"tenant-b"
    assert await store.invalidate("nobody") == 0


async def test_the_memory_store_is_bounded_by_entries_and_bytes_least_recently_used_first() -> None:
    store = MemoryStore(max_entries=3, max_bytes=100)
    for i in range(3):
        await store.put(key(digest=str(i) * 64), b"x" * 10, 30)
    assert await store.get(key(digest="0" * 64)) is not None  # now the most recently used
    await store.put(key(digest="3" * 64), b"x" * 10, 30)
    assert len(store) == 3 and await store.get(key(digest="1" * 64)) is None and await store.get(key(digest="0" * 64)) is not None
    await store.put(key(digest="4" * 64), b"y" * 90, 30)  # by bytes: the oldest go until it fits
    assert store.size_bytes <= 100 and await store.get(key(digest="4" * 64)) == b"y" * 90
    await store.put(key(digest="5" * 64), b"z" * 101, 30)  # larger than the whole store: not kept
    assert await store.get(key(digest="5" * 64)) is None and await store.get(key(digest="4" * 64)) == b"y" * 90


def cache(store: CacheStore, **overrides: int) -> ServiceCache:
    return ServiceCache(
        store,
        ttl_s={"query": 60.0, "embedding": 60.0},
        models={"embedding": "hashing-384"},
        max_value_bytes=overrides.get("max_value_bytes", 10_000),
    )


def test_the_key_is_the_normalized_request_of_one_tenant_service_and_model() -> None:
    c = cache(MemoryStore(max_entries=10, max_bytes=10_000))
    base = c.key_for("tenant-a", "query", {"query": "what  is\ta cancel? "})
    assert base is not None and base == c.key_for("tenant-a", "query", {"query": "what is a cancel?", "top_k": 3})
    assert base != c.key_for("tenant-a", "query", {"query": "what is a cancel?", "top_k": 4})
    assert base != c.key_for("tenant-b", "query", {"query": "what is a cancel?"})
    embedding = c.key_for("tenant-a", "embedding", {"texts": ["a", "b"]})
    assert embedding is not None and embedding.model == "hashing-384"
    assert embedding != c.key_for("tenant-a", "embedding", {"texts": ["b", "a"]})  # order is meaningful
    assert c.key_for("tenant-a", "embedding", {"texts": []}) is None  # not a valid request: not cached
    assert c.key_for("tenant-a", "embedding", {"texts": ["a"], "extra": 1}) is None
    off = ServiceCache(MemoryStore(max_entries=1, max_bytes=1), ttl_s={"query": 0}, models={}, max_value_bytes=1)
    assert off.key_for("tenant-a", "query", {"query": "q"}) is None and off.key_for("tenant-a", "embedding", {"texts": ["a"]}) is None


async def test_only_a_result_that_fits_is_stored_and_it_comes_back_with_its_job() -> None:
    c = cache(MemoryStore(max_entries=10, max_bytes=100_000), max_value_bytes=200)
    k = c.key_for("tenant-a", "embedding", {"texts": ["a"]})
    assert k is not None
    assert await c.put(k, {"model": "m", "embeddings": [[0.5, 0.25]]}, job_id="job_1")
    found = await c.get(k)
    assert found is not None and found.result == {"model": "m", "embeddings": [[0.5, 0.25]]} and found.job_id == "job_1"
    big = c.key_for("tenant-a", "embedding", {"texts": ["big"]})
    assert big is not None
    assert not await c.put(big, {"model": "m", "embeddings": [[0.123456789] * 50]}, job_id="job_2")
    assert await c.get(big) is None


async def test_a_redis_nobody_listens_on_is_a_miss_not_an_error() -> None:
    store = RedisStore("redis://127.0.0.1:34998/0", prefix="t:", timeout_s=0.2)
    c = cache(store)
    await c.start()
    try:
        k = c.key_for("tenant-a", "embedding", {"texts": ["a"]})
        assert k is not None
        assert not await c.put(k, {"model": "m", "embeddings": [[1.0]]}, job_id="job_1")
        assert await c.get(k) is None
        with pytest.raises(Unavailable):  # the admin API answers 503: it must know
            await c.invalidate("tenant-a")
    finally:
        await c.stop()


async def test_a_damaged_entry_is_a_miss(store: CacheStore) -> None:
    c = cache(store)
    k = c.key_for("tenant-a", "embedding", {"texts": ["a"]})
    assert k is not None
    await store.put(k, b"not json at all", 30)  # what an older version or another writer may have left
    assert await c.get(k) is None
    assert await c.put(k, {"model": "m", "embeddings": [[1.0]]}, job_id="job_1")  # a fresh result replaces it
    found = await c.get(k)
    assert found is not None and found.job_id == "job_1"


@pytest.mark.parametrize(
    ("header", "bypass"),
    [
        ("no-cache", True),
        ("max-age=0, No-Cache", True),
        ('no-cache="set-cookie"', True),
        ("no-store", False),
        ("max-age=60", False),
        ("", False),
        ("x" * 5000 + ", no-cache", False),  # past the bounded prefix that is read
    ],
)
def test_cache_control_no_cache_is_read_from_the_request(header: str, bypass: bool) -> None:
    scope = {"type": "http", "headers": [(b"cache-control", header.encode())] if header else []}
    assert no_cache(Request(scope)) is bypass


def test_cache_ttls_are_bounded_where_they_enter() -> None:
    assert OrchestratorSettings(result_cache_ttl_s={"query": 0, "embedding": 60}).result_cache_ttl_s == {"query": 0, "embedding": 60}
    for bad in (-1, 10**12):
        with pytest.raises(ValidationError):
            OrchestratorSettings(result_cache_ttl_s={"query": bad})


class DownStore:
    """A store whose backend does not answer (what a hung or dead Redis looks like to the cache)."""

    shared = True

    def __init__(self) -> None:
        self.calls = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def get(self, key: CacheKey) -> bytes | None:
        self.calls += 1
        raise ConnectionError("no answer")

    async def put(self, key: CacheKey, value: bytes, ttl_s: float) -> None:
        self.calls += 1
        raise ConnectionError("no answer")

    async def invalidate(self, tenant_id: str) -> int:
        self.calls += 1
        raise ConnectionError("no answer")


async def test_a_failing_store_is_skipped_after_a_few_failures_then_tried_again() -> None:
    now = [0.0]
    store = DownStore()
    c = ServiceCache(
        store,
        ttl_s={"embedding": 60.0},
        models={},
        max_value_bytes=10_000,
        breaker=CircuitBreaker(failures=3, reset_s=5.0, clock=lambda: now[0]),
    )
    k = c.key_for("tenant-a", "embedding", {"texts": ["a"]})
    assert k is not None
    for _ in range(10):
        assert await c.get(k) is None
        assert not await c.put(k, {"model": "m", "embeddings": [[1.0]]}, job_id="job_1")
    assert store.calls == 3  # then the circuit opened: 17 lookups and stores cost nothing
    now[0] += 5.0
    assert await c.get(k) is None and store.calls == 4  # one trial after the reset
    assert await c.get(k) is None and store.calls == 4  # it failed: open again


@pytest.mark.parametrize(
    "value",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "cache.cleared", "tenant_id": "tenant-a"}',
        b'{"type": "cache.invalidated"}',
        b'{"type": "cache.invalidated", "tenant_id": ""}',
        b'{"type": "cache.invalidated", "tenant_id": 7}',
        b'{"type": "cache.invalidated", "tenant_id": "' + b"x" * 200 + b'"}',
    ],
)
async def test_a_malformed_invalidation_record_is_refused_and_drops_nothing(value: bytes) -> None:
    store = MemoryStore(max_entries=10, max_bytes=10_000)
    feed = CacheInvalidations(KafkaSettings(topic_prefix="x."), cache=cache(store), producer=cast(AIOKafkaProducer, None))
    await store.put(key(), b"v", 30)
    source = MemorySource()
    with pytest.raises(PoisonRecord):  # the reader parks it in the DLQ with this reason and goes on
        await feed._deliver(source.append("x.cache.invalidations", value, key=b"tenant-a"))
    assert await store.get(key()) == b"v"
    await feed._deliver(source.append("x.cache.invalidations", b'{"type": "cache.invalidated", "tenant_id": "tenant-a"}'))
    assert await store.get(key()) is None
