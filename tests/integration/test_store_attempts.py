"""Tasks remember the newest started attempt, and an older attempt's end does not finish them
(SQLite and PostgreSQL); revision 0003 adds the column to a store made before it."""

from __future__ import annotations

import time

from sqlalchemy import text

from services.orchestrator.store import Store, tasks
from services.orchestrator.store.migrations import migrate


async def test_an_older_attempts_end_does_not_finish_the_task(store: Store) -> None:
    async with store.begin() as conn:
        await tasks.create(conn, id="e1", kind="execution", tenant_id="t", agent_id="default", deadline=time.time() + 60)
        assert await tasks.mark_running(conn, "e1", attempt=1)
        await tasks.mark_running(conn, "e1", attempt=3)
        await tasks.mark_running(conn, "e1", attempt=2)  # late: never lowers it
        task = await tasks.get(conn, "e1")
        assert task is not None and task.attempt == 3
        assert await tasks.finish(conn, "e1", "completed", output="zombie", attempt=2) is None
        done = await tasks.finish(conn, "e1", "completed", output="new", attempt=3)
        assert done is not None and done.output == "new"


async def test_an_orchestrator_verdict_ends_whichever_attempt_runs(store: Store) -> None:
    async with store.begin() as conn:
        await tasks.create(conn, id="e2", kind="execution", tenant_id="t", agent_id="default", deadline=time.time() + 60)
        await tasks.mark_running(conn, "e2", attempt=4)
        done = await tasks.finish(conn, "e2", "timed_out", error="deadline passed")
        assert done is not None and done.state == "timed_out"


async def test_revision_0003_adds_the_attempt_column_to_an_older_store(store: Store) -> None:
    async with store.begin() as conn:
        await conn.execute(text("ALTER TABLE tasks DROP COLUMN attempt"))
        # and what revisions after 0003 add (0005: the history lists' column and indexes)
        for index in ("ix_tasks_tenant_created", "ix_sessions_tenant_created"):
            await conn.execute(text(f"DROP INDEX {index}"))
        await conn.execute(text("ALTER TABLE tasks DROP COLUMN input_preview"))
        await conn.execute(text("UPDATE alembic_version SET version_num = '0002'"))
    assert (await migrate(store.engine))[0] == "0003"
    async with store.begin() as conn:
        await tasks.create(conn, id="e3", kind="execution", tenant_id="t", agent_id="default", deadline=time.time() + 60)
        task = await tasks.get(conn, "e3")
        assert task is not None and task.attempt == 0
