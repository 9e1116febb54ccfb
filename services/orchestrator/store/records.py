"""Idempotency keys, usage, batches and callback deliveries."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from schemas.api import DeliveryState
from schemas.topics import Priority
from services.orchestrator.store import insert_ignore
from services.orchestrator.store.tables import batches, deliveries, idempotency, usage

# -- idempotency ------------------------------------------------------------------------------


@dataclass(frozen=True)
class IdempotencyRecord:
    request_hash: str
    status_code: int | None
    response: Any
    created_at: float


async def claim_idempotency_key(conn: AsyncConnection, tenant_id: str, key: str, request_hash: str) -> IdempotencyRecord | None:
    """Reserve the key for this request; None if reserved now, else the record that holds it."""
    values = {"tenant_id": tenant_id, "key": key, "request_hash": request_hash, "created_at": time.time()}
    if await insert_ignore(conn, idempotency, values, ["tenant_id", "key"]):
        return None
    row = (await conn.execute(select(idempotency).where(idempotency.c.tenant_id == tenant_id, idempotency.c.key == key))).one()
    return IdempotencyRecord(row.request_hash, row.status_code, row.response, row.created_at)


async def complete_idempotency_key(conn: AsyncConnection, tenant_id: str, key: str, status_code: int, response: Any) -> None:
    await conn.execute(
        update(idempotency)
        .where(idempotency.c.tenant_id == tenant_id, idempotency.c.key == key)
        .values(status_code=status_code, response=response)
    )


async def release_idempotency_key(conn: AsyncConnection, tenant_id: str, key: str, *, only_older_than: float | None = None) -> None:
    query = idempotency.delete().where(idempotency.c.tenant_id == tenant_id, idempotency.c.key == key, idempotency.c.status_code.is_(None))
    if only_older_than is not None:
        query = query.where(idempotency.c.created_at < only_older_than)
    await conn.execute(query)


# -- usage ------------------------------------------------------------------------------------


async def record_usage(
    conn: AsyncConnection, *, execution_id: str, tenant_id: str, agent_id: str, session_id: str | None, tokens: dict[str, int]
) -> bool:
    values = {
        "execution_id": execution_id,
        "tenant_id": tenant_id,
        "agent_id": agent_id,
        "session_id": session_id,
        "prompt_tokens": int(tokens.get("prompt_tokens", 0)),
        "completion_tokens": int(tokens.get("completion_tokens", 0)),
        "total_tokens": int(tokens.get("total_tokens", 0)),
        "ts": time.time(),
    }
    return await insert_ignore(conn, usage, values, ["execution_id"])


USAGE_GROUPS = ("tenant", "agent", "session")


async def usage_report(
    conn: AsyncConnection,
    tenant_id: str,
    *,
    group_by: str,
    since: float | None,
    until: float | None,
    agent_id: str | None,
    session_id: str | None,
) -> list[dict[str, Any]]:
    column = {"tenant": usage.c.tenant_id, "agent": usage.c.agent_id, "session": usage.c.session_id}[group_by]
    query = select(
        column.label("key"),
        func.count().label("executions"),
        func.sum(usage.c.prompt_tokens).label("prompt_tokens"),
        func.sum(usage.c.completion_tokens).label("completion_tokens"),
        func.sum(usage.c.total_tokens).label("total_tokens"),
    ).where(usage.c.tenant_id == tenant_id)
    if since is not None:
        query = query.where(usage.c.ts >= since)
    if until is not None:
        query = query.where(usage.c.ts < until)
    if agent_id is not None:
        query = query.where(usage.c.agent_id == agent_id)
    if session_id is not None:
        query = query.where(usage.c.session_id == session_id)
    rows = await conn.execute(query.group_by(column).order_by(column))
    return [
        {
            group_by: r.key,
            "executions": int(r.executions),
            "prompt_tokens": int(r.prompt_tokens or 0),
            "completion_tokens": int(r.completion_tokens or 0),
            "total_tokens": int(r.total_tokens or 0),
        }
        for r in rows
    ]


# -- batches ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Batch:
    id: str
    tenant_id: str
    priority: Priority
    total: int
    callback_url: str | None
    completed_at: float | None
    created_at: float


async def create_batch(conn: AsyncConnection, *, id: str, tenant_id: str, priority: str, total: int, callback_url: str | None) -> None:
    await conn.execute(
        batches.insert().values(
            id=id, tenant_id=tenant_id, priority=priority, total=total, callback_url=callback_url, created_at=time.time()
        )
    )


async def get_batch(conn: AsyncConnection, batch_id: str, *, tenant_id: str) -> Batch | None:
    row = (await conn.execute(select(batches).where(batches.c.id == batch_id, batches.c.tenant_id == tenant_id))).first()
    return Batch(**{c.name: getattr(row, c.name) for c in batches.columns}) if row else None


async def complete_batch(conn: AsyncConnection, batch_id: str) -> bool:
    result = await conn.execute(
        update(batches).where(batches.c.id == batch_id, batches.c.completed_at.is_(None)).values(completed_at=time.time())
    )
    return bool(result.rowcount)


async def delete_batch(conn: AsyncConnection, batch_id: str) -> None:
    await conn.execute(batches.delete().where(batches.c.id == batch_id))


# -- callback deliveries ----------------------------------------------------------------------


@dataclass(frozen=True)
class Delivery:
    id: str
    tenant_id: str
    target_kind: str
    target_id: str
    url: str
    payload: dict[str, Any]
    state: DeliveryState
    attempts: int
    next_attempt_at: float
    last_status: int | None
    last_error: str | None
    created_at: float
    updated_at: float


def _delivery(row: Any) -> Delivery:
    return Delivery(**{c.name: getattr(row, c.name) for c in deliveries.columns})


async def enqueue_delivery(
    conn: AsyncConnection, *, id: str, tenant_id: str, target_kind: str, target_id: str, url: str, payload: dict[str, Any]
) -> None:
    now = time.time()
    await conn.execute(
        deliveries.insert().values(
            id=id,
            tenant_id=tenant_id,
            target_kind=target_kind,
            target_id=target_id,
            url=url,
            payload=payload,
            state="pending",
            attempts=0,
            next_attempt_at=now,
            created_at=now,
            updated_at=now,
        )
    )


async def get_delivery(conn: AsyncConnection, delivery_id: str) -> Delivery | None:
    row = (await conn.execute(select(deliveries).where(deliveries.c.id == delivery_id))).first()
    return _delivery(row) if row is not None else None


async def due_deliveries(conn: AsyncConnection, *, now: float, limit: int = 50) -> list[Delivery]:
    query = (
        select(deliveries)
        .where(deliveries.c.state == "pending", deliveries.c.next_attempt_at <= now)
        .order_by(deliveries.c.next_attempt_at)
        .limit(limit)
    )
    return [_delivery(r) for r in await conn.execute(query)]


async def next_delivery_at(conn: AsyncConnection) -> float | None:
    """When the earliest pending delivery falls due (its next attempt, or its lease's end); None if none."""
    query = select(func.min(deliveries.c.next_attempt_at)).where(deliveries.c.state == "pending")
    return cast("float | None", (await conn.execute(query)).scalar())


async def lease_delivery(conn: AsyncConnection, delivery: Delivery, *, until: float) -> bool:
    """Take a due delivery for one attempt (a replica that loses the race skips it)."""
    result = await conn.execute(
        update(deliveries)
        .where(deliveries.c.id == delivery.id, deliveries.c.state == "pending", deliveries.c.attempts == delivery.attempts)
        .values(attempts=delivery.attempts + 1, next_attempt_at=until, updated_at=time.time())
    )
    return bool(result.rowcount)


async def settle_delivery(
    conn: AsyncConnection, delivery_id: str, *, state: str, status: int | None, error: str | None, next_attempt_at: float | None = None
) -> None:
    values: dict[str, Any] = {"state": state, "last_status": status, "last_error": error, "updated_at": time.time()}
    if next_attempt_at is not None:
        values["next_attempt_at"] = next_attempt_at
    await conn.execute(update(deliveries).where(deliveries.c.id == delivery_id).values(**values))


async def deliveries_of(conn: AsyncConnection, target_id: str, *, tenant_id: str) -> list[Delivery]:
    query = (
        select(deliveries).where(deliveries.c.target_id == target_id, deliveries.c.tenant_id == tenant_id).order_by(deliveries.c.created_at)
    )
    return [_delivery(r) for r in await conn.execute(query)]
