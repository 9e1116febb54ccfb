"""A fake OpenAI-compatible chat completions server: real HTTP/1.1 on 127.0.0.1, real SSE streaming.

Written on raw asyncio streams (no framework) so a benchmark can run hundreds of streams from it
without the server being the bottleneck. Serves ``POST /v1/chat/completions`` (OpenAI, any
OpenAI-compatible client) and ``POST /openai/v1/chat/completions`` (the Groq SDK's path).

What a request gets is a :class:`Reply`: queue replies per model with :meth:`FakeOpenAI.script`, or
set ``default`` (a Reply or a function of the request body). Faults: a status with ``Retry-After``,
a disconnect after N chunks, a slow first token, a token rate.

    async with FakeOpenAI() as fake:
        fake.script("m", Reply(status=429, retry_after=0.2), Reply(text=["Hel", "lo"]))
        client = openai.AsyncOpenAI(base_url=fake.openai_url, api_key="k")
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson


@dataclass(frozen=True)
class FakeToolCall:
    name: str
    arguments: str  # sent as given (may be malformed JSON on purpose), split over two chunks
    id: str = ""


@dataclass(frozen=True)
class Reply:
    text: tuple[str, ...] | list[str] = ()
    tool_calls: tuple[FakeToolCall, ...] | list[FakeToolCall] = ()
    usage: tuple[int, int] | None = (10, 5)  # prompt, completion; None: no usage chunk
    usage_in_x_groq: bool = False
    raw_usage: dict[str, Any] | None = None  # sent as given instead of ``usage`` (odd values on purpose)
    token_delay_s: float = 0.0
    first_token_delay_s: float = 0.0
    disconnect_after: int | None = None  # close the connection after this many content chunks
    status: int = 200
    retry_after: float | None = None
    error_message: str = "injected failure"
    # Benchmarks: stamp each content delta with its send time (time.time(), seconds). "{sent_at}" in
    # a text piece is replaced by it (so the stamp survives anything that forwards only the text),
    # and the chunk gets an extra top-level field "x_sent_at". Off: chunks are exactly as before.
    stamp_tokens: bool = False


@dataclass
class Seen:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]
    at: float


Responder = Reply | Callable[[dict[str, Any]], Reply]


@dataclass
class FakeOpenAI:
    host: str = "127.0.0.1"
    port: int = 0
    default: Responder = field(default_factory=lambda: Reply(text=("Hello", " from", " fake")))
    requests: list[Seen] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._scripts: dict[str, deque[Reply]] = defaultdict(deque)
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    # -- configuration -------------------------------------------------------------------
    def script(self, model: str, *replies: Reply) -> None:
        self._scripts[model].extend(replies)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def openai_url(self) -> str:
        return f"{self.url}/v1"

    def bodies(self, model: str | None = None) -> list[dict[str, Any]]:
        return [s.body for s in self.requests if model is None or s.body.get("model") == model]

    # -- lifecycle -----------------------------------------------------------------------
    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        if self._server is None:
            return
        self._server.close()
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)
        await self._server.wait_closed()
        self._server = None

    async def __aenter__(self) -> FakeOpenAI:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- HTTP ----------------------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            while await self._one_request(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # a client that went away, or stop(): either way this connection is over
        finally:
            self._handlers.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _one_request(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path, _ = lines[0].split(" ", 2)
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:] if ":" in line)}
        body = await reader.readexactly(int(headers.get("content-length", "0")))
        if method != "POST" or path.rstrip("/") not in ("/v1/chat/completions", "/openai/v1/chat/completions"):
            await _send_json(writer, 404, {"error": {"message": f"no route {method} {path}"}})
            return True
        payload = orjson.loads(body or b"{}")
        self.requests.append(Seen(path=path, headers=headers, body=payload, at=time.monotonic()))
        reply = self._reply_for(payload)
        if reply.status != 200:
            extra = {"retry-after": f"{reply.retry_after:g}"} if reply.retry_after is not None else {}
            error = {"error": {"message": reply.error_message, "type": "injected", "code": str(reply.status)}}
            await _send_json(writer, reply.status, error, extra)
            return True
        return await self._stream(writer, payload, reply)

    def _reply_for(self, payload: dict[str, Any]) -> Reply:
        queue = self._scripts.get(str(payload.get("model")))
        if queue:
            return queue.popleft()
        return self.default(payload) if callable(self.default) else self.default

    async def _stream(self, writer: asyncio.StreamWriter, payload: dict[str, Any], reply: Reply) -> bool:
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\n"
            b"transfer-encoding: chunked\r\nconnection: keep-alive\r\n\r\n"
        )
        model = str(payload.get("model", "fake"))
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        if reply.first_token_delay_s:
            await writer.drain()
            await asyncio.sleep(reply.first_token_delay_s)
        sent = 0
        for delta in _deltas(reply):
            if reply.disconnect_after is not None and sent >= reply.disconnect_after:
                writer.transport.abort()  # mid-stream: no terminating chunk, no [DONE]
                return False
            if sent and reply.token_delay_s:
                await asyncio.sleep(reply.token_delay_s)
            chunk: dict[str, Any] = base | {"choices": [{"index": 0, "delta": delta, "finish_reason": None}]}
            if reply.stamp_tokens:
                _stamp(chunk, delta)
            _chunk(writer, chunk)
            sent += 1
            await writer.drain()
        finish = "tool_calls" if reply.tool_calls else "stop"
        last: dict[str, Any] = base | {"choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}
        usage = _usage(reply)
        if usage and reply.usage_in_x_groq:
            last["x_groq"] = {"usage": usage}
        _chunk(writer, last)
        if usage and not reply.usage_in_x_groq:
            _chunk(writer, base | {"choices": [], "usage": usage})
        writer.write(_frame(b"data: [DONE]\n\n") + b"0\r\n\r\n")
        await writer.drain()
        return True


def _deltas(reply: Reply) -> list[dict[str, Any]]:
    deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
    deltas += [{"content": t} for t in reply.text]
    for i, call in enumerate(reply.tool_calls):
        half = len(call.arguments) // 2
        head = {"index": i, "id": call.id or f"call_{i}", "type": "function", "function": {"name": call.name, "arguments": ""}}
        deltas.append({"tool_calls": [head]})
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": call.arguments[:half]}}]})
        deltas.append({"tool_calls": [{"index": i, "function": {"arguments": call.arguments[half:]}}]})
    return deltas


def _stamp(chunk: dict[str, Any], delta: dict[str, Any]) -> None:
    sent_at = time.time()
    chunk["x_sent_at"] = sent_at
    content = delta.get("content")
    if content and "{sent_at}" in content:
        chunk["choices"][0]["delta"] = delta | {"content": content.replace("{sent_at}", f"{sent_at:.6f}")}


def _usage(reply: Reply) -> dict[str, Any] | None:
    if reply.raw_usage is not None:
        return reply.raw_usage
    if reply.usage is None:
        return None
    prompt, completion = reply.usage
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


def _frame(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


def _chunk(writer: asyncio.StreamWriter, event: dict[str, Any]) -> None:
    writer.write(_frame(b"data: " + orjson.dumps(event) + b"\n\n"))


async def _send_json(writer: asyncio.StreamWriter, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
    data = orjson.dumps(body)
    extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
    writer.write(f"HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {len(data)}\r\n{extra}\r\n".encode() + data)
    await writer.drain()
