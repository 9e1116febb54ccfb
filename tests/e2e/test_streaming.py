"""Resume, replay, SSE, sessions, slow clients and several bridges, on the real broker."""

from __future__ import annotations

import asyncio
import random
import socket
from typing import Any

import httpx
import orjson
import pytest
import websockets
from aiokafka import TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, RecordsToDelete

from services.orchestrator.app import create_app
from tests.e2e.conftest import Stack
from tests.support import collect_events, serve

pytestmark = pytest.mark.kafka
AUTH = {"Authorization": "Bearer key-a"}
TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}


async def read_sse(url: str, execution_id: str, *, last_event_id: int | None = None, limit: int | None = None) -> list[dict[str, Any]]:
    """Parse an SSE stream into {"cursor", "type", "event"} items until a terminal event (or ``limit`` items)."""
    headers = dict(AUTH)
    if last_event_id is not None:
        headers["Last-Event-ID"] = str(last_event_id)
    items: list[dict[str, Any]] = []
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        async with client.stream("GET", f"/v1/executions/{execution_id}/events", headers=headers) as response:
            assert response.status_code == 200, await response.aread()
            assert response.headers["content-type"].startswith("text/event-stream")
            fields: dict[str, str] = {}
            async for line in response.aiter_lines():
                if line.startswith(":"):
                    continue
                if line:
                    name, _, value = line.partition(": ")
                    fields[name] = value
                    continue
                if "id" in fields:
                    items.append({"cursor": int(fields["id"]), "type": fields["event"], "event": orjson.loads(fields["data"])})
                    if items[-1]["type"] in TERMINAL or (limit is not None and len(items) >= limit):
                        return items
                fields = {}
    return items


async def test_resume_at_random_cursors_returns_exactly_the_missing_suffix(stack: Stack) -> None:
    execution_id = await stack.submit(input="what is 2*21? " + "word " * 200)
    full = await collect_events(stack.ws_url, "key-a", execution_id)
    cursors = [i["cursor"] for i in full]
    rng = random.Random(7)
    for cut in {-1, cursors[0], cursors[-1], *rng.sample(cursors, 4)}:
        suffix = await collect_events(stack.ws_url, "key-a", execution_id, cursor=cut) if cut != cursors[-1] else []
        assert suffix == [i for i in full if i["cursor"] > cut]


async def test_disconnect_mid_stream_then_resume_gets_the_rest_once(stack: Stack) -> None:
    execution_id = await stack.submit(input="what is 1+1? " + "word " * 400)
    seen: list[dict[str, Any]] = []
    async with websockets.connect(f"{stack.ws_url}/v1/stream?api_key=key-a") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
        while len(seen) < 3:
            frame = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
            seen.extend(frame.get("events", ()))
    assert seen[-1]["event"]["type"] not in TERMINAL
    rest = await collect_events(stack.ws_url, "key-a", execution_id, cursor=seen[-1]["cursor"])
    replay = await collect_events(stack.ws_url, "key-a", execution_id)
    assert seen + rest == replay
    assert [i["event"]["seq"] for i in replay] == list(range(1, len(replay) + 1))


async def test_replay_of_a_finished_execution_equals_the_live_stream(stack: Stack) -> None:
    execution_id = await stack.submit(input="what is 9*9? " + "word " * 100)
    live = await collect_events(stack.ws_url, "key-a", execution_id)
    # A bridge started after the execution ended has none of it in memory: it replays from Kafka.
    async with serve(create_app(stack.orchestrator_settings)) as other:
        replay = await collect_events(other.replace("http", "ws", 1), "key-a", execution_id)
    assert replay == live


async def test_two_bridges_serve_the_same_live_execution(stack: Stack) -> None:
    async with serve(create_app(stack.orchestrator_settings)) as other:
        execution_id = await stack.submit(input="what is 3*3? " + "word " * 300)
        a, b = await asyncio.gather(
            collect_events(stack.ws_url, "key-a", execution_id),
            collect_events(other.replace("http", "ws", 1), "key-a", execution_id),
        )
    assert a == b
    assert a[-1]["event"]["type"] == "execution.completed"


async def test_sse_streams_and_resumes_with_last_event_id(stack: Stack) -> None:
    execution_id = await stack.submit(input="what is 5*5? " + "word " * 100)
    full = await read_sse(stack.url, execution_id)
    ws_full = await collect_events(stack.ws_url, "key-a", execution_id)
    assert [(i["cursor"], i["event"]) for i in full] == [(i["cursor"], i["event"]) for i in ws_full]
    cut = full[len(full) // 2]["cursor"]
    resumed = await read_sse(stack.url, execution_id, last_event_id=cut)
    assert resumed == [i for i in full if i["cursor"] > cut]


async def test_sse_refuses_other_tenants_and_bad_cursors(stack: Stack) -> None:
    execution_id = await stack.submit()
    r = await stack.http.get(f"/v1/executions/{execution_id}/events", headers={"Authorization": "Bearer key-b"})
    assert r.status_code == 404
    r = await stack.http.get(f"/v1/executions/{execution_id}/events", headers={**AUTH, "Last-Event-ID": "abc"})
    assert r.status_code == 400
    r = await stack.http.get(f"/v1/executions/{execution_id}/events")
    assert r.status_code == 401


async def test_one_socket_follows_a_session_including_later_executions(stack: Stack) -> None:
    first = await stack.submit(input="1+1", session_id="s-1")
    await stack.submit(key="key-b", input="2+2", session_id="s-1")  # same session id, other tenant: invisible
    got: dict[str, list[str]] = {}
    async with websockets.connect(f"{stack.ws_url}/v1/stream?api_key=key-a") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "session_id": "s-1"}).decode())
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 10))
        assert reply == {"type": "subscribed", "session_id": "s-1", "executions": [first]}
        second = await stack.submit(input="3+3", session_id="s-1")
        async with asyncio.timeout(30):
            while sum(1 for types in got.values() if types[-1] in TERMINAL) < 2:
                frame = orjson.loads(await ws.recv())
                for item in frame.get("events", ()):
                    got.setdefault(item["execution_id"], []).append(item["event"]["type"])
    assert set(got) == {first, second}
    assert all(types[0] == "execution.started" and types[-1] == "execution.completed" for types in got.values())


async def test_idle_socket_gets_heartbeats(stack: Stack) -> None:
    settings = stack.orchestrator_settings.model_copy(update={"heartbeat_s": 0.2})
    async with serve(create_app(settings)) as url:
        async with websockets.connect(f"{url.replace('http', 'ws', 1)}/v1/stream?api_key=key-a") as ws:
            assert orjson.loads(await asyncio.wait_for(ws.recv(), 5)) == {"type": "heartbeat"}


async def test_slow_client_is_cut_off_while_a_fast_one_gets_everything(stack: Stack) -> None:
    settings = stack.orchestrator_settings.model_copy(update={"stream_buffer_kb": 1024, "ws_send_timeout_s": 2.0})
    big = "what is 4*4? " + ("x" * 2000 + " ") * 95  # ~190 KB of text, ~400 KB of events per execution
    async with serve(create_app(settings)) as url:
        ws_url = f"{url.replace('http', 'ws', 1)}/v1/stream?api_key=key-a"
        ids = [await stack.submit(input=big) for _ in range(24)]
        # A tiny receive buffer, and max_queue=1: the client stops reading after one unread frame, so
        # what the server sends piles up in its own socket buffer (a few MB on loopback) and then blocks.
        raw = socket.socket()
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        raw.setblocking(False)
        await asyncio.get_running_loop().sock_connect(raw, ("127.0.0.1", int(url.rsplit(":", 1)[1])))
        slow = await websockets.connect(ws_url, max_queue=1, sock=raw)
        for execution_id in ids:
            await slow.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
        fast = await asyncio.gather(*(collect_events(url.replace("http", "ws", 1), "key-a", i, timeout=60) for i in ids))
        for items in fast:
            assert items[-1]["event"]["type"] == "execution.completed"
            assert [i["event"]["seq"] for i in items] == list(range(1, len(items) + 1))
        with pytest.raises(websockets.ConnectionClosed):
            async with asyncio.timeout(30):
                while True:
                    await slow.recv()
        await slow.close()


async def test_past_retention_is_410(stack: Stack) -> None:
    execution_id = await stack.submit()
    await collect_events(stack.ws_url, "key-a", execution_id)
    status = (await stack.http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()
    assert status["status"] == "completed"
    topic = stack.kafka.topics.events
    admin = AIOKafkaAdminClient(bootstrap_servers=stack.kafka.bootstrap)
    await admin.start()
    try:
        await admin.delete_records({TopicPartition(topic, p): RecordsToDelete(-1) for p in range(stack.kafka.partitions)})
    finally:
        await admin.close()
    async with serve(create_app(stack.orchestrator_settings)) as other:
        async with httpx.AsyncClient(base_url=other) as client:
            r = await client.get(f"/v1/executions/{execution_id}/events", headers=AUTH)
        assert r.status_code == 410
        assert "retention" in r.json()["error"]
        async with websockets.connect(f"{other.replace('http', 'ws', 1)}/v1/stream?api_key=key-a") as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
            while (reply := orjson.loads(await asyncio.wait_for(ws.recv(), 10)))["type"] == "subscribed":
                pass
        assert reply["type"] == "error" and reply["code"] == 410


async def test_reply_topic_from_the_allowlist_carries_the_events(stack: Stack) -> None:
    from aiokafka import AIOKafkaConsumer

    reply = f"{stack.kafka.topic_prefix}acme.replies"
    settings = stack.orchestrator_settings.model_copy(update={"reply_topics": {"tenant-a": [reply]}})
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as client:
        r = await client.post("/v1/executions", json={"input": "2*2", "reply_to": reply}, headers=AUTH)
        assert r.status_code == 202, r.text
        execution_id = r.json()["execution_id"]
        items = await collect_events(url.replace("http", "ws", 1), "key-a", execution_id)
        assert items[-1]["event"]["type"] == "execution.completed"
        sse = await read_sse(url, execution_id)
        assert [i["cursor"] for i in sse] == [i["cursor"] for i in items]
        r = await client.post("/v1/executions", json={"input": "2*2", "reply_to": reply}, headers={"Authorization": "Bearer key-b"})
        assert r.status_code == 422 and "allowlist" in r.json()["error"]
    consumer = AIOKafkaConsumer(reply, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        batches = await consumer.getmany(timeout_ms=3000)
    finally:
        await consumer.stop()
    on_reply = [r.offset for records in batches.values() for r in records if r.key == execution_id.encode()]
    assert on_reply == [i["cursor"] for i in items]
