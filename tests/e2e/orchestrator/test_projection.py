"""A 202 waits for Kafka only; the task registry is a projection of the log (projection.py).

On the real broker and a real SQLite store: the 202 while the store is locked, a projection that
starts (or restarts) after the acknowledgement catches up without duplicates, and an end that
arrives before the row still finalizes once.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from sqlalchemy import func, select

from services.common.kafka import ensure_topics, make_producer, start_client
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView
from services.orchestrator.callbacks import Dispatcher
from services.orchestrator.hub import TaskHub
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.limits import make_limiter
from services.orchestrator.plans import PlannedCall
from services.orchestrator.projection import Projection
from services.orchestrator.store import Store, plans, tasks
from services.orchestrator.store.tables import service_calls
from services.orchestrator.store.tables import tasks as tasks_table
from services.orchestrator.submission import Submission
from tests.e2e.orchestrator.conftest import Launcher, settings_for

pytestmark = pytest.mark.kafka


@contextlib.asynccontextmanager
async def store_locked(sqlite_url: str) -> AsyncIterator[None]:
    """Another connection holds SQLite's write lock: every transaction of the store waits for it. Taken
    in a thread: a busy wait on this event loop would stall the orchestrator serving on it."""
    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"), isolation_level=None, timeout=30, check_same_thread=False)
    try:
        await asyncio.to_thread(holder.execute, "BEGIN IMMEDIATE")
        yield
    finally:
        holder.rollback()
        holder.close()


async def test_a_202_is_answered_while_the_store_is_locked_and_the_row_follows(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        assert (await orch.get("/v1/executions")).status_code == 200  # the tenant is known (auth cache)
        # Another process holds SQLite's write lock: every transaction of the store waits for it.
        async with store_locked(sqlite_url):
            response = await asyncio.wait_for(orch.post("/v1/executions", {"input": "while the store is locked"}), 20)
            assert response.status_code == 202, response.text
            execution_id = response.json()["execution_id"]
        # The list reads the store only: the projection wrote the row from the log.
        listed = await orch.wait_for("/v1/executions", lambda page: any(e["execution_id"] == execution_id for e in page["executions"]))
        [row] = [e for e in listed["executions"] if e["execution_id"] == execution_id]
        assert row["input_preview"] == "while the store is locked"
        assert row["status"] == "queued"


async def test_an_idempotency_key_replays_its_response_while_the_store_is_locked_and_after_a_restart(
    launch: Launcher, sqlite_url: str
) -> None:
    body = {"input": "once"}
    headers = {"Idempotency-Key": "intake-1"}
    async with launch(sqlite_url, executor=False) as orch:
        assert (await orch.get("/v1/executions")).status_code == 200  # the tenant is known (auth cache)
        async with store_locked(sqlite_url):
            first = await asyncio.wait_for(orch.post("/v1/executions", body, headers=headers), 20)
            again = await asyncio.wait_for(orch.post("/v1/executions", body, headers=headers), 20)
            other = await asyncio.wait_for(orch.post("/v1/executions", {"input": "else"}, headers=headers), 20)
        assert first.status_code == 202 and "idempotent-replayed" not in first.headers
        assert again.status_code == 202 and again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert other.status_code == 409
        # The store's durable copy is written behind the answer: a new process replays it too.
        async with asyncio.timeout(30):
            while True:
                with contextlib.closing(sqlite3.connect(sqlite_url.removeprefix("sqlite+aiosqlite:///"), timeout=30)) as db:
                    if db.execute("SELECT status_code FROM idempotency WHERE key = 'intake-1'").fetchall() == [(202,)]:
                        break
                await asyncio.sleep(0.05)
    async with launch(sqlite_url, executor=False) as orch:
        replayed = await orch.post("/v1/executions", body, headers=headers)
        assert replayed.status_code == 202 and replayed.headers["idempotent-replayed"] == "true"
        assert replayed.json() == first.json()


async def test_a_202_after_the_tenant_cache_expired_does_not_wait_for_the_store(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False, auth_cache_s=0.05) as orch:
        assert (await orch.get("/v1/executions")).status_code == 200  # the tenant is known (auth cache)
        async with store_locked(sqlite_url):
            await asyncio.sleep(0.1)  # the tenant's cached limits are expired now: their refresh waits for the lock
            response = await asyncio.wait_for(orch.post("/v1/executions", {"input": "stale limits, fresh answer"}), 20)
            assert response.status_code == 202, response.text


@dataclass
class Parts:
    lifecycle: Lifecycle
    store: Store
    kafka: KafkaSettings


@contextlib.asynccontextmanager
async def parts(kafka_settings: KafkaSettings, sqlite_url: str) -> AsyncIterator[Parts]:
    """A lifecycle without the orchestrator's readers: submissions are acknowledged, nothing projects
    them until a test starts a ``Projection`` (as after a crash between acknowledgement and projection)."""
    settings = settings_for(kafka_settings, sqlite_url)
    await ensure_topics(kafka_settings)
    async with contextlib.AsyncExitStack() as stack:
        store = await stack.enter_async_context(Store(sqlite_url))
        producer = make_producer(kafka_settings, client_id="test-projection")
        await start_client(producer, kafka_settings)
        stack.push_async_callback(producer.stop)
        status = StatusView(kafka_settings, dlq=producer)
        await status.start()
        stack.push_async_callback(status.stop)
        limiter = make_limiter(None, prefix="t")
        await limiter.start()
        stack.push_async_callback(limiter.stop)
        lifecycle = Lifecycle(
            settings=settings,
            store=store,
            producer=producer,
            status=status,
            limiter=limiter,
            hub=TaskHub(),
            dispatcher=Dispatcher(settings, store),
            agents={},
        )
        stack.push_async_callback(lifecycle.stop)
        yield Parts(lifecycle, store, kafka_settings)


async def _count(store: Store, execution_ids: list[str]) -> tuple[int, int]:
    async with store.begin() as conn:
        rows = (await conn.execute(select(func.count()).select_from(tasks_table).where(tasks_table.c.id.in_(execution_ids)))).scalar_one()
        calls = (
            await conn.execute(select(func.count()).select_from(service_calls).where(service_calls.c.execution_id.in_(execution_ids)))
        ).scalar_one()
    return int(rows), int(calls)


async def _applied(projection: Projection, n: int) -> None:
    """Until the projection has committed the batch transactions of ``n`` snapshots."""
    async with asyncio.timeout(60):
        while projection.applied < n:
            await asyncio.sleep(0.05)


async def test_a_projection_started_after_the_acknowledgement_catches_up_once(kafka_settings: KafkaSettings, sqlite_url: str) -> None:
    async with parts(kafka_settings, sqlite_url) as p:
        subs = [
            Submission(
                tenant_id="tenant-a",
                agent_id="default",
                input=f"n{i}",
                plan=[PlannedCall(kind="agent_config", target="default", outcome="ok")],
            )
            for i in range(3)
        ]
        await p.lifecycle.submit(subs)
        ids = [s.execution_id for s in subs]
        assert await _count(p.store, ids) == (0, 0)  # acknowledged, not projected: nothing half-written
        first = Projection(p.lifecycle)
        await first.start()
        try:
            await _applied(first, 3)
            assert await _count(p.store, ids) == (3, 6)  # each: its row, the agent_config and execution calls
            assert first.projected == 3
        finally:
            await first.stop()
        # A replay from the beginning (a new group: every snapshot read again) changes nothing.
        again = Projection(p.lifecycle, group=f"{p.kafka.topic_prefix}replay")
        await again.start()
        try:
            await _applied(again, 3)
        finally:
            await again.stop()
        assert await _count(p.store, ids) == (3, 6)
        assert again.projected == 0


async def test_an_end_before_its_row_finalizes_once(kafka_settings: KafkaSettings, sqlite_url: str) -> None:
    async with parts(kafka_settings, sqlite_url) as p:
        sub = Submission(tenant_id="tenant-a", agent_id="default", input="quick", callback_url="http://127.0.0.1:9/hook")
        await p.lifecycle.submit([sub])
        assert await _count(p.store, [sub.execution_id]) == (0, 0)
        ended = await p.lifecycle.finalize(sub.execution_id, "completed", output="done", attempt=1)
        assert ended is not None and ended.state == "completed" and ended.output == "done"
        assert await p.lifecycle.finalize(sub.execution_id, "completed", output="done", attempt=1) is None
        projection = Projection(p.lifecycle)
        await projection.start()
        try:
            await _applied(projection, 1)
        finally:
            await projection.stop()
        async with p.store.begin() as conn:
            task = await tasks.get(conn, sub.execution_id)
            calls = await plans.of_execution(conn, sub.execution_id, tenant_id="tenant-a")
        assert task is not None and task.state == "completed" and task.output == "done"
        assert [c.kind for c in calls] == ["execution"]
        assert projection.projected == 0


async def test_a_submission_withdrawn_after_a_partial_acknowledgement_leaves_no_row(kafka_settings: KafkaSettings, sqlite_url: str) -> None:
    """The queued half acknowledged, the request not: the 503 path's withdrawn snapshot undoes the row."""
    async with parts(kafka_settings, sqlite_url) as p:
        withdrawn, kept = (Submission(tenant_id="tenant-a", agent_id="default", input=text) for text in ("no", "yes"))
        await p.lifecycle.submit([withdrawn])
        await p.lifecycle.request_cancel(withdrawn.execution_id, "tenant-a", terminal_state="cancelled", withdrawn=True)
        await p.lifecycle.submit([kept])
        projection = Projection(p.lifecycle)
        await projection.start()
        try:
            await _applied(projection, 3)
        finally:
            await projection.stop()
        assert await _count(p.store, [withdrawn.execution_id]) == (0, 0)
        assert await _count(p.store, [kept.execution_id]) == (1, 1)
