"""Benchmark clients. Each ``run_*`` function runs in a worker process and returns plain data.

Every token's text is ``"<send time>;"`` (bench/fakemodel.py), so a client takes each token's
latency as its arrival time minus the stamp, whatever the hops in between coalesced.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import httpx
import openai
import orjson
import uvloop

from bench import stats
from bench.procs import API_KEY

TERMINAL = frozenset({"execution.completed", "execution.failed", "execution.cancelled"})


@dataclass
class StreamResult:
    """What one stream saw: per-token latencies (ms), time to first token (s), token records."""

    latencies_ms: list[float] = field(default_factory=list)
    ttft_s: float | None = None
    accepted_s: float | None = None  # agentstream: POST sent -> 202 received
    first_at: float | None = None
    last_at: float | None = None
    tokens: int = 0
    records: int = 0  # token.delta events (one Kafka record each) or SSE chunks
    error: str | None = None
    cpu_at_first: float | None = None  # this process's CPU seconds when the stream's first token came

    def add_text(self, text: str, arrived: float) -> None:
        for stamp in text.split(";"):
            if stamp:
                self.latencies_ms.append((arrived - float(stamp)) * 1000)
                self.tokens += 1
        if self.first_at is None:
            self.first_at = arrived
            self.cpu_at_first = time.process_time()
        self.last_at = arrived


def _merge(results: list[StreamResult], cpu_s: float, started: float) -> dict[str, Any]:
    lat: list[float] = []
    for r in results:
        lat.extend(r.latencies_ms)
    firsts = [r.first_at for r in results if r.first_at is not None]
    lasts = [r.last_at for r in results if r.last_at is not None]
    return {
        "latencies_ms": lat,
        "ttft_s": [r.ttft_s for r in results if r.ttft_s is not None],
        "accepted_s": [r.accepted_s for r in results if r.accepted_s is not None],
        "tokens": sum(r.tokens for r in results),
        "records": sum(r.records for r in results),
        "first_at": min(firsts) if firsts else None,
        "last_at": max(lasts) if lasts else None,
        "started": started,
        "errors": [r.error for r in results if r.error],
        "client_cpu_s": cpu_s,
    }


def _run(work: Callable[[], Coroutine[Any, Any, list[StreamResult]]]) -> dict[str, Any]:
    cpu0, started = time.process_time(), time.time()
    results: list[StreamResult] = uvloop.run(work())
    cpu_end, wall_end = time.process_time(), time.time()
    marks = [(r.first_at, r.cpu_at_first) for r in results if r.first_at is not None and r.cpu_at_first is not None]
    return {**_merge(results, cpu_end - cpu0, started), "client_busy": stats.busy(marks, cpu_end, wall_end)}


async def _delay_until(at: float | None) -> None:
    if at is not None:
        await asyncio.sleep(max(0.0, at - time.time()))


# -- floor: straight from the fake model ------------------------------------------------------
def run_sdk(base_url: str, model: str, n: int, start_at: float | None = None) -> dict[str, Any]:
    """``n`` streams through the ``openai`` SDK (pydantic chunk objects), as a direct client would."""

    async def one(client: openai.AsyncOpenAI) -> StreamResult:
        result = StreamResult()
        sent = time.time()
        try:
            stream = await client.chat.completions.create(model=model, messages=[{"role": "user", "content": "go"}], stream=True)
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    now = time.time()
                    if result.ttft_s is None:
                        result.ttft_s = now - sent
                    result.records += 1
                    result.add_text(chunk.choices[0].delta.content, now)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    async def work() -> list[StreamResult]:
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
        client = openai.AsyncOpenAI(base_url=base_url, api_key="k", max_retries=0, http_client=httpx.AsyncClient(limits=limits, timeout=60))  # type: ignore[arg-type]
        await _delay_until(start_at)
        try:
            return list(await asyncio.gather(*(one(client) for _ in range(n))))
        finally:
            await client.close()

    return _run(work)


def run_raw(base_url: str, model: str, n: int, start_at: float | None = None) -> dict[str, Any]:
    """``n`` streams over httpx, SSE lines parsed with orjson: the lean floor."""

    async def one(client: httpx.AsyncClient) -> StreamResult:
        result = StreamResult()
        body = {"model": model, "messages": [{"role": "user", "content": "go"}], "stream": True}
        sent = time.time()
        try:
            async with client.stream("POST", f"{base_url}/chat/completions", json=body) as response:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    choices = orjson.loads(line[6:]).get("choices")
                    content = choices[0]["delta"].get("content") if choices else None
                    if content:
                        now = time.time()
                        if result.ttft_s is None:
                            result.ttft_s = now - sent
                        result.records += 1
                        result.add_text(content, now)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    async def work() -> list[StreamResult]:
        limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
        async with httpx.AsyncClient(limits=limits, timeout=60) as client:
            await _delay_until(start_at)
            return list(await asyncio.gather(*(one(client) for _ in range(n))))

    return _run(work)


# -- agentstream: POST /v1/executions, then the WebSocket bridge -------------------------------
async def _watch(ws: aiohttp.ClientWebSocketResponse, execution_id: str, result: StreamResult, sent: float) -> None:
    await ws.send_str(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
    async for message in ws:
        if message.type != aiohttp.WSMsgType.TEXT:
            raise RuntimeError(f"websocket: {message.type.name} {message.data!r}")
        now = time.time()
        frame = orjson.loads(message.data)
        kind = frame.get("type")
        if kind == "error":
            raise RuntimeError(f"bridge: {frame}")
        if kind != "events":
            continue
        for item in frame["events"]:
            event = item["event"]
            if event["type"] == "token.delta":
                if result.ttft_s is None:
                    result.ttft_s = now - sent
                result.records += 1
                result.add_text(event["text"], now)
            elif event["type"] in TERMINAL:
                if event["type"] != "execution.completed":
                    result.error = f"{event['type']}: {event.get('reason')}"
                return


async def _post(session: aiohttp.ClientSession, url: str, agent: str) -> str:
    async with session.post(f"{url}/v1/executions", json={"input": "go", "agent": agent}, headers=_auth()) as response:
        body = await response.json(loads=orjson.loads)
        if response.status != 202:
            raise RuntimeError(f"POST /v1/executions: {response.status} {body}")
        execution_id: str = body["execution_id"]
        return execution_id


def _auth() -> dict[str, str]:
    return {"Authorization": f"Bearer {API_KEY}"}


def _session(n: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=None))


def run_agentstream(url: str, ws_url: str, agent: str, n: int, start_at: float | None = None) -> dict[str, Any]:
    """``n`` executions: each opens its WebSocket, POSTs, subscribes, and reads to the terminal event."""

    async def one(session: aiohttp.ClientSession) -> StreamResult:
        result = StreamResult()
        try:
            async with session.ws_connect(ws_url, compress=0, max_msg_size=0) as ws:
                sent = time.time()
                execution_id = await _post(session, url, agent)
                result.accepted_s = time.time() - sent
                await asyncio.wait_for(_watch(ws, execution_id, result, sent), 120)
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    async def work() -> list[StreamResult]:
        async with _session(n) as session:
            await _delay_until(start_at)
            return list(await asyncio.gather(*(one(session) for _ in range(n))))

    return _run(work)


def run_subscribers(id_file: str, n: int, ws_url: str, hold_until: float | None = None, release: str | None = None) -> dict[str, Any]:
    """``n`` WebSockets: connect all, then (once ``id_file`` names the execution) subscribe all to it.

    Connecting first keeps connection set-up out of the delivery latency. With ``hold_until`` they
    stay (idle) until then, or until the file ``release`` exists."""

    def exists(path: str | None) -> bool:
        return path is not None and os.path.exists(path)

    async def execution_id() -> str:
        while not exists(id_file):
            await asyncio.sleep(0.01)
        with open(id_file) as f:  # noqa: ASYNC230 - written once, tiny
            return f.read().strip()

    async def one(session: aiohttp.ClientSession, ready: asyncio.Future[str], counted: list[int]) -> StreamResult:
        result = StreamResult()
        try:
            async with session.ws_connect(ws_url, compress=0, max_msg_size=0, heartbeat=None) as ws:
                # A round trip through the bridge: authenticated and reading our messages.
                await ws.send_str('{"type": "ping"}')
                await ws.receive(timeout=120)
                counted[0] += 1
                if counted[0] == n:
                    with open(f"{id_file}.ready-{os.getpid()}", "w") as f:  # noqa: ASYNC230 - once, tiny
                        f.write(str(n))
                eid = await ready
                if hold_until is None:
                    await asyncio.wait_for(_watch(ws, eid, result, time.time()), 120)
                else:  # idle: subscribed to an execution that emits nothing until long after hold_until
                    watch = asyncio.ensure_future(_watch(ws, eid, result, time.time()))
                    while not watch.done() and time.time() < hold_until and not exists(release):
                        await asyncio.wait({watch}, timeout=0.5)
                    watch.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await watch
        except Exception as exc:
            result.error = f"{type(exc).__name__}: {exc}"
        return result

    async def work() -> list[StreamResult]:
        ready: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        async with _session(n) as session:
            counted = [0]
            clients = asyncio.gather(*(one(session, ready, counted) for _ in range(n)))
            ready.set_result(await execution_id())
            return list(await clients)

    return _run(work)


def run_accept(url: str, agent: str, seconds: float, concurrency: int) -> dict[str, Any]:
    """POST /v1/executions in ``concurrency`` loops for ``seconds``: latency of each 202 (ms)."""
    return run_requests(url, "/v1/executions", orjson.dumps({"input": "go", "agent": agent}), 202, seconds, concurrency)


def run_requests(url: str, path: str, body: bytes | None, expected: int, seconds: float, concurrency: int) -> dict[str, Any]:
    """``concurrency`` keep-alive loops for ``seconds``: POST ``body`` (GET without one) to ``path``;
    the latency of each ``expected`` answer (ms), the others counted by status."""

    async def loop(session: aiohttp.ClientSession, deadline: float, out: list[float], errors: list[str]) -> None:
        headers = {**_auth(), "Content-Type": "application/json"}
        method = "GET" if body is None else "POST"
        while time.monotonic() < deadline:
            sent = time.perf_counter()
            async with session.request(method, f"{url}{path}", data=body, headers=headers) as response:
                await response.read()
                if response.status == expected:
                    out.append((time.perf_counter() - sent) * 1000)
                elif len(errors) < 20:
                    errors.append(f"{response.status}")

    async def work() -> tuple[list[float], list[str], float]:
        out: list[float] = []
        errors: list[str] = []
        async with _session(concurrency) as session:
            started = time.monotonic()
            deadline = started + seconds
            await asyncio.gather(*(loop(session, deadline, out, errors) for _ in range(concurrency)))
            return out, errors, time.monotonic() - started

    cpu0 = time.process_time()
    latencies, errors, elapsed = uvloop.run(work())
    return {"latencies_ms": latencies, "errors": errors, "elapsed_s": elapsed, "client_cpu_s": time.process_time() - cpu0}
