"""Values bounded where they enter, on the real app (loopback, real Kafka): odd input is a 4xx with the
reason, or an error frame on a connection that stays open; never a 500, never a dead bridge."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import orjson
import pytest
import websockets

from services.orchestrator.store import Store, tenants
from services.orchestrator.store import sessions as sessions_repo
from services.orchestrator.store import tasks as tasks_repo
from services.orchestrator.store.tables import sessions as sessions_table
from tests.e2e.orchestrator.conftest import ADMIN, SERVICE_TOKEN, Launcher, Orch

pytestmark = pytest.mark.kafka

TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def _recv(ws: Any, timeout: float = 10) -> dict[str, Any]:
    return dict(orjson.loads(await asyncio.wait_for(ws.recv(), timeout)))


async def _sse_events(orch: Orch, execution_id: str, timeout: float = 30) -> list[str]:
    types: list[str] = []
    async with (
        asyncio.timeout(timeout),
        orch.http.stream("GET", f"/v1/executions/{execution_id}/events", headers={"Authorization": "Bearer key-a"}) as r,
    ):
        assert r.status_code == 200
        async for line in r.aiter_lines():
            if line.startswith("event: "):
                types.append(line[7:])
                if line[7:] in TERMINAL or line[7:] == "end":
                    return types
    return types


async def test_deep_variables_are_a_422_on_executions_sessions_chat_and_batches(launch: Launcher, sqlite_url: str) -> None:
    # Today 220 levels get a 202 (the executor then refuses the record: queued until the sweep), 300 a 500.
    async with launch(sqlite_url, executor=False) as orch:
        session_id = (await orch.post("/v1/sessions", {})).json()["session_id"]
        for depth in (220, 300):
            deep = {"x": nested(depth)}
            for path, body in [
                ("/v1/executions", {"input": "hi", "variables": deep}),
                ("/v1/sessions", {"metadata": deep}),
                (f"/v1/sessions/{session_id}/chat", {"content": "hi", "variables": deep}),
                ("/v1/batches", {"items": [{"input": "hi", "variables": deep}]}),
            ]:
                for headers in ({}, {"Idempotency-Key": f"k-{path}-{depth}"}):  # the key's fingerprint re-encodes the body
                    r = await orch.post(path, body, headers=headers)
                    assert r.status_code == 422, (path, depth, headers, r.status_code, r.text[:300])
                    assert "nested deeper than 32" in r.text, r.text[:300]
        assert (await orch.post("/v1/executions", {"input": "hi", "variables": {"x": nested(30)}})).status_code == 202


async def test_out_of_range_query_parameters_are_a_400_with_the_reason(launch: Launcher, database_url: str) -> None:
    async with launch(database_url, executor=False) as orch:
        for since in ("1e20", "inf", "nan", "-inf", "-1e20", "1e309"):
            r = await orch.get("/v1/usage", since=since)
            assert r.status_code == 400 and "since" in r.json()["error"], (since, r.status_code, r.text)
        assert (await orch.get("/v1/usage", until="1e20")).status_code == 400
        assert (await orch.get("/v1/usage", since="0", until="1700000000")).status_code == 200
        session_id = (await orch.post("/v1/sessions", {})).json()["session_id"]
        path = f"/v1/sessions/{session_id}/messages"
        for after in ("9223372036854775808", "2147483648", "99999999999999999999999", "-1"):
            r = await orch.get(path, after=after)
            assert r.status_code == 400 and "after" in r.json()["error"], (after, r.status_code, r.text)
        assert (await orch.get(path, limit="0")).status_code == 400
        assert (await orch.get(path, after="2147483647")).json()["messages"] == []


async def test_huge_cursors_are_a_400_and_the_bridge_keeps_streaming(launch: Launcher, sqlite_url: str) -> None:
    # Today Last-Event-ID 99999999999999999999 is taken: when the execution's end arrives, orjson cannot
    # write that cursor into the "end" frame (TypeError: Integer exceeds 64-bit range) and the bridge's
    # tail task dies, freezing every tenant's live streams.
    async with launch(sqlite_url, executor=True) as orch:
        execution_id = (await orch.post("/v1/executions", {"input": "what is 6*7?"})).json()["execution_id"]
        for cursor in ("99999999999999999999", "9223372036854775808", "-2", "1e3", "x"):
            r = await orch.http.get(
                f"/v1/executions/{execution_id}/events", headers={"Authorization": "Bearer key-a", "Last-Event-ID": cursor}
            )
            assert r.status_code == 400 and "cursor" in r.json()["error"], (cursor, r.status_code, r.text)
        r = await orch.http.get(
            f"/v1/executions/{execution_id}/events?cursor=99999999999999999999", headers={"Authorization": "Bearer key-a"}
        )
        assert r.status_code == 400
        async with websockets.connect(f"{orch.ws_url}/v1/stream?api_key=key-a") as ws:
            odd_cursors: list[Any] = [2**63, 2**64 - 1, -2, "12", 1.5]
            for cursor in odd_cursors:
                await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id, "cursor": cursor}).decode())
                reply = await _recv(ws)
                assert reply["type"] == "error" and reply["code"] == 400 and "cursor" in reply["error"], (cursor, reply)
        # The tail still delivers: a new execution streams to its end.
        later = (await orch.post("/v1/executions", {"input": "what is 1+1?"})).json()["execution_id"]
        assert (await _sse_events(orch, later))[-1] == "execution.completed"


async def test_stream_websocket_answers_odd_frames_and_stays_open(launch: Launcher, sqlite_url: str) -> None:
    # Today a binary frame raises KeyError in receive_text(): the connection drops without a close frame.
    async with launch(sqlite_url, executor=True) as orch:
        execution_id = (await orch.post("/v1/executions", {"input": "what is 6*7?"})).json()["execution_id"]
        async with websockets.connect(f"{orch.ws_url}/v1/stream?api_key=key-a") as ws:
            odd: list[str | bytes] = [
                b"\x00\xff binary",
                b'{"type": "subscribe"}',
                "[]",
                "null",
                "42",
                "{not json",
                '{"type": ["subscribe"]}',
                '{"type": "subscribe", "execution_id": {"a": 1}}',
                '{"type": "subscribe", "execution_id": "' + "x" * 500 + '"}',
                '{"type": "subscribe", "session_id": "bad id with spaces"}',
            ]
            for frame in odd:
                await ws.send(frame)
                reply = await _recv(ws)
                assert reply["type"] == "error", (frame[:60], reply)
            await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
            assert (await _recv(ws))["type"] == "subscribed"
            seen: list[str] = []
            async with asyncio.timeout(30):
                while not seen or seen[-1] not in TERMINAL:
                    reply = await _recv(ws)
                    seen += [item["event"]["type"] for item in reply.get("events", ())]
            assert seen[-1] == "execution.completed"


async def _job(orch: Orch) -> str:
    r = await orch.post("/v1/jobs", {"service": "query"})
    assert r.status_code == 201, r.text
    return str(r.json()["task_id"])


async def test_task_updates_refuse_out_of_bounds_completions_and_keep_the_connection(launch: Launcher, database_url: str) -> None:
    # Today usage 1e19 overflows SQLite inside the handler: the connection drops unanswered; negative usage
    # is recorded; a result nested 256 deep is stored and GET /v1/tasks/{id} is a 500 from then on.
    async with launch(database_url, executor=False) as orch:
        job_id, deep_job = await _job(orch), await _job(orch)
        base = {"event": "job_completed", "service": "query", "job_id": job_id, "tenant_id": "tenant-a"}
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        async with websockets.connect(f"{orch.ws_url}/ws/task_updates", additional_headers=headers) as svc:
            await svc.send(b"\x01binary")
            assert (await _recv(svc))["type"] == "rejected"
            for usage, field in [
                ({"prompt_tokens": 1e19}, "usage.prompt_tokens"),
                ({"total_tokens": 10**19}, "usage.total_tokens"),
                ({"prompt_tokens": -992_704}, "usage.prompt_tokens"),
                ({"completion_tokens": "abc"}, "usage.completion_tokens"),
            ]:
                await svc.send(orjson.dumps(base | {"result": {"rows": 1}, "usage": usage}).decode())
                reply = await _recv(svc)
                assert reply["type"] == "rejected" and field in reply["error"], (usage, reply)
            await svc.send(orjson.dumps(base | {"result": {"rows": 1, "usage": {"prompt_tokens": -5}}}).decode())
            reply = await _recv(svc)
            assert reply["type"] == "rejected" and "result.usage.prompt_tokens" in reply["error"], reply
            await svc.send(json.dumps(base | {"job_id": deep_job, "result": nested(256)}))  # orjson writes 254 levels at most
            reply = await _recv(svc)
            assert reply["type"] == "rejected" and "result" in reply["error"] and "nested deeper" in reply["error"], reply
            # Same connection: the valid completion is taken.
            await svc.send(orjson.dumps(base | {"result": {"rows": 3}, "usage": {"prompt_tokens": 4, "total_tokens": 4}}).decode())
            assert await _recv(svc) == {"type": "accepted", "job_id": job_id, "status": "completed"}
        assert (await orch.get(f"/v1/tasks/{job_id}")).json()["result"] == {"rows": 3}
        r = await orch.get(f"/v1/tasks/{deep_job}")
        assert r.status_code == 200 and r.json()["status"] == "queued"
        rows = (await orch.wait_for("/v1/usage", lambda u: bool(u["rows"])))["rows"]
        assert rows[0]["total_tokens"] == 4 and rows[0]["prompt_tokens"] == 4


async def _close_code(ws: Any, timeout: float) -> int | None:
    with pytest.raises(websockets.ConnectionClosed) as closed:
        async with asyncio.timeout(timeout):
            while True:
                await ws.recv()
    return closed.value.rcvd.code if closed.value.rcvd is not None else None


async def test_open_websockets_close_4401_within_the_auth_cache_lifetime_after_revocation(launch: Launcher, sqlite_url: str) -> None:
    # Today a WebSocket opened before its key was revoked keeps streaming for as long as it stays open.
    cache_s = 1.0
    async with launch(sqlite_url, executor=False, auth_cache_s=cache_s) as orch:
        admin = {"Authorization": f"Bearer {ADMIN}"}
        assert (await orch.http.post("/v1/admin/tenants", json={"tenant_id": "acme"}, headers=admin)).status_code == 201
        keys = [(await orch.http.post("/v1/admin/tenants/acme/keys", json={}, headers=admin)).json() for _ in range(2)]
        # Key 0 is revoked by another replica (straight in the shared store): this one learns it from the store.
        key0 = {"Authorization": f"Bearer {keys[0]['api_key']}"}
        queued = (await orch.http.post("/v1/executions", json={"input": "hi"}, headers=key0)).json()["execution_id"]
        sse_lines: list[str] = []

        async def follow_sse() -> None:  # queued with no executor: the response stays open until something ends it
            async with orch.http.stream("GET", f"/v1/executions/{queued}/events", headers=key0) as r:
                assert r.status_code == 200
                async for line in r.aiter_lines():
                    sse_lines.append(line)

        sse = asyncio.create_task(follow_sse())
        async with (
            websockets.connect(f"{orch.ws_url}/v1/stream?api_key={keys[0]['api_key']}") as stream,
            websockets.connect(f"{orch.ws_url}/v1/tasks/stream?api_key={keys[0]['api_key']}") as tasks_ws,
        ):
            assert (await _recv(tasks_ws))["type"] == "subscribed"
            await stream.send(orjson.dumps({"type": "subscribe", "execution_id": "nope"}).decode())
            assert (await _recv(stream))["code"] == 404  # authenticated and served
            store = Store(orch.settings.database_url.get_secret_value())
            await store.start()
            try:
                async with store.begin() as conn:
                    await tenants.revoke_key(conn, keys[0]["key_id"])
            finally:
                await store.stop()
            revoked_at = time.monotonic()
            codes = await asyncio.gather(_close_code(stream, cache_s + 1.5), _close_code(tasks_ws, cache_s + 1.5))
            elapsed = time.monotonic() - revoked_at
        assert list(codes) == [4401, 4401] and elapsed <= cache_s + 0.5, (codes, elapsed)
        await asyncio.wait_for(sse, 2)  # the SSE response ended too, saying why
        assert "event: error" in sse_lines and any("API key revoked" in line for line in sse_lines), sse_lines
        # Key 1 is revoked through this replica's admin API: its streams close at once.
        async with websockets.connect(f"{orch.ws_url}/v1/stream?api_key={keys[1]['api_key']}") as stream:
            await stream.send(orjson.dumps({"type": "subscribe", "execution_id": "nope"}).decode())
            await _recv(stream)
            started = time.monotonic()
            assert (await orch.http.delete(f"/v1/admin/keys/{keys[1]['key_id']}", headers=admin)).status_code == 200
            assert await _close_code(stream, cache_s) == 4401
            assert time.monotonic() - started < 0.5


async def test_admin_token_is_accepted_only_in_a_header(launch: Launcher, sqlite_url: str) -> None:
    # Today ?api_key=<admin token> opens the admin API (and puts the token in every access log).
    async with launch(sqlite_url, executor=False) as orch:
        assert (await orch.http.get("/v1/admin/tenants", params={"api_key": ADMIN})).status_code == 401
        assert (await orch.http.get("/v1/admin/tenants", headers={"X-API-Key": ADMIN})).status_code == 200
        assert (await orch.get("/v1/admin/tenants", key=ADMIN)).status_code == 200


async def test_values_stored_before_the_bounds_are_shown_not_a_500(launch: Launcher, sqlite_url: str) -> None:
    # Today a job result, a session's metadata or a message's tool calls stored 300 levels deep make their
    # GET a 500 for as long as the row exists (pydantic's serializer stops at 255 levels).
    async with launch(sqlite_url, executor=False) as orch:
        job_id = await _job(orch)
        session_id = (await orch.post("/v1/sessions", {})).json()["session_id"]
        store = Store(orch.settings.database_url.get_secret_value())
        await store.start()
        try:
            async with store.begin() as conn:
                await tasks_repo.finish(conn, job_id, "completed", result=nested(300))
                await sessions_repo.append(
                    conn, session_id, role="assistant", content="done", tool_calls=[{"call_id": "c", "tool": "t", "arguments": nested(300)}]
                )
                await conn.execute(sessions_table.update().where(sessions_table.c.id == session_id).values(metadata={"m": nested(300)}))
        finally:
            await store.stop()
        task = await orch.get(f"/v1/tasks/{job_id}")
        assert task.status_code == 200 and "cannot be shown" in task.json()["result"]["error"], task.text[:300]
        messages = await orch.get(f"/v1/sessions/{session_id}/messages")
        assert messages.status_code == 200 and messages.json()["messages"][0]["tool_calls"] is None
        session = await orch.get(f"/v1/sessions/{session_id}")
        assert session.status_code == 200 and "cannot be shown" in session.json()["metadata"]["error"]
