"""Hostile URLs and answers: callback URLs (executions, chats, batches) and HTTP-tool URLs aimed at
loopback, private, link-local, shared and reserved ranges, in every spelling (decimal, octal, hex,
IPv4-mapped IPv6, names resolving to loopback) are refused; redirects are never followed; huge
answers are not read; a server dribbling bytes is cut off at a deadline.

The servers here listen on 127.0.0.1 only and close themselves after ``lifetime_s``. The hostile
URLs point at such a server's port, so a check that let one through would show up as a hit."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.httptools import MAX_RESPONSE_BYTES, HttpTool
from services.executor.providers.base import ToolSpec
from services.executor.settings import ExecutorSettings
from services.executor.tools import ToolDefinitionError, ToolError
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.conftest import Stack
from tests.support import serve

pytestmark = [pytest.mark.kafka, pytest.mark.reliability]

INSIDE_HOSTS = [
    "127.0.0.1", "127.1", "127.0.0.2", "2130706433", "017700000001", "0177.0.0.1", "0x7f000001", "0x7f.0.0.1",
    "localhost", "LOCALHOST", "localhost.", "[::1]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:127.0.0.1]",
    "[::127.0.0.1]", "0.0.0.0", "0", "[::]", "10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.254", "192.168.0.1",
    "192.168.255.254", "169.254.169.254", "[fe80::1]", "[fc00::1]", "[fd12:3456::1]", "100.64.0.1", "198.18.0.1",
    "224.0.0.1", "255.255.255.255",
]  # fmt: skip
NOT_HTTP = ["file:///etc/passwd", "ftp://127.0.0.1/", "gopher://127.0.0.1:70/_x", "javascript:alert(1)", "//127.0.0.1/", "http:///x"]


@dataclass
class Server:
    url: str
    hits: int = 0
    bytes_sent: int = 0


@contextlib.asynccontextmanager
async def loopback_server(behaviour: str, *, target: str = "", lifetime_s: float = 30.0) -> AsyncIterator[Server]:
    """A raw HTTP/1.1 server on 127.0.0.1: ``ok``, ``redirect`` (302 to ``target``), ``huge`` (an endless
    200 body), ``huge-declared`` (Content-Length of 10 GB), ``slowloris`` (one header byte every 0.2 s)."""
    state = Server(url="")
    deadline = time.monotonic() + lifetime_s

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.hits += 1
        try:
            async with asyncio.timeout(max(0.1, deadline - time.monotonic())):
                head = await reader.readuntil(b"\r\n\r\n")
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                if behaviour == "ok":
                    writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 15\r\n\r\n{"result":"ok"}')
                elif behaviour == "redirect":
                    writer.write(f"HTTP/1.1 302 Found\r\nlocation: {target}\r\ncontent-length: 0\r\n\r\n".encode())
                elif behaviour == "huge-declared":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 10000000000\r\n\r\n[")
                elif behaviour == "huge":
                    writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n\r\n[")
                    chunk = b"0," * (1 << 19)
                    while state.bytes_sent < 4 << 30:  # 4 GiB unless the client hangs up first
                        writer.write(chunk)
                        await writer.drain()
                        state.bytes_sent += len(chunk)
                elif behaviour == "slowloris":
                    for byte in b"HTTP/1.1 200 OK\r\nx-slow: " + b"z" * 10_000:
                        writer.write(bytes([byte]))
                        await writer.drain()
                        await asyncio.sleep(0.2)
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    state.url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/hook"
    stopper = asyncio.get_running_loop().call_later(lifetime_s, server.close)  # stops by itself
    try:
        yield state
    finally:
        stopper.cancel()
        server.close()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 5)


def hostile_urls(port: int) -> list[str]:
    return [f"http://{host}:{port}/hook" for host in INSIDE_HOSTS] + [f"https://{host}/" for host in INSIDE_HOSTS[:6]] + NOT_HTTP


async def test_callback_urls_aimed_inside_are_refused(stack: Stack) -> None:
    auth = {"Authorization": "Bearer key-a"}
    session = (await stack.http.post("/v1/sessions", json={"agent": "default"}, headers=auth)).json()["session_id"]
    cases = 0
    async with loopback_server("ok") as server:
        port = int(server.url.split(":")[2].split("/")[0])
        urls = [*hostile_urls(port), f"http://user:pw@example.com:{port}/"]
        for url in urls:
            for path, body in (
                ("/v1/executions", {"input": "hi", "callback_url": url}),
                ("/v1/batches", {"items": [{"input": "hi"}], "callback_url": url}),
                (f"/v1/sessions/{session}/chat", {"content": "hi", "callback_url": url}),
            ):
                r = await stack.http.post(path, json=body, headers=auth)
                cases += 1
                assert r.status_code == 422, (path, url, r.status_code, r.text)
        await asyncio.sleep(0.5)
        assert server.hits == 0
    print(f"\nhostile callback URLs: {cases} submissions ({len(urls)} URLs x 3 endpoints), all 422, 0 hits")


async def test_http_tool_urls_aimed_inside_are_refused() -> None:
    spec = ToolSpec(name="probe", description="", parameters={"type": "object"})
    at_registration = at_call = 0
    async with loopback_server("ok") as server, httpx.AsyncClient(timeout=2.0) as client:
        port = int(server.url.split(":")[2].split("/")[0])
        for url in hostile_urls(port):
            try:
                tool = HttpTool(spec, url, client=client)
            except ToolDefinitionError:
                at_registration += 1
                continue
            with pytest.raises(ToolError, match=r"private or loopback|resolve"):
                await tool({})
            at_call += 1
        assert server.hits == 0
        assert await HttpTool(spec, server.url, client=client, allow_private=True)({}) == "ok"  # the server does answer
    print(f"\nhostile tool URLs: {at_registration} refused at registration, {at_call} after DNS at call time, 0 hits")


async def test_http_tool_redirects_huge_and_slow_answers_are_refused_or_bounded() -> None:
    spec = ToolSpec(name="probe", description="", parameters={"type": "object"})
    async with httpx.AsyncClient(timeout=1.0) as client:
        # The first hop is allowed (loopback, allow_private) only so the test can serve it; the target is never called.
        async with loopback_server("ok") as target, loopback_server("redirect", target=target.url) as hop:
            with pytest.raises(ToolError, match="redirects are not followed"):
                await HttpTool(spec, hop.url, client=client, allow_private=True)({})
            assert hop.hits == 1 and target.hits == 0
        async with loopback_server("huge") as huge:
            started = time.monotonic()
            with pytest.raises(ToolError, match=f"more than {MAX_RESPONSE_BYTES} bytes"):
                await HttpTool(spec, huge.url, client=client, allow_private=True)({})
            huge_s = time.monotonic() - started
        async with loopback_server("huge-declared") as declared:
            with pytest.raises(ToolError, match="10000000000 bytes"):
                await HttpTool(spec, declared.url, client=client, allow_private=True)({})
        async with loopback_server("slowloris") as slow:
            started = time.monotonic()
            with pytest.raises(ToolError, match="no complete answer within 1s"):
                await HttpTool(spec, slow.url, client=client, allow_private=True)({})
            slow_s = time.monotonic() - started
    assert huge.bytes_sent < 64 << 20, huge.bytes_sent
    assert slow_s < 2.5, slow_s
    print(f"\ntool: huge answer cut after {huge.bytes_sent >> 20} MiB sent in {huge_s:.2f}s; slowloris cut after {slow_s:.2f}s")


@pytest.fixture
async def permissive_stack(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Callbacks to loopback allowed (the test servers are there), a 2 s deadline, one attempt each."""
    orch = OrchestratorSettings(
        kafka=kafka_settings,
        api_keys={"key-a": "tenant-a"},
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        callbacks_allow_private=True,
        callback_timeout_s=2.0,
        callback_max_attempts=1,
        callback_poll_s=0.1,
    )
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=0)):
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, headers={"Authorization": "Bearer key-a"}) as http:
            yield http


async def _settled(http: httpx.AsyncClient, url: str) -> tuple[dict[str, object], float]:
    r = await http.post("/v1/executions", json={"input": "what is 2+2?", "callback_url": url})
    execution_id = r.json()["execution_id"]
    started = time.monotonic()
    async with asyncio.timeout(30):
        while True:
            view = (await http.get(f"/v1/executions/{execution_id}")).json()
            if view["callbacks"] and view["callbacks"][0]["state"] != "pending":
                return view["callbacks"][0], time.monotonic() - started
            await asyncio.sleep(0.05)


async def test_callback_redirects_huge_and_slow_answers_are_refused_or_bounded(permissive_stack: httpx.AsyncClient) -> None:
    http = permissive_stack
    async with loopback_server("ok") as target, loopback_server("redirect", target=target.url) as hop:
        delivery, _ = await _settled(http, hop.url)
        assert delivery["state"] == "failed" and delivery["last_status"] == 302, delivery
        assert hop.hits == 1 and target.hits == 0
    async with loopback_server("huge") as huge:
        delivery, huge_s = await _settled(http, huge.url)
        assert delivery["state"] == "delivered" and delivery["last_status"] == 200, delivery  # the status is all that counts
    async with loopback_server("huge-declared") as declared:
        delivery, _ = await _settled(http, declared.url)
        assert delivery["state"] == "delivered", delivery
    async with loopback_server("slowloris") as slow:
        delivery, slow_s = await _settled(http, slow.url)
        assert delivery["state"] == "failed" and "no complete answer within 2s" in str(delivery["last_error"]), delivery
    assert huge.bytes_sent < 64 << 20, huge.bytes_sent
    assert slow_s < 8, slow_s  # the execution itself, then at most the 2 s deadline
    print(
        f"\ncallbacks: redirect not followed; huge answer: {huge.bytes_sent >> 20} MiB sent, settled in {huge_s:.2f}s; "
        f"slowloris settled in {slow_s:.2f}s"
    )
