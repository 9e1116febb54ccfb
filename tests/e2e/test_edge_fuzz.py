"""Property-based fuzzing of every HTTP and WebSocket edge with odd input, on the real stack.

Hypothesis draws requests to every route of the API (the routes come from the app itself, so a new
one is fuzzed too) with odd path ids, query parameters (huge, negative, non-finite numbers, long and
non-ASCII strings), headers (`Last-Event-ID`, `Idempotency-Key`, `traceparent`) and JSON bodies
(valid shapes with extreme values, deep nesting, wrong types), and WebSocket messages (binary frames,
half-valid JSON, odd cursors) on `/v1/stream` and `/ws/task_updates`. No answer may be a 5xx or take
longer than the bound; a WebSocket must answer odd input with an error frame and stay usable; and
afterwards the platform still streams another tenant's execution live to the end.

Examples per run: AGENTSTREAM_EDGE_FUZZ_EXAMPLES (default 150; `make reliability` runs more).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr
from starlette.routing import Route

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator import routes as api_routes
from services.orchestrator import streaming
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.conftest import KEYS, Stack
from tests.support import collect_events, serve

pytestmark = [
    pytest.mark.kafka,
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"),
]

EXAMPLES = int(os.environ.get("AGENTSTREAM_EDGE_FUZZ_EXAMPLES", "150"))
ADMIN_TOKEN = "edge-admin-token"
SERVICE_TOKEN = "edge-service-token"
ANSWER_BOUND_S = 10.0


def _deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


ODD_NUMBERS = ["1e20", "inf", "-inf", "nan", "NaN", "-1", "9223372036854775808", "-9223372036854775809", "99999999999999999999", "1.5"]
ODD_TEXT = ["", "0x10", "%00", "\u00ff\u202e", "1" * 5000, "2026-13-45T99:99:99Z", "2026-01-01T00:00:00", "a/../b", "null"]
ODD_JSON: list[Any] = [10**19, -(10**19), 2**63, -1, 1e308, "abc", "", None, True, [], {}, "x" * 100_000, _deep(100), _deep(300)]


def _routes() -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    for route in [*api_routes.routes(), *streaming.routes()]:
        if isinstance(route, Route):
            found += [(method, route.path) for method in sorted(route.methods or ()) if method != "HEAD"]
    return found


BODIES: dict[str, dict[str, Any]] = {
    "/v1/executions": {"input": "hi", "agent": "default", "variables": {"a": 1}, "priority": "standard"},
    "/v1/sessions": {"agent": "default"},
    "/v1/sessions/{session_id}/chat": {"input": "hi"},
    "/v1/batches": {"items": [{"input": "hi"}]},
    "/v1/jobs": {"service": "query"},
    "/v1/admin/tenants": {"tenant_id": "t-fuzz", "name": "x"},
    "/v1/admin/tenants/{tenant_id}/keys": {},
    "/v1/executions/{execution_id}/cancel": {},
    "/v1/agui/{agent}": {
        "threadId": "fuzz-thread",
        "runId": "fuzz-run",
        "state": {"a": 1},
        "messages": [{"id": "m1", "role": "user", "content": "hi"}],
        "context": [{"description": "d", "value": "v"}],
    },
    "/v1/a2a/{agent}": {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "SendMessage",
        "params": {
            "message": {"messageId": "fuzz-m1", "role": "ROLE_USER", "parts": [{"text": "hi"}], "metadata": {"a": 1}},
            "configuration": {"returnImmediately": True, "historyLength": 1},
        },
    },
}
KNOWN_QUERY = {
    "/v1/usage": ["since", "until", "group_by", "agent", "session_id"],
    "/v1/sessions/{session_id}/messages": ["after", "limit"],
    "/v1/executions/{execution_id}/events": ["cursor"],
}
QUERY_NAMES = ["since", "until", "after", "limit", "cursor", "group_by", "agent", "session_id", "stream", "api_key", "x"]


def _leaves(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict) and value:
        return [p for k, v in value.items() for p in _leaves(v, (*prefix, k))]
    if isinstance(value, list) and value:
        return [p for i, v in enumerate(value) for p in _leaves(v, (*prefix, i))]
    return [prefix]


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy: Any = list(value) if isinstance(value, list) else dict(value)
    copy[path[0]] = _set(value[path[0]], path[1:], new)
    return copy


@st.composite
def request_case(draw: st.DrawFn, ids: dict[str, str]) -> dict[str, Any]:
    method, path = draw(st.sampled_from(_routes()))
    concrete = re.sub(
        r"\{(\w+)\}",
        lambda m: draw(
            st.sampled_from([ids.get(m.group(1), "x")] * 6 + ["x", "%ff", "9" * 300, "..", "%00", "a" * 5000]),
        ),
        path,
    )
    names = KNOWN_QUERY.get(path) or QUERY_NAMES
    if draw(st.integers(0, 9)) == 0:
        names = QUERY_NAMES
    query = draw(st.dictionaries(st.sampled_from(names), st.sampled_from(ODD_NUMBERS + ODD_TEXT) | st.text(max_size=20), max_size=3))
    headers: dict[str, str | bytes] = {"Authorization": f"Bearer {ADMIN_TOKEN if path.startswith('/v1/admin') else 'key-a'}"}
    if draw(st.booleans()):
        headers["Last-Event-ID"] = draw(st.sampled_from([*ODD_NUMBERS, "0", "5"]))
    if draw(st.booleans()):
        headers["Idempotency-Key"] = draw(st.sampled_from([b"k", b"x" * 5000, b"\xc3\xbf\xff"]))
    body: Any = None
    if method in ("POST", "PUT", "PATCH"):
        body = BODIES.get(path, {})
        for _ in range(draw(st.integers(0, 3))):
            leaf = draw(st.sampled_from(_leaves(body)))
            body = _set(body, leaf, draw(st.sampled_from(ODD_JSON) | st.text(max_size=10) | st.integers()))
    return {"method": method, "url": concrete, "params": query, "headers": headers, "body": body}


WS_MESSAGES: list[str | bytes] = [
    b"\x00\x01binary",
    b'{"type": "subscribe", "execution_id": "x"}',  # valid JSON, but as a binary frame
    "{",
    "[]",
    "null",
    '"subscribe"',
    '{"type": "subscribe"}',
    '{"type": "subscribe", "execution_id": 5}',
    '{"type": "subscribe", "execution_id": "EXEC", "cursor": 99999999999999999999}',
    '{"type": "subscribe", "execution_id": "EXEC", "cursor": -5}',
    '{"type": "subscribe", "execution_id": "EXEC", "cursor": "abc"}',
    '{"type": "subscribe", "execution_id": "EXEC", "cursor": 1e308}',
    '{"type": "subscribe", "session_id": {"a": 1}}',
    '{"type": "unsubscribe", "execution_id": []}',
    '{"type": "nope"}',
    json.dumps({"type": "subscribe", "execution_id": _deep(300)}),
    "x" * 200_000,
]
TASK_MESSAGES: list[str | bytes] = [
    b"\xff\xfe",
    "{",
    "[]",
    '{"event": "job_completed"}',
    '{"event": "job_completed", "job_id": "JOB", "tenant_id": "tenant-a", "service": "query", "usage": {"total_tokens": 1e19}}',
    '{"event": "job_completed", "job_id": "JOB", "tenant_id": "tenant-a", "service": "query", "usage": {"total_tokens": -5}}',
    '{"event": "job_completed", "job_id": "JOB", "tenant_id": "tenant-a", "service": "query", "usage": {"total_tokens": "abc"}}',
    json.dumps({"event": "job_completed", "job_id": "JOB", "tenant_id": "tenant-a", "service": "query", "result": _deep(300)}),
    '{"event": "job_completed", "job_id": 5, "tenant_id": [], "service": null}',
]


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[Stack]:
    database_url = SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    orch = OrchestratorSettings(
        kafka=kafka_settings,
        api_keys=KEYS,
        database_url=database_url,
        admin_token=SecretStr(ADMIN_TOKEN),
        service_tokens={"query": SecretStr(SERVICE_TOKEN)},
        requests_per_minute=0,
        concurrent_executions=0,
    )
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=30)) as executor:
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url, timeout=ANSWER_BOUND_S) as http:
            yield Stack(url=url, kafka=kafka_settings, executor=executor, http=http, orchestrator_settings=orch)


def _draw(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    drawn: list[Any] = []

    @settings(max_examples=n, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate], database=None)
    @given(case=strategy)
    def draw(case: Any) -> None:
        drawn.append(case)

    draw()
    return drawn


def _sweep(ids: dict[str, str]) -> list[dict[str, Any]]:
    """Every known query parameter and header with every odd value, and every body leaf with every odd
    JSON value: the cases a random draw may miss."""
    cases: list[dict[str, Any]] = []

    def fill(path: str) -> str:
        return re.sub(r"\{(\w+)\}", lambda m: ids.get(m.group(1), "x"), path)

    auth = {"Authorization": "Bearer key-a"}
    for path, names in KNOWN_QUERY.items():
        for name in names:
            for value in ODD_NUMBERS + ODD_TEXT:
                cases.append({"method": "GET", "url": fill(path), "params": {name: value}, "headers": auth, "body": None})
    for value in ODD_NUMBERS:
        cases.append(
            {
                "method": "GET",
                "url": fill("/v1/executions/{execution_id}/events"),
                "params": {},
                "headers": auth | {"Last-Event-ID": value},
                "body": None,
            }
        )
    for path, body in BODIES.items():
        headers = {"Authorization": f"Bearer {ADMIN_TOKEN if path.startswith('/v1/admin') else 'key-a'}"}
        for leaf in _leaves(body):
            for value in ODD_JSON:
                cases.append({"method": "POST", "url": fill(path), "params": {}, "headers": headers, "body": _set(body, leaf, value)})
    return cases


async def _send(http: httpx.AsyncClient, case: dict[str, Any]) -> httpx.Response:
    content = None if case["body"] is None else json.dumps(case["body"]).encode()
    headers = case["headers"] | ({"Content-Type": "application/json"} if content is not None else {})
    if "/v1/a2a/" in case["url"]:
        headers["A2A-Version"] = "1.0"  # without it every case would be the SDK's version error
    async with asyncio.timeout(ANSWER_BOUND_S):
        if case["url"].endswith("/events") or "/v1/agui/" in case["url"]:  # SSE: the status line and first bytes are the answer
            async with http.stream(case["method"], case["url"], params=case["params"], headers=headers, content=content) as r:
                return r
        return await http.request(case["method"], case["url"], params=case["params"], headers=headers, content=content)


async def test_http_edges_answer_odd_input_without_5xx(stack: Stack) -> None:
    execution = await stack.submit("key-a")
    session = (await stack.http.post("/v1/sessions", json={}, headers={"Authorization": "Bearer key-a"})).json()["session_id"]
    ids = {
        "execution_id": execution,
        "session_id": session,
        "task_id": execution,
        "tenant_id": "tenant-a",
        "batch_id": "b",
        "key_id": "k",
        "agent": "default",
    }
    cases = _sweep(ids) + _draw(request_case(ids), EXAMPLES)
    by_status: dict[int, int] = {}
    server_errors: list[str] = []
    for case in cases:
        try:
            r = await _send(stack.http, case)
        except (TimeoutError, httpx.TimeoutException) as exc:
            server_errors.append(f"no answer within {ANSWER_BOUND_S:g}s: {case['method']} {case['url'][:200]} {case['params']} ({exc!r})")
            continue
        by_status[r.status_code] = by_status.get(r.status_code, 0) + 1
        if r.status_code >= 500:
            server_errors.append(f"{r.status_code}: {case['method']} {case['url'][:200]} {case['params']} {case['headers']}")
    statuses = dict(sorted(by_status.items()))
    print(f"edge fuzz: {len(cases)} requests ({len(cases) - EXAMPLES} swept, {EXAMPLES} drawn), by status {statuses}")
    assert not server_errors, f"{len(server_errors)} answers were 5xx or hung:\n" + "\n".join(server_errors[:20])
    await _canary(stack)


async def _still_answers(ws: websockets.ClientConnection, execution_id: str) -> None:
    await ws.send(orjson.dumps({"type": "subscribe", "execution_id": execution_id}).decode())
    async with asyncio.timeout(10):
        while True:
            frame = orjson.loads(await ws.recv())
            if frame.get("type") in ("subscribed", "events", "end"):
                return


async def test_websocket_edges_answer_odd_input_with_an_error_frame(stack: Stack) -> None:
    execution = await stack.submit("key-a")
    failures: list[str] = []
    for message in WS_MESSAGES:
        async with websockets.connect(f"{stack.ws_url}/v1/stream", additional_headers={"Authorization": "Bearer key-a"}) as ws:
            payload = message.replace("EXEC", execution) if isinstance(message, str) else message
            await ws.send(payload)
            try:
                async with asyncio.timeout(10):
                    frame = orjson.loads(await ws.recv())
                if frame.get("type") != "error":
                    failures.append(f"{str(message)[:80]!r}: answered {frame} instead of an error frame")
                await _still_answers(ws, execution)
            except (TimeoutError, websockets.ConnectionClosed, orjson.JSONDecodeError) as exc:
                failures.append(f"{str(message)[:80]!r}: {exc!r}")
    job = "job-edge"
    r = await stack.http.post("/v1/jobs", json={"service": "query", "job_id": job}, headers={"Authorization": "Bearer key-a"})
    assert r.status_code == 201, r.text
    async with websockets.connect(f"{stack.ws_url}/ws/task_updates", additional_headers={"Authorization": f"Bearer {SERVICE_TOKEN}"}) as ws:
        for message in TASK_MESSAGES:
            payload = message.replace("JOB", job) if isinstance(message, str) else message
            try:
                await ws.send(payload)
                async with asyncio.timeout(10):
                    frame = orjson.loads(await ws.recv())
                if frame.get("type") not in ("rejected", "error"):
                    failures.append(f"task_updates {str(message)[:80]!r}: answered {frame}")
            except (TimeoutError, websockets.ConnectionClosed, orjson.JSONDecodeError) as exc:
                failures.append(f"task_updates {str(message)[:80]!r}: {exc!r}")
                break
        else:  # the connection survived every odd message: a valid completion is still applied
            done = {"event": "job_completed", "job_id": job, "tenant_id": "tenant-a", "service": "query", "result": {"ok": 1}}
            await ws.send(json.dumps(done))
            async with asyncio.timeout(10):
                frame = orjson.loads(await ws.recv())
            if frame.get("type") != "accepted":
                failures.append(f"a valid completion after odd ones was not accepted: {frame}")
    assert not failures, "\n".join(failures)
    await _canary(stack)


async def _canary(stack: Stack) -> None:
    """After the fuzzing, another tenant's execution still streams live to its end."""
    execution_id = await stack.submit("key-b", input="canary")
    items = await collect_events(stack.ws_url, "key-b", execution_id, timeout=30)
    assert items[-1]["event"]["type"] == "execution.completed"
    # Every reader running: group readers may still be joining their group on a loaded broker (a
    # join waits for the group's rebalance), so wait for it, bounded; a dead reader never gets there.
    async with asyncio.timeout(60):
        while (ready := await stack.http.get("/health/ready")).status_code != 200:
            await asyncio.sleep(0.2)
    assert ready.status_code == 200, ready.text
