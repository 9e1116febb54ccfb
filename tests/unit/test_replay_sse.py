"""`replay`'s SSE reader against a loopback server that writes the stream byte for byte: shapes the
SSE grammar allows that a ``partition(": ")`` reader broke on (no space after the colon, data on
several lines, CRLF line ends), and control events that carry no id of their own."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from services.replay import ReplayError, execution_events

STREAM = (
    b": heartbeat\n\n"
    b'id:7\nevent:execution.started\ndata:{"type":"execution.started"}\n\n'  # no space after the colons
    b'id: 8\nevent: token\ndata: {"type": "token",\ndata:  "text": "a\\nb"}\n\n'  # data on two lines
    b'event: end\ndata: {"type":"end","execution_id":"e1"}\n\n'  # a control event: no id of its own
    b'id: 9\r\nevent: execution.completed\r\ndata: {"type":"execution.completed"}\r\n\r\n'  # CRLF
)


@contextlib.asynccontextmanager
async def serve(body: bytes, *, content_type: bytes = b"text/event-stream") -> AsyncIterator[str]:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: " + content_type + b"\r\nconnection: close\r\n\r\n")
        for i in range(0, len(body), 5):  # small writes: events arrive split across chunks
            writer.write(body[i : i + 5])
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        yield f"http://127.0.0.1:{port}"


async def test_every_shape_of_the_sse_grammar_is_read() -> None:
    async with serve(STREAM) as url:
        items = [item async for item in execution_events(url, "key", "e1")]
    assert items == [
        {"execution_id": "e1", "cursor": 7, "event": {"type": "execution.started"}},
        {"execution_id": "e1", "cursor": 8, "event": {"type": "token", "text": "a\nb"}},
        {"execution_id": "e1", "cursor": 9, "event": {"type": "execution.completed"}},
    ]


async def test_a_response_that_is_no_event_stream_is_a_replay_error() -> None:
    async with serve(b"<html>proxy</html>", content_type=b"text/html") as url:
        with pytest.raises(ReplayError, match="text/event-stream"):
            [item async for item in execution_events(url, "key", "e1")]
