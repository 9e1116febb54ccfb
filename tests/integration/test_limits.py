"""Both rate limiters behave the same; the Redis one holds one limit across two limiter instances."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import pytest

from services.orchestrator.limits import LocalLimiter, RateLimiter, RedisLimiter
from tests.databases import REDIS_URL


@pytest.fixture(params=["local", "redis"])
async def limiter(request: pytest.FixtureRequest) -> AsyncIterator[RateLimiter]:
    made: RateLimiter = LocalLimiter() if request.param == "local" else RedisLimiter(REDIS_URL, prefix=f"t{uuid.uuid4().hex[:8]}:")
    await made.start()
    yield made
    await made.stop()


async def test_requests_per_minute(limiter: RateLimiter) -> None:
    assert [await limiter.hit_request("t", 3) for _ in range(3)] == [None, None, None]
    retry = await limiter.hit_request("t", 3)
    assert retry is not None and 59 < retry <= 60
    assert await limiter.hit_request("other", 3) is None
    assert await limiter.hit_request("t", 0) is None  # 0 = unlimited


async def test_tokens_per_minute(limiter: RateLimiter) -> None:
    assert await limiter.check_tokens("t", 100) is None
    await limiter.add_tokens("t", "e1", 60)
    assert await limiter.check_tokens("t", 100) is None
    await limiter.add_tokens("t", "e2", 50)
    retry = await limiter.check_tokens("t", 100)
    assert retry is not None and 0 < retry <= 60


async def test_concurrent_slots(limiter: RateLimiter) -> None:
    assert await limiter.acquire_slot("t", "e1", 2, 60) is None
    assert await limiter.acquire_slot("t", "e1", 2, 60) is None  # same execution again: no new slot
    assert await limiter.acquire_slot("t", "e2", 2, 60) is None
    assert await limiter.acquire_slot("t", "e3", 2, 60) is not None
    await limiter.release_slot("t", "e1")
    await limiter.release_slot("t", "e1")  # twice is harmless
    assert await limiter.acquire_slot("t", "e3", 2, 60) is None
    assert await limiter.acquire_slot("t", "e4", 2, 0.001) is not None


async def test_expired_slots_free_themselves(limiter: RateLimiter) -> None:
    import asyncio

    assert await limiter.acquire_slot("t", "e1", 1, 0.05) is None
    await asyncio.sleep(0.1)
    assert await limiter.acquire_slot("t", "e2", 1, 60) is None


async def test_redis_limit_holds_across_instances() -> None:
    prefix = f"t{uuid.uuid4().hex[:8]}:"
    a, b = RedisLimiter(REDIS_URL, prefix=prefix), RedisLimiter(REDIS_URL, prefix=prefix)
    await a.start()
    await b.start()
    try:
        allowed = [await (a if i % 2 else b).hit_request("t", 5) is None for i in range(10)]
        assert allowed.count(True) == 5
    finally:
        await a.stop()
        await b.stop()


async def test_an_expired_slot_behind_a_live_one_does_not_refuse_a_request() -> None:
    limiter = LocalLimiter()
    assert await limiter.acquire_slot("t", "long", 2, 60) is None
    assert await limiter.acquire_slot("t", "short", 2, 0.0) is None  # expires at once, behind "long"
    assert await limiter.acquire_slot("t", "next", 2, 60) is None  # "short" no longer counts
    assert await limiter.acquire_slot("t", "over", 2, 60) == 1.0
