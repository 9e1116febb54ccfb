"""The state store on SQLite and PostgreSQL: same code, same behaviour."""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select

from services.orchestrator.store import Store, records, sessions, tasks, tenants
from services.orchestrator.store.migrations import current_revision, head, migrate
from services.orchestrator.store.tables import api_keys


async def test_migrations_are_recorded_and_idempotent(store: Store) -> None:
    assert await migrate(store.engine) == []  # already at the latest version
    async with store.begin() as conn:
        assert await conn.run_sync(current_revision) == head()


async def test_keys_are_stored_hashed_and_revocable(store: Store) -> None:
    async with store.begin() as conn:
        tenant = await tenants.create_tenant(conn, "acme", name="Acme", limits={"requests_per_minute": 5})
        assert tenant is not None and tenant.webhook_secret.startswith("whsec_")
        assert await tenants.create_tenant(conn, "acme") is None  # taken
        key, secret = await tenants.create_key(conn, "acme", name="ci")
    async with store.begin() as conn:
        stored = (await conn.execute(select(api_keys.c.key_hash, api_keys.c.prefix))).one()
        assert secret not in stored.key_hash and stored.key_hash == tenants.hash_key(secret)
        found = await tenants.tenant_for_key(conn, secret)
        assert found is not None and found.id == "acme" and found.limits == {"requests_per_minute": 5}
        assert await tenants.tenant_for_key(conn, secret + "x") is None
        revoked = await tenants.revoke_key(conn, key.id)
        assert revoked is not None and revoked.revoked_at is not None
        assert await tenants.revoke_key(conn, key.id) == revoked  # twice is harmless
        assert await tenants.tenant_for_key(conn, secret) is None
        assert await tenants.revoke_key(conn, "key_nope") is None


async def test_finish_applies_once_under_races(store: Store) -> None:
    async with store.begin() as conn:
        await tasks.create(conn, id="e1", kind="execution", tenant_id="t", agent_id="default", deadline=0.0)

    async def finish(state: str) -> bool:
        async with store.begin() as conn:
            return await tasks.finish(conn, "e1", state) is not None

    results = await asyncio.gather(*(finish(s) for s in ("completed", "cancelled", "timed_out", "failed") * 3))
    assert sum(results) == 1
    async with store.begin() as conn:
        assert (await tasks.expired(conn, now=10.0)) == []


async def test_idempotency_key_reserve_replay_release(store: Store) -> None:
    async with store.begin() as conn:
        assert await records.claim_idempotency_key(conn, "t", "k1", "h1") is None
        held = await records.claim_idempotency_key(conn, "t", "k1", "h2")
        assert held is not None and held.request_hash == "h1" and held.status_code is None
        assert await records.claim_idempotency_key(conn, "other-tenant", "k1", "h2") is None  # keys are per tenant
        await records.complete_idempotency_key(conn, "t", "k1", 202, {"execution_id": "x"})
        held = await records.claim_idempotency_key(conn, "t", "k1", "h1")
        assert held is not None and held.status_code == 202 and held.response == {"execution_id": "x"}
        await records.release_idempotency_key(conn, "t", "k1")  # completed ones are kept
        assert await records.claim_idempotency_key(conn, "t", "k1", "h1") is not None


async def test_session_history_and_failed_transaction_leaves_nothing(store: Store) -> None:
    async with store.begin() as conn:
        await sessions.create(conn, id="s1", tenant_id="t", agent_id="default", policy="reject", metadata={})
        await sessions.append(conn, "s1", role="user", content="hi")
    with pytest.raises(RuntimeError):
        async with store.begin() as conn:
            await sessions.append(conn, "s1", role="assistant", content="half")
            raise RuntimeError("crash in the middle")
    async with store.begin() as conn:
        history = await sessions.history(conn, "s1")
        assert [(m.seq, m.role, m.content) for m in history] == [(1, "user", "hi")]
        assert await sessions.get(conn, "s1", tenant_id="someone-else") is None
        assert await sessions.claim(conn, "s1", "e1", expect_active=None)
        assert not await sessions.claim(conn, "s1", "e2", expect_active=None)
        assert not await sessions.release(conn, "s1", "e2")
        assert await sessions.release(conn, "s1", "e1")


async def test_usage_recorded_once_and_grouped(store: Store) -> None:
    async with store.begin() as conn:
        for eid, agent in (("e1", "a"), ("e2", "a"), ("e3", "b")):
            tokens = {"prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3}
            assert await records.record_usage(conn, execution_id=eid, tenant_id="t", agent_id=agent, session_id=None, tokens=tokens)
        assert not await records.record_usage(conn, execution_id="e1", tenant_id="t", agent_id="a", session_id=None, tokens=tokens)
        rows = await records.usage_report(conn, "t", group_by="agent", since=None, until=None, agent_id=None, session_id=None)
    assert rows == [
        {"agent": "a", "executions": 2, "prompt_tokens": 2, "completion_tokens": 4, "total_tokens": 6},
        {"agent": "b", "executions": 1, "prompt_tokens": 1, "completion_tokens": 2, "total_tokens": 3},
    ]
