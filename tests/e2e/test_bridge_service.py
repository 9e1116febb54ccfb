"""The bridge as a service of its own: two bridge processes and two API processes apart, one broker,
one state store. Executions are submitted through either API; WebSocket and SSE clients read part of
an execution on one bridge and resume on the other with its cursor, and get every event after the
cursor exactly once, in order. Another tenant's execution is "execution not found" on a bridge too.

The last tests hold both apps' lifespans to "nothing leaks when a later start step fails"."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import orjson
import pytest
import websockets
from pydantic import SecretStr

from schemas.events import TERMINAL_TYPES
from schemas.status import ExecutionStatus
from services.common.kafka import make_producer
from services.common.settings import KafkaSettings
from services.common.statusview import status_record
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.bridgeapp import create_bridge_app
from services.orchestrator.settings import OrchestratorSettings
from tests.support import serve

pytestmark = pytest.mark.kafka

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
EXECUTIONS = 4
HEAD = 3  # events a client reads on the first bridge before it leaves


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _spawn(command: str, kafka: KafkaSettings, database: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = _free_port()
    env = {
        **os.environ,
        "AGENTSTREAM_KAFKA_BOOTSTRAP": kafka.bootstrap,
        "AGENTSTREAM_KAFKA_TOPIC_PREFIX": kafka.topic_prefix,
        "AGENTSTREAM_KAFKA_PARTITIONS": str(kafka.partitions),
        "AGENTSTREAM_API_KEYS": orjson.dumps(KEYS).decode(),
        "AGENTSTREAM_DATABASE_URL": f"sqlite+aiosqlite:///{database}",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "services.cli", command, "--port", str(port)], env=env, stdout=out, stderr=out)
    return proc, f"http://127.0.0.1:{port}"


def _tail(log: Path) -> str:
    return log.read_text()[-2000:]


async def _wait_ready(http: httpx.AsyncClient, url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    async with asyncio.timeout(60):
        while True:
            if proc.poll() is not None:
                raise AssertionError(f"{url} exited ({proc.returncode}): {_tail(log)}")
            with contextlib.suppress(httpx.HTTPError):
                if (await http.get(f"{url}/health/ready")).status_code == 200:
                    return
            await asyncio.sleep(0.2)


@contextlib.contextmanager
def _stopped_at_exit(procs: list[subprocess.Popen[bytes]]) -> Iterator[None]:
    try:
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


async def _ws_events(url: str, key: str, execution_id: str, *, cursor: int | None, stop_after: int | None) -> list[tuple[int, str]]:
    """(cursor, type) of the events one WebSocket client gets: ``stop_after`` of them, or all until the terminal one."""
    got: list[tuple[int, str]] = []
    async with websockets.connect(f"{url.replace('http', 'ws', 1)}/v1/stream?api_key={key}") as ws:
        await ws.send(
            orjson.dumps({"type": "subscribe", "execution_id": execution_id, **({} if cursor is None else {"cursor": cursor})}).decode()
        )
        async with asyncio.timeout(60):
            while True:
                frame = orjson.loads(await ws.recv())
                if frame["type"] == "error":
                    raise AssertionError(frame)
                if frame["type"] == "end":
                    return got
                for item in frame.get("events", ()) if frame["type"] == "events" else ():
                    got.append((item["cursor"], item["event"]["type"]))
                    if len(got) == stop_after or item["event"]["type"] in TERMINAL_TYPES:
                        return got


async def _sse_events(http: httpx.AsyncClient, url: str, key: str, execution_id: str, *, cursor: int) -> list[tuple[int, str]]:
    """(id, event) of every event an SSE client gets after ``Last-Event-ID: cursor``, until the stream ends."""
    got: list[tuple[int, str]] = []
    headers = {"Authorization": f"Bearer {key}", "Last-Event-ID": str(cursor)}
    async with asyncio.timeout(60), http.stream("GET", f"{url}/v1/executions/{execution_id}/events", headers=headers) as response:
        assert response.status_code == 200, await response.aread()
        fields: dict[str, str] = {}
        async for line in response.aiter_lines():
            if line:
                name, _, value = line.partition(": ")
                fields[name] = value
                continue
            if "id" in fields:
                got.append((int(fields["id"]), fields["event"]))
            fields = {}
    return got


async def test_clients_resume_across_two_bridges_apart_from_two_apis(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    database, log = tmp_path / "state.db", tmp_path / "services.log"
    procs: list[subprocess.Popen[bytes]] = []
    with _stopped_at_exit(procs):
        async with (
            httpx.AsyncClient(timeout=30) as http,
            Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=20)),
        ):
            apis: list[str] = []
            for _ in range(2):  # one after the other: the first one migrates the store both share
                proc, url = _spawn("orchestrator", kafka_settings, database, log)
                procs.append(proc)
                await _wait_ready(http, url, proc, log)
                apis.append(url)
            bridges: list[str] = []
            for _ in range(2):
                proc, url = _spawn("bridge", kafka_settings, database, log)
                procs.append(proc)
                bridges.append(url)
            for proc, url in zip(procs[2:], bridges, strict=True):
                await _wait_ready(http, url, proc, log)

            submitted = []
            for i in range(EXECUTIONS):
                body, auth = {"input": f"tell me about {i}"}, {"Authorization": "Bearer key-a"}
                r = await http.post(f"{apis[i % 2]}/v1/executions", json=body, headers=auth)
                assert r.status_code == 202, r.text
                submitted.append(r.json()["execution_id"])

            async def follow(i: int, execution_id: str) -> tuple[list[tuple[int, str]], list[tuple[int, str]], list[tuple[int, str]]]:
                first, other = bridges[i % 2], bridges[(i + 1) % 2]
                head = await _ws_events(first, "key-a", execution_id, cursor=None, stop_after=HEAD)
                cursor = head[-1][0]
                if i % 2:
                    rest = await _sse_events(http, other, "key-a", execution_id, cursor=cursor)
                else:
                    rest = await _ws_events(other, "key-a", execution_id, cursor=cursor, stop_after=None)
                whole = await _ws_events(first, "key-a", execution_id, cursor=None, stop_after=None)
                return head, rest, whole

            results = await asyncio.gather(*(follow(i, e) for i, e in enumerate(submitted)))
            for head, rest, whole in results:
                assert len(head) == HEAD and rest, (head, rest)
                assert whole[-1][1] == "execution.completed"
                # Every event after the cursor, exactly once, in order: what the other bridge gave is the tail of the whole.
                assert head + rest == whole
                assert [c for c, _ in whole] == sorted({c for c, _ in whole})

            # Ownership as on the API: another tenant's execution does not exist, on either bridge, either transport.
            for url in bridges:
                r = await http.get(f"{url}/v1/executions/{submitted[0]}/events", headers={"Authorization": "Bearer key-b"})
                assert (r.status_code, r.json()) == (404, {"error": "execution not found"})
                with pytest.raises(AssertionError, match="execution not found"):
                    await _ws_events(url, "key-b", submitted[0], cursor=None, stop_after=None)
                r = await http.get(f"{url}/v1/executions/{submitted[0]}/events", headers={"Authorization": "Bearer nope"})
                assert r.status_code == 401
                assert (await http.get(f"{url}/v1/executions")).status_code == 404  # the API is not served here
                assert "agentstream" in (await http.get(f"{url}/metrics")).text


@contextlib.asynccontextmanager
async def _no_new_tasks() -> AsyncIterator[None]:
    before = asyncio.all_tasks()
    yield
    left: list[str] = []
    for _ in range(100):  # cancelled tasks finish within a few loop turns; a loaded machine may need more
        left = [t.get_name() for t in asyncio.all_tasks() - before if not t.done()]
        if not left:
            break
        await asyncio.sleep(0.05)
    assert left == [], f"still running after a failed start: {left}"


async def test_an_orchestrator_start_that_fails_late_leaves_nothing_running(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    # The agents file is read after the producer, the status view and the bridge tail started.
    settings = OrchestratorSettings(
        kafka=kafka_settings,
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
        agents_file=tmp_path / "missing.yaml",
    )
    app = create_app(settings)
    async with _no_new_tasks():
        with pytest.raises(Exception, match="cannot read agents file"):
            async with app.router.lifespan_context(app):
                pass


async def test_a_bridge_start_that_fails_late_leaves_nothing_running(kafka_settings: KafkaSettings) -> None:
    # The state store opens last, after the producer, the status view and the bridge tail.
    settings = OrchestratorSettings(kafka=kafka_settings, database_url=SecretStr("postgresql+asyncpg://nobody:x@127.0.0.1:9/none"))
    app = create_bridge_app(settings)
    async with _no_new_tasks():
        with pytest.raises(Exception, match="cannot open the state store"):
            async with app.router.lifespan_context(app):
                pass


async def test_a_bridge_waits_briefly_for_an_execution_the_api_just_accepted(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """Apart from the API, the bridge learns of an execution from the status topic a moment after the
    202: a subscription in between is answered once the snapshot arrives, not with a 404."""
    settings = OrchestratorSettings(
        kafka=kafka_settings, api_keys=KEYS, database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    )
    async with serve(create_bridge_app(settings)) as url, make_producer(kafka_settings, client_id="test") as producer:
        ws_url = url.replace("http", "ws", 1)
        async with (
            websockets.connect(f"{ws_url}/v1/stream?api_key=key-a") as mine,
            websockets.connect(f"{ws_url}/v1/stream?api_key=key-b") as theirs,
        ):
            for ws in (mine, theirs):
                await ws.send(orjson.dumps({"type": "subscribe", "execution_id": "just-accepted"}).decode())
            await asyncio.sleep(0.3)  # both wait: the bridge has not seen the snapshot yet
            key, value = status_record(ExecutionStatus(execution_id="just-accepted", tenant_id="tenant-a"))
            await producer.send_and_wait(kafka_settings.topics.status, value, key=key)
            async with asyncio.timeout(10):
                assert orjson.loads(await mine.recv()) == {"type": "subscribed", "execution_id": "just-accepted", "status": "queued"}
                refused = orjson.loads(await theirs.recv())
            assert (refused["code"], refused["error"]) == (404, "execution not found")  # another tenant's, still


async def test_a_key_revoked_on_the_api_closes_its_streams_on_a_bridge(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    """Stored keys are the API's; a bridge looks them up in the same store, read-only, and rechecks the
    keys of its open streams every ``auth_cache_s``: a key revoked on the API closes them (4401)."""
    admin = "admin-token"
    settings = OrchestratorSettings(
        kafka=kafka_settings,
        api_keys=KEYS,
        admin_token=SecretStr(admin),
        auth_cache_s=0.5,
        database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"),
    )
    auth = {"Authorization": f"Bearer {admin}"}
    async with serve(create_app(settings)) as api, serve(create_bridge_app(settings)) as bridge, httpx.AsyncClient(timeout=30) as http:
        assert (await http.post(f"{api}/v1/admin/tenants", json={"tenant_id": "acme"}, headers=auth)).status_code == 201
        made = (await http.post(f"{api}/v1/admin/tenants/acme/keys", json={"name": "ci"}, headers=auth)).json()
        secret, key_id = made["api_key"], made["key_id"]
        r = await http.post(f"{api}/v1/executions", json={"input": "hi"}, headers={"Authorization": f"Bearer {secret}"})
        execution_id = r.json()["execution_id"]  # no executor: it stays queued, the streams stay open
        async with websockets.connect(f"{bridge.replace('http', 'ws', 1)}/v1/stream?api_key={secret}") as ws:
            await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
            async with asyncio.timeout(10):
                assert orjson.loads(await ws.recv())["type"] == "subscribed"
            assert (await http.delete(f"{api}/v1/admin/keys/{key_id}", headers=auth)).status_code == 200
            async with asyncio.timeout(10):
                with pytest.raises(websockets.ConnectionClosed) as closed:
                    while True:
                        await ws.recv()
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
        r = await http.get(f"{bridge}/v1/executions/{execution_id}/events", headers={"Authorization": f"Bearer {secret}"})
        assert r.status_code == 401
