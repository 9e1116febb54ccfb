"""Both idempotency-key registries (in memory, Redis) behave the same; the Redis one is shared by
two instances (replicas)."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import pytest

from services.orchestrator.idemkeys import Held, KeyRegistry, MemoryKeys, RedisKeys
from tests.databases import REDIS_URL


@pytest.fixture(params=["memory", "redis"])
async def keys(request: pytest.FixtureRequest) -> AsyncIterator[KeyRegistry]:
    made: KeyRegistry = MemoryKeys() if request.param == "memory" else RedisKeys(REDIS_URL, prefix=f"t{uuid.uuid4().hex[:8]}:")
    await made.start()
    yield made
    await made.stop()


async def test_a_key_is_reserved_once_then_replays_its_answer(keys: KeyRegistry) -> None:
    assert await keys.claim("t", "k", "hash-1", stale_s=60) is None
    held = await keys.claim("t", "k", "hash-1", stale_s=60)
    assert held is not None and held.status_code is None  # in progress: the caller answers 409
    await keys.complete("t", "k", Held("hash-1", 202, {"execution_id": "e1"}, time.time()))
    replay = await keys.claim("t", "k", "hash-1", stale_s=60)
    assert replay is not None and (replay.status_code, replay.response) == (202, {"execution_id": "e1"})
    other = await keys.claim("t", "k", "hash-2", stale_s=60)
    assert other is not None and other.request_hash == "hash-1"  # another payload: the caller answers 409
    assert await keys.claim("other-tenant", "k", "hash-2", stale_s=60) is None  # keys are per tenant


async def test_a_released_or_stale_reservation_is_free_again_and_an_answer_is_not_released(keys: KeyRegistry) -> None:
    assert await keys.claim("t", "failed", "h", stale_s=60) is None
    await keys.release("t", "failed")
    assert await keys.claim("t", "failed", "h", stale_s=60) is None
    assert await keys.claim("t", "crashed", "h", stale_s=60) is None
    assert await keys.claim("t", "crashed", "h", stale_s=-1) is None  # older than stale_s: taken over
    await keys.complete("t", "done", Held("h", 200, {"ok": True}, time.time()))
    await keys.release("t", "done")
    held = await keys.claim("t", "done", "h", stale_s=60)
    assert held is not None and held.status_code == 200


async def test_redis_keys_are_shared_by_two_replicas() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a, b = RedisKeys(REDIS_URL, prefix=prefix), RedisKeys(REDIS_URL, prefix=prefix)
    await a.start()
    await b.start()
    try:
        assert await a.claim("t", "k", "h", stale_s=60) is None
        assert (await b.claim("t", "k", "h", stale_s=60)) is not None
        await a.complete("t", "k", Held("h", 202, {"execution_id": "e"}, time.time()))
        held = await b.claim("t", "k", "h", stale_s=60)
        assert held is not None and held.response == {"execution_id": "e"}
    finally:
        await a.stop()
        await b.stop()


def test_memory_keys_forget_the_oldest_beyond_their_bound() -> None:
    import asyncio

    async def run() -> None:
        keys = MemoryKeys(max_keys=2)
        for key in ("a", "b", "c"):
            assert await keys.claim("t", key, "h", stale_s=60) is None
        assert await keys.claim("t", "a", "h", stale_s=60) is None  # "a" was the oldest: forgotten
        assert await keys.claim("t", "c", "h", stale_s=60) is not None

    asyncio.run(run())
