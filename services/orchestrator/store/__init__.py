"""The orchestrator's state store: SQLite (embedded default, aiosqlite) or PostgreSQL (asyncpg).

One code path through SQLAlchemy 2 Core (async); the URL picks the backend. Repositories are
modules of plain async functions taking an ``AsyncConnection``, so a caller composes several of
them in one transaction (``async with store.begin() as conn``): nothing is half-written.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import Table, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from services.common.errors import AgentstreamError
from services.orchestrator.store.migrations import migrate


class StoreError(AgentstreamError):
    """The state store failed (unreachable, locked): the request can be retried."""

    retriable = True


class Store:
    def __init__(self, url: str, *, connect_args: Mapping[str, Any] | None = None, pool_size: int = 10) -> None:
        self.url = url
        self._connect_args = dict(connect_args or {})
        self._pool_size = pool_size
        self._engine: AsyncEngine | None = None
        # SQLite only: this process's transactions queue here (FIFO, no sleeping) instead of in
        # busy_timeout's backoff, which sleeps up to 100 ms per retry under contention (docs/performance.md).
        self._sqlite_lock: asyncio.Lock | None = None
        self._lock_owner: asyncio.Task[Any] | None = None

    @property
    def engine(self) -> AsyncEngine:
        if self._engine is None:
            raise StoreError("the state store is not started")
        return self._engine

    @property
    def backend(self) -> str:
        return self.engine.dialect.name

    async def start(self) -> None:
        if self._engine is not None:
            return
        url = make_url(self.url)
        if url.get_backend_name() == "sqlite":
            if url.database and url.database != ":memory:":
                Path(url.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_async_engine(url, connect_args={"timeout": 30, **self._connect_args})
            _sqlite_immediate_transactions(engine)
            self._sqlite_lock = asyncio.Lock()
        else:
            engine = create_async_engine(
                url, connect_args=self._connect_args, pool_size=self._pool_size, max_overflow=self._pool_size, pool_pre_ping=True
            )
        try:
            await migrate(engine)
        except (SQLAlchemyError, OSError) as exc:
            await engine.dispose()
            raise StoreError(f"cannot open the state store at {url.render_as_string(hide_password=True)}: {exc}") from exc
        except BaseException:  # a schema this release does not know (MigrationError), a cancelled start
            await engine.dispose()
            raise
        self._engine = engine

    async def stop(self) -> None:
        if self._engine is not None:
            engine, self._engine = self._engine, None
            await engine.dispose()

    async def __aenter__(self) -> Store:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @contextlib.asynccontextmanager
    async def begin(self) -> AsyncIterator[AsyncConnection]:
        """One transaction: committed when the block ends, rolled back when it raises."""
        lock, me = self._sqlite_lock, asyncio.current_task()
        if lock is None or self._lock_owner is me:  # PostgreSQL, or a transaction nested in this task's own
            async with self.engine.begin() as conn:
                yield conn
            return
        async with lock:
            self._lock_owner = me
            try:
                async with self.engine.begin() as conn:
                    yield conn
            finally:
                self._lock_owner = None


def _sqlite_immediate_transactions(engine: AsyncEngine) -> None:
    # SQLite: take the write lock at BEGIN, so two concurrent transactions queue on busy_timeout
    # instead of failing when a reader tries to upgrade to a writer; WAL lets readers run meanwhile.
    @event.listens_for(engine.sync_engine, "connect")
    def _connect(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")  # WAL: durable across process crashes, no fsync per commit
        cursor.execute("PRAGMA busy_timeout=30000")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


async def insert_ignore(conn: AsyncConnection, table: Table, values: dict[str, Any], keys: Sequence[str]) -> bool:
    """INSERT ... ON CONFLICT DO NOTHING on either backend; True if a row was inserted."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(table).values(**values).on_conflict_do_nothing(index_elements=list(keys))
    result = await conn.execute(stmt)
    return bool(result.rowcount)


__all__ = ["Store", "StoreError", "insert_ignore"]
