"""A small versioned migration runner: ordered steps, each applied once, recorded in a table.

Each step is a function of a synchronous SQLAlchemy ``Connection`` (run through ``run_sync``). Step 1
creates the tables as ``tables.py`` defines them at version 1; a later change to ``tables.py`` is a new
step with explicit DDL (``ALTER TABLE`` ...), never an edit of an applied one.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from sqlalchemy import Column, Connection, Float, Integer, MetaData, String, Table, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.orchestrator.store import tables

_meta = MetaData()
schema_version = Table(
    "agentstream_schema_version",
    _meta,
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)


def _v1_initial(conn: Connection) -> None:
    tables.metadata.create_all(conn)


def _v2_service_calls(conn: Connection) -> None:
    tables.service_calls.create(conn, checkfirst=True)


def _v3_task_attempt(conn: Connection) -> None:
    # A store created at version 1 by this code already has the column (step 1 creates today's tables).
    if "attempt" not in {c["name"] for c in inspect(conn).get_columns("tasks")}:
        conn.execute(text("ALTER TABLE tasks ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0"))


MIGRATIONS: list[tuple[int, str, Callable[[Connection], None]]] = [
    (1, "initial: tenants, keys, sessions, messages, tasks, idempotency, batches, deliveries, usage", _v1_initial),
    (2, "service_calls: orchestration plans and delegated jobs", _v2_service_calls),
    (3, "tasks.attempt: the newest started attempt, fencing older attempts' ends", _v3_task_attempt),
]


def _migrate(conn: Connection) -> list[int]:
    if conn.dialect.name == "postgresql":
        # Two replicas starting together: one migrates, the other waits and then finds nothing to do.
        conn.execute(text("SELECT pg_advisory_xact_lock(4242001)"))
    _meta.create_all(conn)
    done = set(conn.execute(select(schema_version.c.version)).scalars())
    applied = []
    for version, name, step in MIGRATIONS:
        if version in done:
            continue
        step(conn)
        conn.execute(schema_version.insert().values(version=version, name=name, applied_at=time.time()))
        applied.append(version)
    return applied


async def migrate(engine: AsyncEngine) -> list[int]:
    """Apply every pending step in one transaction; return the versions applied."""
    async with engine.begin() as conn:
        return await conn.run_sync(_migrate)


def latest_version() -> int:
    return MIGRATIONS[-1][0]
