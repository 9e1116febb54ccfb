"""The state store's schema, migrated by alembic when the store starts: no alembic.ini, no CLI step.

The revisions live in ``revisions/versions`` (one per schema change, never an edit of an applied
one); ``revisions/env.py`` configures the context (``render_as_batch``: a column change is
``op.batch_alter_table``, which copies the table on SQLite and is ``ALTER TABLE`` on PostgreSQL).

Everything runs in one transaction. On PostgreSQL an advisory lock held to its end makes replicas that
start together take turns: the first migrates, the others then find nothing to do.

A database made by the hand-written runner this replaced has its ``agentstream_schema_version`` table
and no ``alembic_version``: it is stamped at the revision of its newest step, then upgraded. That table
is left as it was (read, never written).
"""

from __future__ import annotations

import os
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from alembic.util import CommandError
from sqlalchemy import Column, Connection, Float, Integer, MetaData, String, Table, inspect, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.errors import AgentstreamError

REVISIONS = Path(__file__).with_name("revisions")
_ADVISORY_LOCK = 4242001  # the old runner's key: an old and a new replica starting together also take turns

# The old runner's version table, and the revision whose schema each of its steps left.
legacy_version = Table(
    "agentstream_schema_version",
    MetaData(),
    Column("version", Integer, primary_key=True),
    Column("name", String(200), nullable=False),
    Column("applied_at", Float, nullable=False),
)
LEGACY_REVISIONS = {1: "0001", 2: "0002", 3: "0003"}


def include_name(name: str | None, type_: str, parent_names: object) -> bool:
    """What autogenerate compares: not the old runner's table, which stays (so an older release still starts)."""
    return not (type_ == "table" and name == legacy_version.name)


class MigrationError(AgentstreamError):
    """The store's schema is not one these revisions know (e.g. made by a newer release)."""

    retriable = False


def alembic_config(*extra_version_locations: str | Path) -> Config:
    """The configuration built in code; ``extra_version_locations`` add revisions on top of ours."""
    config = Config()
    config.set_main_option("script_location", str(REVISIONS))
    config.set_main_option("path_separator", "os")
    locations = [REVISIONS / "versions", *extra_version_locations]
    config.set_main_option("version_locations", os.pathsep.join(str(p) for p in locations))
    return config


def head(config: Config | None = None) -> str:
    found = ScriptDirectory.from_config(config or alembic_config()).get_current_head()
    if found is None:
        raise MigrationError("no revisions found")
    return found


def current_revision(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _legacy_revision(conn: Connection) -> str | None:
    if not inspect(conn).has_table(legacy_version.name):
        return None
    newest = conn.execute(select(legacy_version.c.version).order_by(legacy_version.c.version.desc()).limit(1)).scalar()
    if newest is None:
        return None
    if newest not in LEGACY_REVISIONS:
        raise MigrationError(f"the state store is at version {newest} of the old migration runner, which this release does not know")
    return LEGACY_REVISIONS[newest]


def _migrate(conn: Connection, config: Config) -> list[str]:
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_advisory_xact_lock({_ADVISORY_LOCK})"))
    config.attributes["connection"] = conn
    try:
        if current_revision(conn) is None and (legacy := _legacy_revision(conn)) is not None:
            command.stamp(config, legacy)
        config.attributes["applied"] = []
        command.upgrade(config, "head")
    except CommandError as exc:  # e.g. stamped by a newer release at a revision this one does not have
        raise MigrationError(f"cannot migrate the state store: {exc}") from exc
    applied: list[str] = config.attributes["applied"]
    return applied


async def migrate(engine: AsyncEngine, config: Config | None = None) -> list[str]:
    """Bring the schema to the newest revision in one transaction; return the revisions applied."""
    async with engine.begin() as conn:
        return await conn.run_sync(_migrate, config or alembic_config())
