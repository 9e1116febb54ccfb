"""One validation, shared (property-based, on the real app and broker): for odd ``variables``, ids and
usage, the HTTP or WebSocket edge either answers 4xx / ``rejected`` on a connection that stays open,
or what it publishes passes the executor's own parse of the record (``model_validate_json`` of the
lane record's bytes). Never a 5xx."""

from __future__ import annotations

import asyncio
import json
import urllib.parse
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import websockets
from aiokafka import AIOKafkaConsumer
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from schemas.bounds import MAX_TOKENS
from schemas.events import ExecutionRequested
from services.common.sources import open_tail
from tests.e2e.orchestrator.conftest import SERVICE_TOKEN, Launcher, Orch

pytestmark = [
    pytest.mark.kafka,
    # Hypothesis and the app share one event loop here; the Kafka clients use `random` for jitter.
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"),
]

EXAMPLES = 60
PROPERTY = settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@dataclass
class Edge:
    orch: Orch
    lanes: AIOKafkaConsumer
    service: Any  # the /ws/task_updates connection, open for the whole test


@pytest.fixture
async def edge(launch: Launcher, sqlite_url: str) -> AsyncIterator[Edge]:
    async with launch(sqlite_url, executor=False, requests_per_minute=0, concurrent_executions=0) as orch:
        source, _ = await open_tail(orch.kafka, orch.kafka.topics.lanes, client_id="property-lanes")
        lanes = source.consumer
        headers = {"Authorization": f"Bearer {SERVICE_TOKEN}"}
        try:
            async with websockets.connect(f"{orch.ws_url}/ws/task_updates", additional_headers=headers) as service:
                yield Edge(orch, lanes, service)
        finally:
            await lanes.stop()


async def published(edge: Edge, execution_ids: set[str]) -> dict[str, bytes]:
    """The lane records of these executions, as the executor receives them."""
    found: dict[str, bytes] = {}
    async with asyncio.timeout(15):
        while len(found) < len(execution_ids):
            for records in (await edge.lanes.getmany(timeout_ms=200)).values():
                for record in records:
                    execution_id = str(orjson.loads(record.value or b"{}").get("execution_id"))
                    if execution_id in execution_ids:
                        found[execution_id] = record.value or b""
    return found


leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**66), max_value=2**66),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)
values = st.recursive(leaves, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3))


@st.composite
def deep(draw: st.DrawFn) -> Any:
    value: Any = draw(leaves)
    for _ in range(draw(st.integers(min_value=1, max_value=300))):
        value = {"a": value}
    return value


odd_ids = st.one_of(st.text(max_size=140), st.from_regex(r"[A-Za-z0-9_.:@\-]{1,140}", fullmatch=True))


@st.composite
def items(draw: st.DrawFn) -> dict[str, Any]:
    """Mostly valid-shaped items (so many are accepted) whose values are odd; now and then a wrong shape."""
    mostly = draw(st.integers(min_value=0, max_value=9)) < 8
    variables = draw(st.dictionaries(st.text(max_size=6), values | deep(), max_size=3) if mostly else st.lists(leaves, max_size=2) | leaves)
    agent = "default" if draw(st.integers(min_value=0, max_value=9)) < 8 else draw(st.sampled_from(["nope", "bad agent!", "x" * 200]))
    return {"input": "what is 6*7?", "variables": variables, "agent": agent}


@PROPERTY
@given(item=items(), other=items(), session_id=st.none() | odd_ids, batch=st.booleans())
async def test_accepted_work_is_work_the_executor_accepts(
    edge: Edge, item: dict[str, Any], other: dict[str, Any], session_id: str | None, batch: bool
) -> None:
    if batch:
        r = await edge.orch.http.post("/v1/batches", content=json.dumps({"items": [item, other]}), headers=_auth())
    else:
        r = await edge.orch.http.post("/v1/executions", content=json.dumps(item | {"session_id": session_id}), headers=_auth())
    assert r.status_code < 500, r.text[:500]
    event(f"HTTP {r.status_code}")
    if r.status_code >= 400:
        assert r.json()["error"]  # a reason
        return
    assert r.status_code == 202
    ids = set(r.json()["execution_ids"]) if batch else {r.json()["execution_id"]}
    for value in (await published(edge, ids)).values():
        ExecutionRequested.model_validate_json(value)  # exactly what the executor does with the record


counts = st.one_of(
    st.integers(min_value=0, max_value=1000),
    st.integers(min_value=-5, max_value=MAX_TOKENS + 5),
    st.integers(min_value=-(2**64), max_value=2**64),
    st.floats(allow_nan=False),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
)


@PROPERTY
@given(usage=st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens"]), counts, max_size=3))
async def test_job_usage_is_refused_or_recorded_within_bounds(edge: Edge, usage: dict[str, Any]) -> None:
    r = await edge.orch.http.post("/v1/jobs", json={"service": "query"}, headers=_auth())
    job_id = r.json()["task_id"]
    message = {"event": "job_completed", "service": "query", "job_id": job_id, "tenant_id": "tenant-a", "result": {}, "usage": usage}
    text = json.dumps(message, allow_nan=True)  # infinities too: a service may send anything
    await edge.service.send(text)
    reply = orjson.loads(await asyncio.wait_for(edge.service.recv(), 10))  # answered, on the same connection
    assert reply["type"] in ("accepted", "rejected"), reply
    event(reply["type"])
    if reply["type"] == "rejected":
        assert reply["error"]
        return
    assert all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= MAX_TOKENS for v in usage.values()), usage
    rows = (await edge.orch.get("/v1/usage")).json()["rows"]
    assert all(0 <= row[k] for row in rows for k in ("prompt_tokens", "completion_tokens", "total_tokens")), rows


def _auth() -> dict[str, str]:
    return {"Authorization": "Bearer key-a", "Content-Type": "application/json"}


query_values = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**80), max_value=2**80).map(str),
    st.floats().map(str),
    st.sampled_from(["1e20", "inf", "-inf", "nan", "9223372036854775808", "-1", "0", "", " 5", "١٢", "2025-01-01T00:00:00Z"]),
)
path_ids = st.one_of(st.text(min_size=1, max_size=200).filter(lambda s: "/" not in s and "?" not in s and "#" not in s), st.just("x" * 129))


@PROPERTY
@given(
    params=st.dictionaries(
        st.sampled_from(["since", "until", "group_by", "agent", "session_id", "after", "limit", "cursor"]), query_values
    ),
    some_id=path_ids,
    last_event_id=st.none() | query_values,
)
async def test_odd_query_parameters_paths_and_cursors_are_never_a_5xx(
    edge: Edge, params: dict[str, str], some_id: str, last_event_id: str | None
) -> None:
    session_id = (await edge.orch.post("/v1/sessions", {})).json()["session_id"]
    execution_id = (await edge.orch.post("/v1/executions", {"input": "hi"})).json()["execution_id"]
    headers = {"Authorization": "Bearer key-a"}
    if last_event_id and last_event_id.isprintable() and last_event_id.isascii() and last_event_id == last_event_id.strip():
        headers["Last-Event-ID"] = last_event_id
    quoted = urllib.parse.quote(some_id, safe="")
    for path in (
        "/v1/usage",
        f"/v1/sessions/{session_id}/messages",
        f"/v1/sessions/{quoted}/messages",
        f"/v1/executions/{quoted}",
        f"/v1/tasks/{quoted}",
        f"/v1/batches/{quoted}",
        f"/v1/executions/{quoted}/plan",
    ):
        r = await edge.orch.http.get(path, params=params, headers=headers)
        assert r.status_code < 500, (path, params, r.status_code, r.text[:300])
    async with edge.orch.http.stream("GET", f"/v1/executions/{execution_id}/events", params=params, headers=headers) as r:
        assert r.status_code in (400, 200), (params, headers, r.status_code)  # the stream itself is not read
    event(f"events {r.status_code}")


command_values = st.one_of(leaves, st.lists(leaves, max_size=2), st.dictionaries(st.text(max_size=4), leaves, max_size=2), odd_ids)
frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.fixed_dictionaries(
        {"type": st.sampled_from(["subscribe", "unsubscribe", "ping"]) | command_values},
        optional={"execution_id": command_values, "session_id": command_values, "cursor": command_values},
    ).map(lambda d: json.dumps(d)),
)


@PROPERTY
@given(sent=st.lists(frames, min_size=1, max_size=4))
async def test_the_stream_websocket_answers_any_frame_and_stays_open(edge: Edge, sent: list[str | bytes]) -> None:
    async with websockets.connect(f"{edge.orch.ws_url}/v1/stream?api_key=key-a") as ws:
        for frame in sent:
            await ws.send(frame)
        await ws.send(json.dumps({"type": "subscribe", "execution_id": "probe"}))
        async with asyncio.timeout(10):  # the probe's answer comes after one for each frame: the connection lived
            while (reply := orjson.loads(await ws.recv())).get("execution_id") != "probe":
                assert reply["type"] in ("error", "subscribed", "events", "end", "heartbeat"), reply
        assert reply == {"type": "error", "execution_id": "probe", "code": 404, "error": "execution not found"}


completion_frames = st.one_of(
    st.binary(max_size=64),
    st.text(max_size=64),
    st.fixed_dictionaries(
        {"event": st.sampled_from(["job_completed", "job.completed"]) | command_values},
        optional={k: command_values | deep() for k in ("job_id", "tenant_id", "service", "agent_id", "result", "error", "usage")},
    ).map(lambda d: json.dumps(d)),
)


@PROPERTY
@given(frame=completion_frames)
async def test_task_updates_answer_any_frame_on_the_same_connection(edge: Edge, frame: str | bytes) -> None:
    await edge.service.send(frame)
    reply = orjson.loads(await asyncio.wait_for(edge.service.recv(), 10))
    assert reply["type"] in ("accepted", "rejected") and (reply["type"] == "accepted" or reply["error"]), reply
