"""The bridge builds each record's frame once for all the subscribers of its execution (sinks.py
``EventItem``), in memory: records handed to the bridge as its tail would, WebSockets that keep what
they are sent."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import orjson
from starlette.websockets import WebSocket

from schemas.events import ExecutionStarted, TokenDelta
from schemas.status import ExecutionStatus
from services.common.statusview import StatusView
from services.orchestrator.bridge import Bridge
from services.orchestrator.sinks import SSESink, WebSocketSink
from tests.unit.test_fencing import KAFKA, record


class KeepingWebSocket:
    """The part of Starlette's WebSocket a sink's writer uses: every frame is kept, as sent."""

    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_text(self, data: str) -> None:
        self.sent.append(data)

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        pass


async def until(condition: Any, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.001)


async def test_one_frame_per_record_for_every_subscriber_that_keeps_up() -> None:
    status = StatusView(KAFKA)
    bridge = Bridge(KAFKA, status)
    ids: dict[str, Any] = {"tenant_id": "t", "execution_id": "e1"}
    bridge._handle(record(0, ExecutionStarted(**ids, seq=1)))
    status.apply(ExecutionStatus(**ids, state="running", events_partition=0, events_start_offset=0, events_topic=KAFKA.topics.events))
    current = status.get("e1")
    assert current is not None
    sockets = [KeepingWebSocket() for _ in range(3)]
    sinks = [WebSocketSink(cast(WebSocket, ws), max_bytes=1 << 20, send_timeout_s=5, heartbeat_s=60) for ws in sockets]
    sse = SSESink(max_bytes=1 << 20, heartbeat_s=60)
    try:
        for sink in [*sinks, sse]:
            sink.tenant_id = "t"
            if isinstance(sink, WebSocketSink):
                sink.start()
            bridge.attach(sink)
            sub = bridge.subscribe(sink, current, cursor=None)
            await until(lambda sub=sub: not sub.catching_up)
        await until(lambda: all(len(ws.sent) == 1 for ws in sockets))  # the start, caught up from memory

        bridge._handle(record(1, TokenDelta(**ids, seq=2, text="hi")))
        await until(lambda: all(len(ws.sent) == 2 for ws in sockets))
        frames = [ws.sent[1] for ws in sockets]
        assert all(frame is frames[0] for frame in frames)  # the same str object: built once, not once per client
        frame = orjson.loads(frames[0])
        assert frame["type"] == "events" and [(e["cursor"], e["event"]["text"]) for e in frame["events"]] == [(1, "hi")]
        assert frame["events"][0]["execution_id"] == "e1"
        body = b"".join(i[1:] if isinstance(i, bytes) else i.sse() for i in await sse.take(0))
        assert b"id: 0\nevent: execution.started\n" in body and b"id: 1\nevent: token.delta\ndata: {" in body
        assert orjson.loads(body.split(b"data: ")[-1])["text"] == "hi"  # SSE gets the record's value as it is
    finally:
        for sink in sinks:
            await sink.aclose()
        await bridge.stop()


async def test_a_subscriber_waiting_for_the_start_gets_the_tokens_when_the_tail_sees_the_start(monkeypatch: Any) -> None:
    """Subscribed while queued: its catch-up waits to learn where the events start. The tail's
    ``execution.started`` wakes it, so the first tokens go out at once, also when the running
    snapshot reaches the status view late (under load, hundreds of ms). Before, it waited for the
    snapshot or its re-check timer (here 60 s, so the test cannot pass by the timer)."""
    import services.orchestrator.bridge as bridge_module

    monkeypatch.setattr(bridge_module, "START_RECHECK_S", 60.0)
    status = StatusView(KAFKA)
    bridge = Bridge(KAFKA, status)
    ids: dict[str, Any] = {"tenant_id": "t", "execution_id": "e1"}
    status.apply(ExecutionStatus(**ids, events_topic=KAFKA.topics.events))  # queued: no events yet
    queued = status.get("e1")
    assert queued is not None
    ws = KeepingWebSocket()
    sink = WebSocketSink(cast(WebSocket, ws), max_bytes=1 << 20, send_timeout_s=5, heartbeat_s=60)
    sink.tenant_id = "t"
    sink.start()
    try:
        bridge.attach(sink)
        sub = bridge.subscribe(sink, queued, cursor=None)
        await asyncio.sleep(0.01)  # its catch-up is waiting
        assert sub.catching_up
        bridge._handle(record(0, ExecutionStarted(**ids, seq=1)))
        bridge._handle(record(1, TokenDelta(**ids, seq=2, text="hi")))
        await until(lambda: not sub.catching_up, timeout=10)  # the status view never heard of the start
        await until(lambda: sum(len(orjson.loads(f).get("events", [])) for f in ws.sent) == 2, timeout=10)
        events = [e for f in ws.sent for e in orjson.loads(f).get("events", [])]
        assert [(e["cursor"], e["event"]["type"]) for e in events] == [(0, "execution.started"), (1, "token.delta")]
    finally:
        await sink.aclose()
        await bridge.stop()
