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

from services.orchestrator.wswire import Wire, abort_transport, text_frame

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

    __slots__ = ("_sse", "_wire", "_ws", "_ws_frame", "id_json", "offset", "type", "value")

    def __init__(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.id_json = execution_id_json
        self.offset = offset
        self.type = type_
        self.value = value
        self._ws: bytes | None = None
        self._ws_frame: str | None = None
        self._wire: bytes | None = None
        self._sse: bytes | None = None

    def ws(self) -> bytes:
        if self._ws is None:
            self._ws = b'{"execution_id":' + self.id_json + b',"cursor":' + str(self.offset).encode() + b',"event":' + self.value + b"}"
        return self._ws

    def ws_frame(self) -> str:
        if self._ws_frame is None:
            self._ws_frame = _events_payload([self.ws()]).decode()
        return self._ws_frame

    def wire(self) -> bytes:
        """The whole WebSocket frame holding just this event, as written to every client's transport."""
        if self._wire is None:
            self._wire = text_frame(_events_payload([self.ws()]))
        return self._wire

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

    def hold(self) -> bool:
        """Collect what is pushed until ``flush`` into as few frames as it allows (the bridge does, for
        one fetch batch of its tail or one catch-up); False if this sink has nothing to gain (queued
        items batch already)."""
        return False

    def flush(self) -> None:
        pass

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
    """Events go out as ``{"type": "events", "events": [...]}`` frames; control messages alone.

    Over uvicorn's websockets-sansio (wswire.py), whatever the transport takes at once is written
    there at once, in the pusher's call: an event's frame is the same bytes for every subscriber,
    and no task is woken per client. When the transport is above its high-water mark (the client
    is not reading fast enough), what follows goes to the bounded queue, and the writer sends it,
    batched, waiting for the client with a timeout, as it does for every frame without a wire (a
    test double, wsproto). Order is kept: nothing is written directly while anything is queued or
    being sent.
    """

    def __init__(
        self, websocket: WebSocket, *, max_bytes: int, send_timeout_s: float, heartbeat_s: float, direct_writes: bool = True
    ) -> None:
        super().__init__(max_bytes=max_bytes)
        self.websocket = websocket
        self._direct_writes = direct_writes
        self._send_timeout = send_timeout_s
        self._heartbeat = heartbeat_s
        self._writer: asyncio.Task[None] | None = None
        self._wire: Wire | None = None
        self._sending = False  # the writer awaits a send of items it took: nothing may overtake them
        self._held: list[bytes | EventItem] | None = None  # between hold() and flush()
        self.direct_frames = 0  # frames written straight to the transport (tests, and the heartbeat below)
        self._direct_seen = 0

    def start(self) -> None:
        self._wire = Wire.of(self.websocket) if self._direct_writes else None
        self._writer = asyncio.create_task(self._write_loop(), name="ws-writer")

    def push_event(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.push_shared(EventItem(execution_id_json, offset, type_, value))

    def push_shared(self, item: EventItem) -> None:
        if not self._direct(item):
            self.push(item, len(item.ws()))

    def push_control(self, message: dict[str, Any]) -> None:
        control = _CONTROL + self._encode(message)
        if not self._direct(control):
            self.push(control)

    def hold(self) -> bool:
        if self._wire is None or self._held is not None:
            return False
        self._held = []
        return True

    def flush(self) -> None:
        held, self._held = self._held, None
        if held:
            self._write(held)

    def _direct(self, item: bytes | EventItem) -> bool:
        """Write ``item`` (after anything queued) to the transport if it takes it now; False: queue it."""
        wire = self._wire
        if wire is None or self.closed.is_set():
            return False
        if self._held is not None:  # a batch of the tail: written (or queued) in order at its end
            self._held.append(item)
            return True
        if self._sending or not wire.writable():
            return False
        self._write([item])
        return True

    def _write(self, items: list[bytes | EventItem]) -> None:
        """Write ``items`` to the transport (after anything queued, which goes first), or queue them if
        the transport stopped taking frames meanwhile."""
        wire = self._wire
        assert wire is not None
        if self._sending or self.closed.is_set() or not wire.writable():
            for item in items:
                self.push(item, None if isinstance(item, bytes) else len(item.ws()))
            return
        if self._items:  # queued while the transport was full: those go first
            queued = [*self._items, *items]
            self._items.clear()
            self._bytes = 0
        else:
            queued = items
        buffered = 0
        for frame in _wire_frames(queued):
            buffered = wire.write(frame)
            self.direct_frames += 1
        if buffered > self._max_bytes:
            self.kill(CLOSE_SLOW_CONSUMER, "slow consumer: send buffer overflowed")

    def _on_kill(self) -> None:
        if self._writer is not None and self._writer is not asyncio.current_task():
            self._writer.cancel()
        if self.close_code == CLOSE_SLOW_CONSUMER:
            # close() would wait for a flush that a stalled client never allows: abort the socket.
            if not abort_transport(self.websocket):
                asyncio.get_running_loop().create_task(self._close())
        else:
            asyncio.get_running_loop().create_task(self._close())

    async def _close(self) -> None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.websocket.close(code=self.close_code, reason=self.close_reason), 2.0)
        abort_transport(self.websocket)

    async def _write_loop(self) -> None:
        while True:
            items = await self.take(self._heartbeat)
            if not items:
                if self.direct_frames != self._direct_seen:  # frames went out directly meanwhile: no heartbeat needed
                    self._direct_seen = self.direct_frames
                    continue
                items = [_CONTROL + b'{"type":"heartbeat"}']
            self._sending = True
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
            finally:
                self._sending = False

    async def aclose(self) -> None:
        self.closed.set()
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer


def _wire_frames(items: list[bytes | EventItem]) -> list[bytes]:
    """``_ws_frames`` as whole WebSocket frames for the transport (one event alone: its shared bytes)."""
    return [
        text_frame(group[1:])
        if isinstance(group, bytes)
        else group[0].wire()
        if len(group) == 1
        else text_frame(_events_payload([e.ws() for e in group]))
        for group in _grouped(items)
    ]


def _ws_frames(items: list[bytes | EventItem]) -> list[str]:
    """Control messages go alone; consecutive events share one ``events`` frame (one event alone: the
    item's frame, shared by every subscriber that keeps up)."""
    return [group[1:].decode() if isinstance(group, bytes) else _shared_frame(group) for group in _grouped(items)]


def _grouped(items: list[bytes | EventItem]) -> list[bytes | list[EventItem]]:
    """Control messages (the only bytes on a WebSocket sink) alone, runs of events together, in order."""
    groups: list[bytes | list[EventItem]] = []
    for item in items:
        if isinstance(item, bytes):
            groups.append(item)
        elif groups and isinstance(groups[-1], list):
            groups[-1].append(item)
        else:
            groups.append([item])
    return groups


def _shared_frame(events: list[EventItem]) -> str:
    return events[0].ws_frame() if len(events) == 1 else _events_frame([e.ws() for e in events])


def _events_frame(events: list[bytes]) -> str:
    return _events_payload(events).decode()


def _events_payload(events: list[bytes]) -> bytes:
    return b'{"type":"events","events":[' + b",".join(events) + b"]}"


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
