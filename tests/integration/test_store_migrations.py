"""The store's schema by alembic (SQLite and PostgreSQL): a fresh database reaches ``tables.py``; a
database of the old hand-written runner is upgraded in place; replicas starting together on
PostgreSQL take turns; a column change copies the table on SQLite (batch mode)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, MetaData, String, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from services.orchestrator.store import Store, records, tasks
from services.orchestrator.store import tables as store_tables
from services.orchestrator.store.migrations import (
    LEGACY_REVISIONS,
    MigrationError,
    alembic_config,
    current_revision,
    head,
    include_name,
    legacy_version,
    migrate,
)
from tests.databases import BACKENDS, fresh_database

LEGACY_STEPS = {
    1: "initial: tenants, keys, sessions, messages, tasks, idempotency, batches, deliveries, usage",
    2: "service_calls: orchestration plans and delegated jobs",
    3: "tasks.attempt: the newest started attempt, fencing older attempts' ends",
}


@pytest.fixture(params=BACKENDS)
async def engine(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    async with fresh_database(request.param, tmp_path) as url:
        engine = create_async_engine(url)
        try:
            yield engine
        finally:
            await engine.dispose()


def _every_revision() -> list[str]:
    return [script.revision for script in reversed(list(ScriptDirectory.from_config(alembic_config()).walk_revisions()))]


def _url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


def _columns(conn: Connection, table: str) -> dict[str, Any]:
    return {c["name"]: c for c in inspect(conn).get_columns(table)}


def _schema_diff(conn: Connection) -> list[Any]:
    return list(
        compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True, "include_name": include_name}), store_tables.metadata)
    )


def _legacy_tables(version: int) -> MetaData:
    """The tables the old runner left at ``version``: its step 1 ran ``create_all`` on the tables.py of
    its time, whose session ids held 40 characters, before service_calls (2) and tasks.attempt (3,
    dropped by the caller)."""
    old = MetaData()
    for table in store_tables.metadata.sorted_tables:
        if table.name == "service_calls" and version < 2:
            continue
        copy = table.to_metadata(old)
        if "session_id" in copy.c and table.name in ("tasks", "usage"):
            copy.c.session_id.type = String(40)
    return old


def _make_legacy_store(conn: Connection, version: int) -> None:
    _legacy_tables(version).create_all(conn)
    # What revisions after the old runner added (0005: the history lists' column and indexes).
    for index in ("ix_tasks_tenant_created", "ix_sessions_tenant_created"):
        conn.execute(text(f"DROP INDEX {index}"))
    conn.execute(text("ALTER TABLE tasks DROP COLUMN input_preview"))
    if version < 3:
        conn.execute(text("ALTER TABLE tasks DROP COLUMN attempt"))
    legacy_version.create(conn)
    for step in range(1, version + 1):
        conn.execute(legacy_version.insert().values(version=step, name=LEGACY_STEPS[step], applied_at=time.time()))
    conn.execute(
        text(
            "INSERT INTO tasks (id, kind, origin, tenant_id, session_id, agent_id, priority, state, deadline, created_at, updated_at)"
            " VALUES ('old-task', 'execution', 'api', 't', 's-1', 'default', 'standard', 'completed', 1.0, 1.0, 1.0)"
        )
    )


async def test_a_fresh_database_reaches_the_tables_of_the_code(engine: AsyncEngine) -> None:
    every = _every_revision()
    assert every[:4] == ["0001", "0002", "0003", "0004"]
    assert await migrate(engine) == every
    assert await migrate(engine) == []  # already at the newest revision
    async with engine.connect() as conn:
        assert await conn.run_sync(current_revision) == head()
        assert await conn.run_sync(_schema_diff) == []
        assert not await conn.run_sync(lambda c: inspect(c).has_table(legacy_version.name))  # no table of the old runner


@pytest.mark.parametrize("version", sorted(LEGACY_REVISIONS))
async def test_a_database_of_the_old_runner_is_upgraded_in_place(engine: AsyncEngine, version: int) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_make_legacy_store, version)
    # The store's own start migrates (on SQLite: its pragmas, foreign keys on, BEGIN IMMEDIATE).
    async with Store(_url(engine)) as store, store.begin() as conn:
        old = await tasks.get(conn, "old-task")
        assert old is not None and old.state == "completed" and old.session_id == "s-1" and old.attempt == 0
    async with engine.connect() as conn:
        assert await conn.run_sync(current_revision) == head()
        assert await conn.run_sync(_schema_diff) == []
        assert list((await conn.execute(select(legacy_version.c.version))).scalars()) == list(range(1, version + 1))  # left as it was


async def test_the_old_runners_steps_are_not_applied_again(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_make_legacy_store, 2)
    applied = await migrate(engine)
    assert applied[0] == "0003" and applied[-1] == head()


async def test_an_unknown_version_of_the_old_runner_is_refused(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.run_sync(_make_legacy_store, 3)
        await conn.execute(legacy_version.insert().values(version=9, name="from the future", applied_at=time.time()))
    with pytest.raises(MigrationError, match="version 9"):
        await Store(_url(engine)).start()


async def test_a_revision_this_release_does_not_have_is_refused(engine: AsyncEngine) -> None:
    await migrate(engine)
    async with engine.begin() as conn:
        await conn.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    with pytest.raises(MigrationError, match="f00d"):
        await migrate(engine)


async def test_session_ids_of_the_api_fit_the_store(tmp_path: Path, engine: AsyncEngine) -> None:
    # ExecutionRequest.session_id is an Id of up to 128 characters; PostgreSQL refused more than 40 before
    # revision 0004, which widens the columns (a type change: a table copy on SQLite).
    async with engine.begin() as conn:
        await conn.run_sync(_make_legacy_store, 3)
    session_id = "s" * 128
    async with Store(_url(engine)) as store, store.begin() as conn:
        await tasks.create(
            conn, id="e1", kind="execution", tenant_id="t", agent_id="default", deadline=time.time() + 60, session_id=session_id
        )
        tokens = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
        assert await records.record_usage(conn, execution_id="e1", tenant_id="t", agent_id="default", session_id=session_id, tokens=tokens)
        task = await tasks.get(conn, "e1")
        assert task is not None and task.session_id == session_id
    async with engine.connect() as conn:
        for table in ("tasks", "usage"):
            assert (await conn.run_sync(_columns, table))["session_id"]["type"].length == 128, table
        # the copy on SQLite kept the indexes and the attempt's server default
        assert "0" in str((await conn.run_sync(_columns, "tasks"))["attempt"]["default"])
        indexes = {i["name"] for i in await conn.run_sync(lambda c: inspect(c).get_indexes("tasks"))}
        assert {"ix_tasks_open_deadline", "ix_tasks_tenant_id", "ix_tasks_batch_id"} <= indexes
        assert await conn.run_sync(_schema_diff) == []


async def test_replicas_migrating_together_take_turns(tmp_path: Path) -> None:
    async with fresh_database("postgres", tmp_path) as url:
        engines = [create_async_engine(url) for _ in range(3)]
        try:
            results = await asyncio.gather(*(migrate(e) for e in engines))
            async with engines[0].connect() as conn:
                assert await conn.run_sync(current_revision) == head()
                assert (await conn.execute(text("SELECT count(*) FROM alembic_version"))).scalar() == 1
        finally:
            for e in engines:
                await e.dispose()
    every = _every_revision()
    assert sorted(results, key=len) == [[], [], every]  # one replica migrated, the others found nothing to do


async def test_extra_revisions_run_on_top_of_the_stores(engine: AsyncEngine) -> None:
    # The seam the next issues use to add tables, and proof that a batch ALTER of an existing column
    # runs in the store's transaction on both backends (SQLite has no ALTER COLUMN).
    config = alembic_config(Path(__file__).with_name("migration_scripts"))
    applied = await migrate(engine, config)
    assert applied[-1] == "t001" and head(config) == "t001"
    async with engine.connect() as conn:
        assert (await conn.run_sync(_columns, "tasks"))["custom_id"]["nullable"] is False
