"""Writing WebSocket frames straight to uvicorn's transport, bytes built once for every subscriber.

Through Starlette and uvicorn, one ``send_text`` costs 20-25 us (the ASGI message, the protocol's
frame encoding, a timeout per send, a writer task woken per client); one token to 1,000 subscribers
is then 25 ms of one core, and a 50 tok/s stream is more than the core has (measured:
docs/performance.md). A server's frames are not masked, so without an extension (no per-message
deflate, which the orchestrator turns off) one event's frame is the same bytes for every client:
the bridge builds them once and writes them to each client's transport, which costs one
``transport.write``.

This reaches under Starlette into uvicorn's websockets-sansio protocol (``pyproject`` pins uvicorn
for it). ``Wire.of`` answers None for anything else (wsproto, a test double), and the sink then
goes through ``send_text`` as before. The protocol's own frames (pings, pongs, the close) are
written by the same event loop, each in one ``write``, so they never interleave with ours.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any

_FIN_TEXT = 0x81


def text_frame(payload: bytes) -> bytes:
    """One unmasked, unfragmented text frame (RFC 6455 section 5.2), as a server sends it."""
    n = len(payload)
    if n < 126:
        return bytes((_FIN_TEXT, n)) + payload
    if n < 1 << 16:
        return struct.pack("!BBH", _FIN_TEXT, 126, n) + payload
    return struct.pack("!BBQ", _FIN_TEXT, 127, n) + payload


def protocol_of(websocket: Any) -> Any | None:
    """The uvicorn protocol object behind a Starlette WebSocket: its ``send`` is a bound method of
    the protocol, wrapped by Starlette in closures (the exception middleware's ``sender``)."""
    todo: list[tuple[Any, int]] = [(getattr(websocket, "_send", None), 0)]
    seen: set[int] = set()
    while todo:
        send, depth = todo.pop()
        if send is None or id(send) in seen or depth > 6:
            continue
        seen.add(id(send))
        owner = getattr(send, "__self__", None)
        transport = getattr(owner, "transport", None)
        # Duck-typed: uvloop's transports (what `agentstream orchestrator` runs on) are no asyncio.BaseTransport.
        if transport is not None and callable(getattr(transport, "abort", None)) and callable(getattr(transport, "write", None)):
            return owner
        todo.extend((cell.cell_contents, depth + 1) for cell in getattr(send, "__closure__", None) or () if _callable_cell(cell))
        todo.append((getattr(send, "__wrapped__", None), depth + 1))
        todo.append((getattr(owner, "send", None), depth + 1))
    return None


def _callable_cell(cell: Any) -> bool:
    try:
        return callable(cell.cell_contents)
    except ValueError:  # an empty cell
        return False


def abort_transport(websocket: Any) -> bool:
    """Abort the transport behind a Starlette WebSocket (Starlette has no hook for it)."""
    protocol = protocol_of(websocket)
    if protocol is None:
        return False
    protocol.transport.abort()
    return True


class Wire:
    """One client's uvicorn websockets-sansio connection, open and without extensions."""

    __slots__ = ("_protocol", "transport")

    def __init__(self, protocol: Any) -> None:
        self._protocol = protocol
        self.transport: asyncio.Transport = protocol.transport

    @classmethod
    def of(cls, websocket: Any) -> Wire | None:
        protocol = protocol_of(websocket)
        if protocol is None or type(protocol).__name__ != "WebSocketsSansIOProtocol":
            return None
        if getattr(getattr(protocol, "conn", None), "extensions", None):  # deflate: frames would differ per client
            return None
        return cls(protocol)

    def writable(self) -> bool:
        """Open, and below the transport's high-water mark (else frames wait in the sink's queue,
        whose writer waits for the client with a timeout)."""
        p = self._protocol
        return bool(p.handshake_complete and not p.close_sent and p.writable.is_set() and not self.transport.is_closing())

    def write(self, frame: bytes) -> int:
        """Write a whole frame; the bytes the client has not taken yet (the transport's buffer)."""
        self.transport.write(frame)
        size: int = self.transport.get_write_buffer_size()
        return size
