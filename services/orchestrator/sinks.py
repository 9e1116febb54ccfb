"""Where the bridge puts events for one client: a WebSocket or an SSE response.

The fan-out loop never awaits a client. It puts bytes on the sink's bounded queue; one writer per
client batches what is queued and sends it with a timeout. A client whose queue overflows, or
whose send times out, is cut off and its transport aborted: measured on these machines, one socket
that stops reading otherwise stalls every send and even ``close()`` (shared/measured).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import AsyncIterator
from typing import Any

import orjson
from starlette.websockets import WebSocket

log = logging.getLogger(__name__)

CLOSE_SLOW_CONSUMER = 4008
CLOSE_UNAUTHORIZED = 4401
CLOSE_SHUTDOWN = 1001
CLOSE_INTERNAL_ERROR = 1011

_CONTROL = b"\x00"


class EventItem:
    """One event record as its subscribers get it. The bridge makes one per record and hands the same
    one to every subscriber, so the bytes (and a WebSocket frame holding just this event, what a client
    that keeps up is sent) are built once per record, not once per subscriber."""

    __slots__ = ("_sse", "_ws", "_ws_frame", "id_json", "offset", "type", "value")

    def __init__(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.id_json = execution_id_json
        self.offset = offset
        self.type = type_
        self.value = value
        self._ws: bytes | None = None
        self._ws_frame: str | None = None
        self._sse: bytes | None = None

    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = b'{"execution_id":' + self.id_json + b',"cursor":' + str(self.offset).encode() + b',"event":' + self.value + b"}"
        return self._ws

    def ws_frame(self) -> str:
        if self._ws_frame is None:
            self._ws_frame = _events_frame([self.ws()])
        return self._ws_frame

    def sse(self) -> bytes:
        if self._sse is None:
            self._sse = b"id: " + str(self.offset).encode() + b"\nevent: " + self.type.encode() + b"\ndata: " + self.value + b"\n\n"
        return self._sse


class Sink:
    """Encoded items for one client, bounded in bytes, with a cut-off when the client falls behind.

    The bound is in bytes, not items: the tail hands over thousands of records in one burst (and
    a catch-up from memory a whole execution), which a client that reads fine absorbs at once.
    """

    def __init__(self, *, max_bytes: int) -> None:
        self.tenant_id = ""
        self._items: deque[bytes | EventItem] = deque()
        self._bytes = 0
        self._max_bytes = max_bytes
        self._ready = asyncio.Event()
        self.subscriptions: dict[str, Any] = {}
        self.sessions: set[str] = set()
        self.closed = asyncio.Event()
        self.close_code = 0
        self.close_reason = ""

    def push(self, item: bytes | EventItem, size: int | None = None) -> None:
        if self.closed.is_set():
            return
        self._bytes += len(item) if isinstance(item, bytes) else (size or 0)
        if self._bytes > self._max_bytes:
            self.kill(CLOSE_SLOW_CONSUMER, "slow consumer: send buffer overflowed")
            return
        self._items.append(item)
        self._ready.set()

    async def take(self, timeout: float) -> list[bytes | EventItem]:
        """Everything queued (waiting up to ``timeout`` for something); [] on timeout."""
        if not self._items:
            self._ready.clear()
            # asyncio.timeout, not wait_for: wait_for wraps the wait in a new Task, per frame per client.
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout):
                    await self._ready.wait()
        items = list(self._items)
        self._items.clear()
        self._bytes = 0
        return items

    def push_event(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        raise NotImplementedError

    def push_shared(self, item: EventItem) -> None:
        """An event the bridge hands to every subscriber of its execution; sinks that send the same bytes
        to every client use the item's, built once (a sink of its own format gets the parts)."""
        self.push_event(item.id_json, item.offset, item.type, item.value)

    def push_control(self, message: dict[str, Any]) -> None:
        self.push(_CONTROL + self._encode(message))

    def _encode(self, message: dict[str, Any]) -> bytes:
        """A control frame's JSON. Its values are bounded where they enter (a cursor past 64 bits once
        killed the bridge's tail right here, in orjson); should one still not encode, only this client pays."""
        try:
            return orjson.dumps(message)
        except orjson.JSONEncodeError as exc:
            log.error("control frame %r for a client cannot be encoded: %s", message.get("type"), exc)
            self.kill(CLOSE_INTERNAL_ERROR, "internal error")
            return b"{}"

    def kill(self, code: int, reason: str) -> None:
        if self.closed.is_set():
            return
        self.close_code, self.close_reason = code, reason
        self.closed.set()
        self._ready.set()  # a writer waiting for items (an SSE body until its next heartbeat) ends now
        self._on_kill()

    def _on_kill(self) -> None:
        pass


class WebSocketSink(Sink):
    """Events go out as ``{"type": "events", "events": [...]}`` frames; control messages alone."""

    def __init__(self, websocket: WebSocket, *, max_bytes: int, send_timeout_s: float, heartbeat_s: float) -> None:
        super().__init__(max_bytes=max_bytes)
        self.websocket = websocket
        self._send_timeout = send_timeout_s
        self._heartbeat = heartbeat_s
        self._writer: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    def push_event(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.push_shared(EventItem(execution_id_json, offset, type_, value))

    def push_shared(self, item: EventItem) -> None:
        self.push(item, len(item.ws()))

    def _on_kill(self) -> None:
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self.close_code == CLOSE_SLOW_CONSUMER:
            # close() would wait for a flush that a stalled client never allows: abort the socket.
            if not _abort_transport(self.websocket):
                asyncio.get_running_loop().create_task(self._close())
        else:
            asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.websocket.close(code=self.close_code, reason=self.close_reason), 2.0)
        _abort_transport(self.websocket)

    async def _write_loop(self) -> None:
        while True:
            items = await self.take(self._heartbeat) or [_CONTROL + b'{"type":"heartbeat"}']
            try:
                for frame in _ws_frames(items):
                    async with asyncio.timeout(self._send_timeout):
                        await self.websocket.send_text(frame)
            except TimeoutError:
                self.kill(CLOSE_SLOW_CONSUMER, "slow consumer: send timed out")
                return
            except Exception:
                self.closed.set()
                return

    async def aclose(self) -> None:
        self.closed.set()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


def _ws_frames(items: list[bytes | EventItem]) -> list[str]:
    """Control messages go alone; consecutive events share one ``events`` frame (one event alone: the
    item's frame, shared by every subscriber that keeps up)."""
    frames: list[str] = []
    events: list[EventItem] = []
    for item in items:
        if isinstance(item, bytes):  # control messages are the only bytes on a WebSocket sink
            if events:
                frames.append(_shared_frame(events))
                events = []
            frames.append(item[1:].decode())
        else:
            events.append(item)
    if events:
        frames.append(_shared_frame(events))
    return frames


def _shared_frame(events: list[EventItem]) -> str:
    return events[0].ws_frame() if len(events) == 1 else _events_frame([e.ws() for e in events])


def _events_frame(events: list[bytes]) -> str:
    return (b'{"type":"events","events":[' + b",".join(events) + b"]}").decode()


class SSESink(Sink):
    """Server-sent events: ``id`` is the cursor, ``event`` the type, ``data`` the event JSON."""

    def __init__(self, *, max_bytes: int, heartbeat_s: float) -> None:
        super().__init__(max_bytes=max_bytes)
        self._heartbeat = heartbeat_s

    def push_event(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.push_shared(EventItem(execution_id_json, offset, type_, value))

    def push_shared(self, item: EventItem) -> None:
        self.push(item, len(item.sse()))

    def push_control(self, message: dict[str, Any]) -> None:
        self.push(_CONTROL + b"event: " + str(message.get("type", "message")).encode() + b"\ndata: " + self._encode(message) + b"\n\n")

    async def body(self, *, until_done: Any) -> AsyncIterator[bytes]:
        """The response body: batches of queued items, comments as heartbeats, until ``until_done()``."""
        while not self.closed.is_set():
            items = await self.take(self._heartbeat)
            if not items:
                if until_done():
                    return
                yield b": heartbeat\n\n"
                continue
            yield b"".join(i[1:] if isinstance(i, bytes) else i.sse() for i in items)
            if not self._items and until_done():
                return
        if self.close_reason:
            yield b"event: error\ndata: " + orjson.dumps({"type": "error", "error": self.close_reason}) + b"\n\n"


def _abort_transport(websocket: WebSocket) -> bool:
    """Abort the uvicorn transport behind a Starlette WebSocket (Starlette has no hook for it)."""
    send: Any = websocket._send
    for _ in range(4):
        owner = getattr(send, "__self__", None)
        transport = getattr(owner, "transport", None)
        if transport is not None:
            transport.abort()
            return True
        send = getattr(owner, "send", None) or getattr(send, "__wrapped__", None)
        if send is None:
            break
    log.debug("no transport to abort for %s", websocket.client)
    return False
