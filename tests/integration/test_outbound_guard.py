"""Outbound calls go where they were checked: a name whose DNS answer turns from public to loopback
between the check and the connect (DNS rebinding) reaches nothing, for callbacks, HTTP tools and the
Tool Registry. The resolver is the in-memory ``ScriptedResolver``; the target is a real HTTP server on
127.0.0.1 that counts what it receives, and must receive nothing."""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from services.common.urlguard import RefusedAddress, ScriptedResolver, guarded_client
from services.executor.httptools import HttpTool, RegistryTool, ToolRegistry
from services.executor.providers.base import ToolSpec
from services.executor.tools import ToolError
from services.orchestrator.callbacks import Dispatcher
from services.orchestrator.settings import OrchestratorSettings
from services.orchestrator.store import Store, records, tenants

PUBLIC = "93.184.215.14"  # what the name answers at check time; never connected to in these tests
SPEC = ToolSpec(name="probe", description="", parameters={"type": "object"})


@dataclass
class Target:
    port: int
    requests: list[bytes] = field(default_factory=list)
    connections: int = 0


@contextlib.asynccontextmanager
async def target_server(tls: ssl.SSLContext | None = None) -> AsyncIterator[Target]:
    """HTTP/1.1 on 127.0.0.1 answering 200 ``{"result": "inside"}`` and recording each request head."""
    state = Target(port=0)

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        state.connections += 1
        try:
            async with asyncio.timeout(5):
                head = await reader.readuntil(b"\r\n\r\n")
                state.requests.append(head)
                length = next((int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                writer.write(b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 20\r\n\r\n{"result": "inside"}')
                await writer.drain()
        except (TimeoutError, ConnectionError, asyncio.IncompleteReadError, ssl.SSLError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=tls)
    state.port = server.sockets[0].getsockname()[1]
    try:
        yield state
    finally:
        server.close()
        await server.wait_closed()


def rebinding(host: str) -> ScriptedResolver:
    return ScriptedResolver({host: [[PUBLIC], ["127.0.0.1"]]})


async def test_guarded_client_refuses_what_it_resolves_inside_and_connects_to_what_it_resolved_when_allowed() -> None:
    async with target_server() as target:
        url = f"http://svc.test:{target.port}/x"
        async with guarded_client(timeout=2, resolver=ScriptedResolver({"svc.test": [["127.0.0.1"]]})) as client:
            with pytest.raises(RefusedAddress, match=r"svc\.test \(127\.0\.0\.1\) is a loopback"):
                await client.get(url)
            with pytest.raises(RefusedAddress):
                await client.get(f"http://127.0.0.1:{target.port}/x")  # a literal is checked too
        assert target.connections == 0
        # Allowed: "svc.test" exists only in the scripted resolver, so an answer proves the socket went to its address.
        async with guarded_client(timeout=2, allow_private=True, resolver=ScriptedResolver({"svc.test": [["127.0.0.1"]]})) as client:
            response = await client.get(url)
        assert response.json() == {"result": "inside"}
        assert f"host: svc.test:{target.port}".encode() in target.requests[0].lower()  # the Host header keeps the name


async def test_guarded_client_with_the_system_resolver() -> None:
    async with target_server() as target:
        async with guarded_client(timeout=2) as client:
            with pytest.raises(RefusedAddress, match="localhost"):
                await client.get(f"http://localhost:{target.port}/")
        assert target.connections == 0
        async with guarded_client(timeout=2, allow_private=True) as client:
            assert (await client.get(f"http://localhost:{target.port}/")).json() == {"result": "inside"}


async def test_guarded_client_mixed_answer_is_refused_whole_and_unresolvable_is_a_connect_error() -> None:
    async with target_server() as target:
        resolver = ScriptedResolver({"mixed.test": [[PUBLIC, "127.0.0.1"]]})
        async with guarded_client(timeout=2, resolver=resolver) as client:
            with pytest.raises(RefusedAddress):
                await client.get(f"http://mixed.test:{target.port}/")
            with pytest.raises(httpx.ConnectError, match="does not resolve"):
                await client.get(f"http://nowhere.test:{target.port}/")
        assert target.connections == 0


async def test_http_tool_rebinding_reaches_nothing() -> None:
    async with target_server() as target:
        resolver = rebinding("tools.test")
        async with guarded_client(timeout=2, resolver=resolver) as client:
            tool = HttpTool(SPEC, f"http://tools.test:{target.port}/probe", client=client, resolver=resolver)
            with pytest.raises(ToolError, match="refused") as info:
                await tool({})
        assert not info.value.retriable
        assert resolver.asked == ["tools.test", "tools.test"]  # checked once (public), then connect-time (loopback)
        assert target.connections == 0


async def test_tool_registry_invoke_rebinding_reaches_nothing() -> None:
    async with target_server() as target:
        resolver = rebinding("registry.test")
        async with guarded_client(timeout=2, resolver=resolver) as client:
            registry = ToolRegistry(f"http://registry.test:{target.port}", client=client, resolver=resolver)
            with pytest.raises(ToolError, match="refused"):
                await RegistryTool(SPEC, registry)({"q": 1})
        assert resolver.asked == ["registry.test", "registry.test"]
        assert target.connections == 0


async def test_tool_registry_invoke_checks_the_resolved_address() -> None:
    """Before, ``invoke`` resolved nothing itself: a registry name answering loopback was called."""
    async with target_server() as target:
        resolver = ScriptedResolver({"registry.test": [["127.0.0.1"]]})
        async with guarded_client(timeout=2, resolver=resolver) as client:
            registry = ToolRegistry(f"http://registry.test:{target.port}", client=client, resolver=resolver)
            with pytest.raises(ToolError, match="private or loopback"):
                await registry.invoke("probe", {})
        assert target.connections == 0


async def test_callback_rebinding_reaches_nothing_and_fails_for_good(tmp_path: Path) -> None:
    settings = OrchestratorSettings(
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"), callback_max_attempts=5, callback_timeout_s=2
    )
    async with target_server() as target, Store(settings.database_url.get_secret_value()) as store:
        async with store.begin() as conn:
            await tenants.create_tenant(conn, "tenant-a")
            await records.enqueue_delivery(
                conn,
                id="d1",
                tenant_id="tenant-a",
                target_kind="execution",
                target_id="e1",
                url=f"http://hooks.test:{target.port}/hook",
                payload={"ok": True},
            )
        resolver = rebinding("hooks.test")
        dispatcher = Dispatcher(settings, store, resolver=resolver)
        await dispatcher.start()
        try:
            assert await dispatcher.run_due() == 1
        finally:
            await dispatcher.stop()
        async with store.begin() as conn:
            (delivery,) = await records.deliveries_of(conn, "e1", tenant_id="tenant-a")
        assert resolver.asked == ["hooks.test", "hooks.test"]
        assert delivery.state == "failed", delivery  # not retried: an address inside stays refused
        assert "127.0.0.1" in str(delivery.last_error) and "refused" in str(delivery.last_error)
        assert target.connections == 0


def _certificate(tmp_path: Path, name: str) -> tuple[Path, Path]:
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", f"/CN={name}",
         "-addext", f"subjectAltName=DNS:{name}", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


async def test_tls_keeps_the_name_for_sni_and_the_certificate_check(tmp_path: Path) -> None:
    cert, key = _certificate(tmp_path, "tls.test")
    served = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    served.load_cert_chain(cert, key)
    seen_sni: list[str | None] = []
    served.sni_callback = lambda _sock, name, _ctx: seen_sni.append(name)
    trusting = ssl.create_default_context(cafile=str(cert))
    async with target_server(tls=served) as target:
        resolver = ScriptedResolver({"tls.test": [["127.0.0.1"]], "other.test": [["127.0.0.1"]]})
        async with guarded_client(timeout=2, allow_private=True, resolver=resolver, verify=trusting) as client:
            response = await client.get(f"https://tls.test:{target.port}/")
            assert response.json() == {"result": "inside"}
            with pytest.raises(httpx.ConnectError, match=r"CERTIFICATE_VERIFY_FAILED|certificate verify failed"):
                await client.get(f"https://other.test:{target.port}/")  # same address, a name the certificate does not name
    assert seen_sni[:2] == ["tls.test", "other.test"]
