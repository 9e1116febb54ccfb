"""The one helper for a component's background tasks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from services.common.taskset import TaskSet


async def test_a_failing_task_is_logged_and_does_not_stop_the_others(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("test")
    finished = asyncio.Event()

    async def fail() -> None:
        raise ValueError("boom")

    async def work() -> None:
        await asyncio.sleep(0)
        finished.set()

    with caplog.at_level(logging.ERROR):
        failing = tasks.spawn(fail(), name="failing")
        tasks.spawn(work())
        await asyncio.wait_for(finished.wait(), 10)
        assert failing is not None
        await asyncio.wait({failing}, timeout=10)
        await asyncio.sleep(0)  # the done callback runs on the next loop iteration
    failures = [r for r in caplog.records if "background task failing failed" in r.getMessage()]
    assert len(failures) == 1 and failures[0].exc_info is not None and isinstance(failures[0].exc_info[1], ValueError)
    assert len(tasks) == 0
    await tasks.stop()


async def test_stop_cancels_what_is_left_and_drains_the_set() -> None:
    tasks = TaskSet("test")
    started, cancelled = asyncio.Event(), asyncio.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        finally:
            cancelled.set()

    task = tasks.spawn(forever())
    await asyncio.wait_for(started.wait(), 10)
    assert len(tasks) == 1
    await tasks.stop()
    assert task is not None and task.cancelled() and cancelled.is_set()
    assert len(tasks) == 0
    await tasks.stop()  # idempotent


async def test_stop_lets_tasks_finish_within_the_grace_period() -> None:
    tasks = TaskSet("test")
    release = asyncio.Event()
    done: list[str] = []

    async def send() -> None:
        await release.wait()
        done.append("sent")

    tasks.spawn(send())
    stopping = asyncio.create_task(tasks.stop(grace_s=60))
    await asyncio.sleep(0)
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert done == ["sent"] and len(tasks) == 0


async def test_work_spawned_after_stop_is_dropped_not_leaked(caplog: pytest.LogCaptureFixture) -> None:
    tasks = TaskSet("test")
    await tasks.stop()
    ran: list[bool] = []

    async def late() -> None:
        ran.append(True)

    with caplog.at_level(logging.WARNING):
        assert tasks.spawn(late(), name="late") is None
    await asyncio.sleep(0)
    assert ran == [] and len(tasks) == 0
    assert any("late dropped" in r.getMessage() for r in caplog.records)


async def test_stop_without_a_grace_limit_waits_for_every_task_to_end() -> None:
    tasks = TaskSet("test")
    release = asyncio.Event()
    done: list[str] = []

    async def close() -> None:  # work that bounds itself and must not be cut short
        await release.wait()
        done.append("closed")

    tasks.spawn(close())
    stopping = asyncio.create_task(tasks.stop(grace_s=None))
    await asyncio.sleep(0)
    assert not stopping.done()
    release.set()
    await asyncio.wait_for(stopping, 10)
    assert done == ["closed"] and len(tasks) == 0
