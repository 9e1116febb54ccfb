"""Sessions and their message history."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.api import SessionPolicy, SessionRunState
from schemas.events import Role
from services.orchestrator.store.tables import messages, sessions


@dataclass(frozen=True)
class Session:
    id: str
    tenant_id: str
    agent_id: str
    policy: SessionPolicy
    state: SessionRunState
    active_execution_id: str | None
    metadata: dict[str, Any]
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class StoredMessage:
    id: int
    session_id: str
    seq: int
    role: Role
    content: str
    name: str | None
    tool_calls: list[dict[str, Any]] | None
    execution_id: str | None
    status: str
    created_at: float


def _session(row: Any) -> Session:
    return Session(**{c.name: getattr(row, c.name) for c in sessions.columns})


def _message(row: Any) -> StoredMessage:
    return StoredMessage(**{c.name: getattr(row, c.name) for c in messages.columns})


async def create(
    conn: AsyncConnection, *, id: str, tenant_id: str, agent_id: str, policy: SessionPolicy, metadata: dict[str, Any]
) -> Session:
    now = time.time()
    await conn.execute(
        sessions.insert().values(
            id=id,
            tenant_id=tenant_id,
            agent_id=agent_id,
            policy=policy,
            state="idle",
            active_execution_id=None,
            metadata=metadata,
            created_at=now,
            updated_at=now,
        )
    )
    return Session(id, tenant_id, agent_id, policy, "idle", None, metadata, now, now)


async def get(conn: AsyncConnection, session_id: str, *, tenant_id: str) -> Session | None:
    row = (await conn.execute(select(sessions).where(sessions.c.id == session_id, sessions.c.tenant_id == tenant_id))).first()
    return _session(row) if row else None


async def page(
    conn: AsyncConnection, tenant_id: str, *, agent_id: str | None, limit: int, after: tuple[float, str] | None = None
) -> list[Session]:
    """A tenant's sessions, newest first (``created_at``, then ``id``, descending), after the key ``after``."""
    query = select(sessions).where(sessions.c.tenant_id == tenant_id)
    if agent_id is not None:
        query = query.where(sessions.c.agent_id == agent_id)
    if after is not None:
        query = query.where(or_(sessions.c.created_at < after[0], and_(sessions.c.created_at == after[0], sessions.c.id < after[1])))
    query = query.order_by(sessions.c.created_at.desc(), sessions.c.id.desc()).limit(limit)
    return [_session(r) for r in await conn.execute(query)]


async def claim(conn: AsyncConnection, session_id: str, execution_id: str, *, expect_active: str | None) -> bool:
    """Make ``execution_id`` the session's running execution if the session is as the caller saw it."""
    where = [sessions.c.id == session_id]
    where.append(sessions.c.active_execution_id.is_(None) if expect_active is None else sessions.c.active_execution_id == expect_active)
    result = await conn.execute(
        update(sessions).where(*where).values(state="running", active_execution_id=execution_id, updated_at=time.time())
    )
    return bool(result.rowcount)


async def release(conn: AsyncConnection, session_id: str, execution_id: str) -> bool:
    """The session's running execution ended: idle again (only if it still is that execution)."""
    result = await conn.execute(
        update(sessions)
        .where(sessions.c.id == session_id, sessions.c.active_execution_id == execution_id)
        .values(state="idle", active_execution_id=None, updated_at=time.time())
    )
    return bool(result.rowcount)


async def set_agent(conn: AsyncConnection, session_id: str, agent_id: str) -> bool:
    """A handoff (issue 20) made ``agent_id`` the session's agent: its next message runs it."""
    result = await conn.execute(update(sessions).where(sessions.c.id == session_id).values(agent_id=agent_id, updated_at=time.time()))
    return bool(result.rowcount)


async def append(
    conn: AsyncConnection,
    session_id: str,
    *,
    role: str,
    content: str,
    execution_id: str | None = None,
    name: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    status: str = "done",
) -> StoredMessage:
    # (session_id, seq) is unique: two concurrent appends cannot take the same place; one fails and rolls back.
    seq = (await conn.execute(select(func.coalesce(func.max(messages.c.seq), 0)).where(messages.c.session_id == session_id))).scalar_one()
    now = time.time()
    values = {
        "session_id": session_id,
        "seq": seq + 1,
        "role": role,
        "content": content,
        "name": name,
        "tool_calls": tool_calls,
        "execution_id": execution_id,
        "status": status,
        "created_at": now,
    }
    result = await conn.execute(messages.insert().values(**values))
    return StoredMessage(id=result.inserted_primary_key[0], **values)  # type: ignore[index]  # SQLAlchemy types inserted_primary_key as Optional; an INSERT has one


async def history(
    conn: AsyncConnection, session_id: str, *, after: int = 0, limit: int = 1000, done_only: bool = False
) -> list[StoredMessage]:
    query = select(messages).where(messages.c.session_id == session_id, messages.c.seq > after)
    if done_only:
        query = query.where(messages.c.status == "done")
    return [_message(r) for r in await conn.execute(query.order_by(messages.c.seq).limit(limit))]


async def next_pending(conn: AsyncConnection, session_id: str) -> StoredMessage | None:
    query = select(messages).where(messages.c.session_id == session_id, messages.c.status == "pending").order_by(messages.c.seq).limit(1)
    row = (await conn.execute(query)).first()
    return _message(row) if row else None


async def promote(conn: AsyncConnection, message: StoredMessage, execution_id: str) -> None:
    """An enqueued message starts: it moves to the end of the history (after the answer it waited for)."""
    last = (
        await conn.execute(select(func.coalesce(func.max(messages.c.seq), 0)).where(messages.c.session_id == message.session_id))
    ).scalar_one()
    await conn.execute(update(messages).where(messages.c.id == message.id).values(status="done", execution_id=execution_id, seq=last + 1))


async def delete_message(conn: AsyncConnection, message_id: int) -> None:
    await conn.execute(messages.delete().where(messages.c.id == message_id))


async def delete_idle(conn: AsyncConnection, session_id: str, *, tenant_id: str) -> bool:
    """Delete a session of the tenant and its messages unless an execution runs in it (False then; the
    caller rolls back). A message claiming the session at the same moment either comes first (the
    session is running: False) or finds no session (its claim fails: a 409 for it)."""
    idle = (sessions.c.id == session_id, sessions.c.tenant_id == tenant_id, sessions.c.active_execution_id.is_(None))
    await conn.execute(messages.delete().where(messages.c.session_id.in_(select(sessions.c.id).where(*idle))))
    result = await conn.execute(sessions.delete().where(*idle))
    return bool(result.rowcount)


async def delete(conn: AsyncConnection, session_id: str) -> None:
    """A session and its messages (one made for a request that was then refused)."""
    await conn.execute(messages.delete().where(messages.c.session_id == session_id))
    await conn.execute(sessions.delete().where(sessions.c.id == session_id))
