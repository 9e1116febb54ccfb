"""A part whose stop hangs (also one that swallows its cancellation) cannot hold a shutdown."""

from __future__ import annotations

import asyncio
import logging
import time

import pytest

from services.common.shutdown import bounded


async def test_a_stop_that_swallows_cancellation_is_left_behind_and_named(caplog: pytest.LogCaptureFixture) -> None:
    released = asyncio.Event()

    async def stubborn() -> None:
        while not released.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue  # a bug of the kind that hung a shutdown: cancellation swallowed

    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="services.common.shutdown"):
        await bounded("stubborn part", stubborn, timeout_s=0.3)
    assert time.monotonic() - started < 2.0
    (record,) = [r for r in caplog.records if "stubborn part did not stop" in r.getMessage()]
    assert "stubborn" in record.getMessage()  # the stuck stop's stack names the function it hangs in
    released.set()


async def test_a_failing_stop_is_logged_and_the_next_part_still_stops(caplog: pytest.LogCaptureFixture) -> None:
    stopped: list[str] = []

    async def broken() -> None:
        raise RuntimeError("socket already closed")

    async def fine() -> None:
        stopped.append("fine")

    with caplog.at_level(logging.WARNING, logger="services.common.shutdown"):
        await bounded("broken part", broken)
        await bounded("fine part", fine)
    assert stopped == ["fine"]
    assert any("broken part failed to stop cleanly: RuntimeError: socket already closed" in r.getMessage() for r in caplog.records)


async def test_our_own_cancellation_still_propagates() -> None:
    async def slow() -> None:
        await asyncio.sleep(3600)

    task = asyncio.create_task(bounded("slow part", slow, timeout_s=60))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
