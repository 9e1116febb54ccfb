"""Frames written straight to uvicorn's transport (services/orchestrator/wswire.py), on a real uvicorn
server with the official ``websockets`` client on the other side: a client that keeps up gets each
event's frame without a task woken for it, in order behind anything queued, and a client that stops
reading is still cut off."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable

import orjson
import pytest
import uvicorn
import websockets
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from services.orchestrator.sinks import CLOSE_SLOW_CONSUMER, EventItem, WebSocketSink
from services.orchestrator.wswire import Wire, abort_transport, text_frame
from tests.support import serve

Handler = Callable[[WebSocket, WebSocketSink], Awaitable[None]]


def item(offset: int, text: str = "x") -> EventItem:
    return EventItem(b'"e-1"', offset, "token.delta", orjson.dumps({"type": "token.delta", "seq": offset, "text": text}))


@pytest.fixture
async def server() -> AsyncIterator[Callable[..., str]]:
    """A uvicorn server whose WebSocket route hands a started sink to the test's handler."""
    handlers: list[Handler] = []
    bounds: list[int] = []
    sinks: list[WebSocketSink] = []

    async def route(websocket: WebSocket) -> None:
        await websocket.accept()
        sink = WebSocketSink(websocket, max_bytes=bounds[0], send_timeout_s=2.0, heartbeat_s=60)
        sink.start()
        sinks.append(sink)
        try:
            await handlers[0](websocket, sink)
            await sink.closed.wait()
        finally:
            await sink.aclose()

    app = Starlette(routes=[WebSocketRoute("/ws", route)])
    async with serve(app) as url:
        ws_url = url.replace("http", "ws", 1) + "/ws"

        def with_handler(handler: Handler, max_bytes: int = 256 * 1024) -> str:
            handlers.append(handler)
            bounds.append(max_bytes)
            return ws_url

        yield with_handler
        for sink in sinks:
            sink.kill(1000, "test over")


def parse(frame: bytes) -> Frame:
    reader = StreamReader()
    reader.feed_data(frame)
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        next(parser)
    except StopIteration as done:
        result: Frame = done.value
        return result
    raise AssertionError("incomplete frame")


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 70000])
def test_a_text_frame_parses_as_websockets_reads_it(size: int) -> None:
    payload = b"a" * size
    frame = parse(text_frame(payload))
    assert (frame.opcode, frame.fin, frame.data) == (Opcode.TEXT, True, payload)


async def test_a_client_that_keeps_up_gets_each_frame_straight_from_its_transport(server: Callable[..., str]) -> None:
    counted: list[int] = []

    async def push(websocket: WebSocket, sink: WebSocketSink) -> None:
        assert Wire.of(websocket) is not None
        for offset in range(50):
            sink.push_shared(item(offset))
        counted.append(sink.direct_frames)

    async with websockets.connect(server(push)) as ws:
        frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(50)]
    assert [f["events"][0]["cursor"] for f in frames] == list(range(50))
    assert all(f["type"] == "events" and len(f["events"]) == 1 for f in frames)
    assert frames[7]["events"][0]["event"]["seq"] == 7
    assert counted == [50]


async def test_a_client_that_falls_behind_then_reads_gets_everything_in_order(server: Callable[..., str]) -> None:
    """Frames go to the transport until it is full, then to the queue; a control message pushed then
    waits behind them, and what the queue holds goes out before anything is written directly again."""
    pushed: list[int] = []
    queued = asyncio.Event()
    text = "z" * 4000

    async def push(websocket: WebSocket, sink: WebSocketSink) -> None:
        offset = 0
        async with asyncio.timeout(30):
            while not sink._items:  # the transport stopped taking frames: the client is not reading
                sink.push_shared(item(offset, text))
                offset += 1
                await asyncio.sleep(0)
        direct = sink.direct_frames
        sink.push_control({"type": "marker", "after": offset - 1})
        for _ in range(5):
            sink.push_shared(item(offset, text))
            offset += 1
        assert sink.direct_frames == direct  # all queued behind the frame that did not fit
        pushed.append(offset)
        queued.set()

    async with websockets.connect(server(push, max_bytes=64 * 1024 * 1024), max_size=None) as ws:
        ws.transport.pause_reading()
        await asyncio.wait_for(queued.wait(), 30)
        ws.transport.resume_reading()
        cursors: list[int] = []
        marker: list[int] = []
        async with asyncio.timeout(30):
            while len(cursors) < pushed[0]:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "marker":
                    marker.append(len(cursors))
                else:
                    cursors.extend(e["cursor"] for e in frame["events"])
    assert cursors == list(range(pushed[0]))
    assert marker == [pushed[0] - 5]


async def test_abort_finds_the_transport_under_starlette(server: Callable[..., str]) -> None:
    aborted: list[bool] = []

    async def abort(websocket: WebSocket, sink: WebSocketSink) -> None:
        aborted.append(abort_transport(websocket))
        sink.kill(CLOSE_SLOW_CONSUMER, "test")

    async with websockets.connect(server(abort)) as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), 10)
    assert aborted == [True]
    assert closed.value.rcvd is None  # no close frame: the socket was aborted, not closed


async def test_a_client_that_stops_reading_is_cut_off(server: Callable[..., str]) -> None:
    ended: list[tuple[int, int]] = []
    big = "y" * 8000

    async def flood(websocket: WebSocket, sink: WebSocketSink) -> None:
        offset = 0
        async with asyncio.timeout(30):
            while not sink.closed.is_set():
                sink.push_shared(item(offset, big))
                offset += 1
                if offset % 20 == 0:
                    await asyncio.sleep(0)  # let the loop run the transport; nothing reads at the other end
        ended.append((sink.close_code, sink.direct_frames))

    async with websockets.connect(server(flood), max_queue=1, max_size=None) as ws:
        ws.transport.pause_reading()  # the client stops reading: the server's buffers fill
        async with asyncio.timeout(30):
            while not ended:
                await asyncio.sleep(0.05)
        ws.transport.resume_reading()
    assert ended[0][0] == CLOSE_SLOW_CONSUMER
    assert ended[0][1] > 0


def test_the_wire_is_found_on_uvloop_as_the_cli_runs_uvicorn() -> None:
    """`agentstream orchestrator` runs uvicorn on uvloop, whose transports are no asyncio.BaseTransport."""
    found: list[tuple[bool, bool]] = []

    async def route(websocket: WebSocket) -> None:
        await websocket.accept()
        sink = WebSocketSink(websocket, max_bytes=1 << 20, send_timeout_s=2.0, heartbeat_s=60)
        sink.start()
        sink.push_shared(item(0))
        found.append((Wire.of(websocket) is not None, sink.direct_frames == 1))
        await sink.aclose()
        await websocket.close()

    app = Starlette(routes=[WebSocketRoute("/ws", route)])
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, loop="uvloop", ws_per_message_deflate=False, log_level="warning", lifespan="off"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:

        async def client() -> dict[str, object]:
            async with asyncio.timeout(30):
                while not server.started:
                    await asyncio.sleep(0.02)
                async with websockets.connect(f"ws://127.0.0.1:{port}/ws") as ws:
                    frame: dict[str, object] = orjson.loads(await ws.recv())
                    return frame

        frame = asyncio.run(client())
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
    assert found == [(True, True)]
    assert frame["type"] == "events"


async def test_what_one_batch_of_the_tail_holds_goes_as_one_frame(server: Callable[..., str]) -> None:
    """Between hold() and flush() (one fetch batch of the bridge's tail) events and control messages
    collect, and go out in order, consecutive events in one frame: a loaded loop sends fewer frames."""
    counted: list[int] = []

    async def push(websocket: WebSocket, sink: WebSocketSink) -> None:
        assert sink.hold()
        for offset in range(3):
            sink.push_shared(item(offset))
        sink.push_control({"type": "end", "execution_id": "e-1"})
        sink.push_shared(item(3))
        counted.append(sink.direct_frames)  # nothing written yet
        sink.flush()
        counted.append(sink.direct_frames)

    async with websockets.connect(server(push)) as ws:
        frames = [orjson.loads(await asyncio.wait_for(ws.recv(), 10)) for _ in range(3)]
    assert [e["cursor"] for e in frames[0]["events"]] == [0, 1, 2]
    assert frames[1] == {"type": "end", "execution_id": "e-1"}
    assert [e["cursor"] for e in frames[2]["events"]] == [3]
    assert counted == [0, 3]
