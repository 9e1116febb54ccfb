"""Real databases for tests: a fresh SQLite file or a fresh PostgreSQL database per test, and Redis.

PostgreSQL and Redis come from ``deploy/dev-services.sh`` (``make services``); their addresses from
AGENTSTREAM_TEST_POSTGRES_URL (an asyncpg URL of a server where we may CREATE DATABASE) and
AGENTSTREAM_TEST_REDIS_URL.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

POSTGRES_URL = os.environ.get("AGENTSTREAM_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:55432/postgres")
REDIS_URL = os.environ.get("AGENTSTREAM_TEST_REDIS_URL", "redis://127.0.0.1:56379/0")
BACKENDS = ("sqlite", "postgres")


@contextlib.asynccontextmanager
async def fresh_database(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """Yield a SQLAlchemy URL of an empty database; drop it afterwards."""
    if backend == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
        return
    name = f"t_{uuid.uuid4().hex[:12]}"
    try:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
    except (OSError, asyncpg.PostgresError) as exc:
        raise RuntimeError(f"PostgreSQL is not reachable at {POSTGRES_URL}: run `make services` ({exc})") from exc
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    base = POSTGRES_URL.rsplit("/", 1)[0]
    try:
        yield f"{base.replace('postgresql://', 'postgresql+asyncpg://', 1)}/{name}"
    finally:
        admin = await asyncpg.connect(POSTGRES_URL, timeout=5)
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
