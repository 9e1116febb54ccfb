"""HTTP -> Kafka -> executor -> Kafka -> WebSocket, on the real broker."""

from __future__ import annotations

import asyncio

import orjson
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.common.kafka import header
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from tests.e2e.conftest import Stack
from tests.support import collect_events

pytestmark = pytest.mark.kafka


async def test_post_streams_complete_and_in_order(stack: Stack) -> None:
    execution_id = await stack.submit(input="what is 12*7?")
    items = await collect_events(stack.ws_url, "key-a", execution_id)
    types = [i["event"]["type"] for i in items]
    assert types[0] == "execution.started"
    assert types.index("tool.call.started") < types.index("tool.call.completed") < len(types) - 1
    assert types[-1] == "execution.completed"
    text = "".join(i["event"]["text"] for i in items if i["event"]["type"] == "token.delta")
    assert "The calculator says 84" in text
    assert text.endswith(items[-1]["event"]["output"])
    assert [i["event"]["seq"] for i in items] == list(range(1, len(items) + 1))
    cursors = [i["cursor"] for i in items]
    assert cursors == sorted(set(cursors))
    assert items[-1]["event"]["usage"]["total_tokens"] > 0
    r = await stack.http.get(f"/v1/executions/{execution_id}", headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 200
    assert r.json()["status"] == "completed"
    assert r.json()["output"] == items[-1]["event"]["output"]


async def test_resubscribe_from_cursor_gets_exact_suffix(stack: Stack) -> None:
    execution_id = await stack.submit()
    full = await collect_events(stack.ws_url, "key-a", execution_id)
    cut = full[len(full) // 2]["cursor"]
    suffix = await collect_events(stack.ws_url, "key-a", execution_id, cursor=cut)
    assert suffix == [i for i in full if i["cursor"] > cut]


async def test_two_executors_share_the_group(stack: Stack) -> None:
    second = Executor(ExecutorSettings(kafka=stack.kafka, instance_id="executor-2", scripted_token_delay_ms=1))
    async with second:
        lanes = 3 * stack.kafka.partitions

        def split() -> bool:
            mine, theirs = stack.executor.assigned(), second.assigned()
            return bool(mine and theirs and not mine & theirs and len(mine | theirs) == lanes)

        async with asyncio.timeout(30):
            while not split():  # the rebalance has settled: each member owns a disjoint share
                await asyncio.sleep(0.1)
        # Tenant is the record key: 24 tenants spread the requests over the lane's partitions.
        ids = {f"key-{i}": await stack.submit(key=f"key-{i}", input=f"{i}+1") for i in range(24)}
        for key, execution_id in ids.items():
            items = await collect_events(stack.ws_url, key, execution_id)
            assert items[-1]["event"]["type"] == "execution.completed"
    assert stack.executor.completed > 0 and second.completed > 0
    assert stack.executor.completed + second.completed == 24


async def test_poison_record_goes_to_dlq_and_consumer_keeps_going(stack: Stack) -> None:
    topics = stack.kafka.topics
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    try:
        await producer.send_and_wait(topics.lane("standard"), key=b"tenant-a", value=b"{not json")
    finally:
        await producer.stop()
    execution_id = await stack.submit()
    items = await collect_events(stack.ws_url, "key-a", execution_id)
    assert items[-1]["event"]["type"] == "execution.completed"
    consumer = AIOKafkaConsumer(topics.dlq, bootstrap_servers=stack.kafka.bootstrap, auto_offset_reset="earliest")
    await consumer.start()
    try:
        record = await asyncio.wait_for(consumer.getone(), 10)
    finally:
        await consumer.stop()
    assert record.value == b"{not json"
    assert record.key == b"tenant-a"
    assert "invalid execution.requested" in (header(record.headers, "dlq.reason") or "")
    assert header(record.headers, "dlq.topic") == topics.lane("standard")


async def test_missing_or_wrong_key_is_401(stack: Stack) -> None:
    r = await stack.http.post("/v1/executions", json={"input": "hi"})
    assert r.status_code == 401
    assert "API key" in r.json()["error"]
    r = await stack.http.post("/v1/executions", json={"input": "hi"}, headers={"Authorization": "Bearer nope"})
    assert r.status_code == 401


async def test_other_tenant_cannot_read_or_subscribe(stack: Stack) -> None:
    import websockets

    execution_id = await stack.submit(key="key-a")
    r = await stack.http.get(f"/v1/executions/{execution_id}", headers={"Authorization": "Bearer key-b"})
    assert r.status_code == 404
    async with websockets.connect(f"{stack.ws_url}/v1/stream?api_key=key-b") as ws:
        await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
    assert reply == {"type": "error", "execution_id": execution_id, "code": 404, "error": "execution not found"}


async def test_websocket_with_bad_key_is_closed_4401(stack: Stack) -> None:
    import websockets

    async with websockets.connect(f"{stack.ws_url}/v1/stream?api_key=wrong") as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 5)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401


@pytest.mark.parametrize(
    ("body", "status", "fragment"),
    [
        (b"{not json", 400, "not valid JSON"),
        (b'{"input": 5}', 422, "invalid execution request"),
        (b'{"input": "hi", "surprise": 1}', 422, "invalid execution request"),
        (b'{"input": "hi", "priority": "urgent"}', 422, "invalid execution request"),
        (b'{"input": "hi", "agent": "nobody"}', 422, "unknown agent 'nobody'"),
        (b'{"input": "' + b"x" * 1_100_000 + b'"}', 413, "larger than"),
    ],
)
async def test_bad_input_is_a_clear_4xx(stack: Stack, body: bytes, status: int, fragment: str) -> None:
    r = await stack.http.post("/v1/executions", content=body, headers={"Authorization": "Bearer key-a", "Content-Type": "application/json"})
    assert r.status_code == status
    assert fragment in r.json()["error"]
