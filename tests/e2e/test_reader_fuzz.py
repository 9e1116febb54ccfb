"""Property-based fuzzing of every reader, on the real broker.

Hypothesis draws batches of valid-shaped records with extreme values (huge and negative integers,
wrong types, deep nesting, non-UTF-8 keys and headers, 1 MB values, tombstones, non-JSON) and writes
each record to every partition of one of the topics a service reads: the lanes (executor group),
events (bridge tail, orchestrator follower), control (executors' control tail), status (every status
view), jobs.completed (orchestrator), jobs.requested (coordinator), jobs.updates (executors' jobs
tail), schedules (every orchestrator's schedules reader). After each batch a canary of another
tenant must still run end to end (lane -> executor -> events -> bridge -> WebSocket, follower ->
usage), the orchestrator must still be ready, and every DLQ copy must be bounded. So no record may
stop a reader, hold back the records behind it, or reach another tenant.

Examples per run: AGENTSTREAM_READER_FUZZ_EXAMPLES (default 25; `make reliability` runs more).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr

from schemas.topics import Topics
from services.common.kafka import partitions_of
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.conftest import KEYS, Stack
from tests.support import collect_events, serve

pytestmark = [
    pytest.mark.kafka,
    # Hypothesis draws while the app serves on the same loop and uses the global `random` (jitter, clients).
    pytest.mark.filterwarnings("ignore:Do not use the `random` module inside strategies:hypothesis.errors.HypothesisDeprecationWarning"),
]

EXAMPLES = int(os.environ.get("AGENTSTREAM_READER_FUZZ_EXAMPLES", "25"))
DLQ_COPY_LIMIT = 1024 * 1024  # a DLQ copy must fit in a default-sized Kafka record
VICTIM_KEY, VICTIM_TENANT = "key-b", "tenant-b"
FUZZ_TENANT = "tenant-a"


def _deep(depth: int) -> Any:
    value: Any = 1
    for i in range(depth):
        value = {"a": value} if i % 2 else [value]
    return value


HUGE_INTS = [10**19, -(10**19), 2**63, 2**64, -(2**63) - 1, 10**400, -1]
ODD_NUMBERS = [*HUGE_INTS, 1e308, -1e308, 0.5]
ODD_TYPES = ["abc", "", None, True, [], {}, [1, 2], {"a": 1}]
DEEP = [_deep(200), _deep(300), _deep(1000)]
ODD_STRINGS = ["", "x" * 5000, "\u202e\u0000", "9" * 40, "x" * 1_000_000]  # ~1 MB: under the broker's record limit


def _odd_for(current: Any) -> st.SearchStrategy[Any]:
    """An extreme value of the leaf's own kind most of the time (what a parser lets through), else a wrong type."""
    if isinstance(current, bool):
        same: st.SearchStrategy[Any] = st.sampled_from([True, False])
    elif isinstance(current, int | float):
        same = st.sampled_from(ODD_NUMBERS) | st.integers()
    elif isinstance(current, str):
        same = st.sampled_from(ODD_STRINGS) | st.text(max_size=40)
    else:
        same = st.sampled_from(DEEP)
    return st.one_of(same, same, same, st.sampled_from(ODD_TYPES), st.sampled_from(DEEP))


TARGET, VICTIM, JOB = "__target__", "__victim__", "__job__"  # replaced by real ids when a batch is played


def _templates(topics: Topics, victim_execution: str = VICTIM, target_execution: str = TARGET) -> dict[str, dict[str, Any]]:
    """One valid record value per topic; mutations start from these. Records name real executions: the
    fuzzing tenant's own ``target`` execution and job, new and open for each batch (so followers and
    views act on tasks that exist), and on a lane and the control topic another tenant's ``victim``."""
    now = "2026-12-01T00:00:00Z"
    envelope = {"tenant_id": FUZZ_TENANT, "execution_id": target_execution, "attempt": 1, "seq": 0, "ts": now}
    usage = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    return {
        topics.lane("standard"): envelope
        | {"type": "execution.requested", "input": "hello", "variables": {"a": 1}, "execution_id": f"fz-{uuid.uuid4().hex[:8]}"},
        topics.lane("critical"): envelope | {"type": "execution.requested", "input": "hi", "execution_id": victim_execution},
        topics.events: envelope | {"type": "execution.completed", "output": "done", "usage": usage},
        topics.events + "#started": envelope | {"type": "execution.started", "attempt": 7},
        topics.events + "#tool": envelope | {"type": "tool.call.completed", "call_id": "c1", "tool": "t", "result": {"r": 1}},
        topics.control: envelope | {"type": "execution.cancel_requested"},
        topics.control + "#victim": envelope | {"type": "execution.cancel_requested", "execution_id": victim_execution},
        topics.status: {"execution_id": target_execution, "tenant_id": FUZZ_TENANT, "state": "completed", "attempt": 9, "output": "x"},
        topics.jobs_completed: {
            "event": "job_completed",
            "job_id": JOB,
            "tenant_id": FUZZ_TENANT,
            "service": "query",
            "result": {"answer": 1},
            "usage": usage,
        },
        topics.jobs_requested: envelope | {"type": "job.requested", "request_id": "r1", "service": "query", "payload": {"q": "x"}},
        topics.jobs_updates: envelope | {"type": "job.updated", "request_id": "r1", "status": "completed", "usage": usage},
        topics.schedules: {
            "type": "schedule.claimed",
            "schedule_id": target_execution,
            "tenant_id": FUZZ_TENANT,
            "revision": 0,
            "slot_ms": 1,
            "replica": "r",
            "claimed_ms": 1,
        },
    }


def _leaves(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    if isinstance(value, dict) and value:
        return [path for k, v in value.items() for path in _leaves(v, (*prefix, k))]
    return [prefix]


def _get(value: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        value = value[part]
    return value


def _set(value: Any, path: tuple[Any, ...], new: Any) -> Any:
    if not path:
        return new
    copy = dict(value)
    copy[path[0]] = _set(value[path[0]], path[1:], new)
    return copy


Poison = tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]
RAW_VALUES: list[bytes | None] = [
    None,  # a tombstone
    b"\xff\xfe{not json",
    b'{"type":"execution.completed","execution_id":"\xed\xb3\xbf","output":"\xff"}',  # JSON, not UTF-8
    b'{"type":"execution.completed","pad":"' + b"y" * (1000 * 1000) + b'"}',  # ~1 MB
    b"[1,2,3]",
    b"",
]
ODD_KEYS: list[bytes | None] = [None, b"", b"\xff\xfe\xfd", b"\xc3\x28", b"x" * 20000]
ODD_ATTEMPTS = [b"99999999999999999999", b"-1", b"abc", b"\xff", b"", b"0"]


@st.composite
def poison(draw: st.DrawFn, templates: dict[str, dict[str, Any]]) -> Poison:
    """(topic, key, value, headers): a template with one to three leaves set to an extreme value; now and
    then a raw value instead, an odd key, or odd headers. Mostly valid-shaped, so records get past the
    first checks and reach the code behind them."""
    name = draw(st.sampled_from(sorted(templates)))
    topic = name.split("#")[0]
    value: Any = templates[name]
    for _ in range(draw(st.integers(1, 3))):
        path = draw(st.sampled_from(_leaves(value)))
        value = _set(value, path, draw(_odd_for(_get(value, path))))
    encoded = draw(st.just(json.dumps(value).encode()) | st.sampled_from(RAW_VALUES)) if draw(st.booleans()) else json.dumps(value).encode()
    lane = topic.endswith(("executions.critical", "executions.standard", "executions.batch"))
    proper_key = (FUZZ_TENANT if lane else JOB if topic.endswith("jobs.completed") else TARGET).encode()
    key = draw(st.just(proper_key) | st.just(proper_key) | st.sampled_from(ODD_KEYS) | st.binary(max_size=64))
    type_ = value.get("type") if isinstance(value, dict) else None
    proper_type = (type_ if isinstance(type_, str) else "execution.completed").encode(errors="replace")
    header_type = draw(st.just(proper_type) | st.just(proper_type) | st.sampled_from([b"", b"\xff", b"execution.completed"]))
    attempt = draw(st.just(b"1") | st.just(b"1") | st.sampled_from(ODD_ATTEMPTS))
    tenant = draw(st.just(FUZZ_TENANT.encode()) | st.sampled_from([VICTIM_TENANT.encode(), b"\xff", b""]))
    return topic, key, encoded, [("type", header_type), ("tenant_id", tenant), ("attempt", attempt)]


async def _produce(producer: AIOKafkaProducer, consumer: AIOKafkaConsumer, records: list[Poison], ids: dict[str, str]) -> int:
    """Write each record to every partition of its topic, with the placeholders replaced by real ids."""

    def real(data: bytes | None) -> bytes | None:
        for placeholder, value in ids.items():
            data = data.replace(placeholder.encode(), value.encode()) if data is not None else None
        return data

    sent = 0
    for topic, raw_key, raw_value, headers in records:
        key, value = real(raw_key), real(raw_value)
        if key is None and value is None:
            continue  # no Kafka client can send it (aiokafka refuses before the broker)
        for tp in await partitions_of(consumer, topic):
            try:
                await producer.send_and_wait(topic, value=value, key=key, headers=headers, partition=tp.partition)
            except KafkaError:  # the broker refused it (e.g. no key on a compacted topic): no reader will see it
                continue
            sent += 1
    return sent


def _auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _job(stack: Stack, key: str, job_id: str) -> None:
    r = await stack.http.post("/v1/jobs", json={"service": "query", "job_id": job_id}, headers=_auth(key))
    assert r.status_code == 201, r.text


async def _wait_task(stack: Stack, key: str, task_id: str, state: str, what: str) -> None:
    deadline = time.monotonic() + 20
    while True:
        r = await stack.http.get(f"/v1/tasks/{task_id}", headers=_auth(key))
        assert r.status_code < 500, r.text
        if r.status_code == 200 and r.json().get("status") == state:
            return
        assert time.monotonic() < deadline, f"{what}: {r.text}"
        await asyncio.sleep(0.1)


async def _canary(stack: Stack, producer: AIOKafkaProducer, victim: str, victim_job: str, answer: str) -> None:
    """Another tenant's execution, running while the batch was written, streams live to the end with
    only its own events and output, and is projected; its job completion over Kafka is applied; the
    orchestrator is ready."""
    items = await collect_events(stack.ws_url, VICTIM_KEY, victim, timeout=30)
    end = items[-1]["event"]
    assert end["type"] == "execution.completed", end
    assert {i["event"]["tenant_id"] for i in items} == {VICTIM_TENANT}, "a fuzzed record reached another tenant's stream"
    assert {i["event"]["execution_id"] for i in items} == {victim}
    assert end["output"] == answer, "another tenant's record changed the output"
    await _wait_task(stack, VICTIM_KEY, victim, "completed", f"the events follower never finalized {victim}")
    completion = {"event": "job_completed", "job_id": victim_job, "tenant_id": VICTIM_TENANT, "service": "query", "result": {"ok": 1}}
    await producer.send_and_wait(stack.kafka.topics.jobs_completed, value=json.dumps(completion).encode(), key=victim_job.encode())
    await _wait_task(stack, VICTIM_KEY, victim_job, "completed", f"the jobs follower never applied {victim_job}")
    ready = await stack.http.get("/health/ready")
    assert ready.status_code == 200, ready.text


def _draw_batches(templates: dict[str, dict[str, Any]]) -> list[list[Poison]]:
    """Hypothesis draws the batches up front (its runner is synchronous); each is then played on the broker."""
    drawn: list[list[Poison]] = []

    @settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), phases=[Phase.generate], database=None)
    @given(batch=st.lists(poison(templates), min_size=3, max_size=8))
    def draw(batch: list[Poison]) -> None:
        drawn.append(batch)

    draw()
    return drawn


@pytest.fixture
async def stack(kafka_settings: KafkaSettings, tmp_path: Path) -> AsyncIterator[Stack]:
    """Executor + orchestrator, with tokens slow enough (30 ms) that the canary streams live: a catch-up
    read from Kafka cannot hide a dead bridge tail."""
    database_url = SecretStr(f"sqlite+aiosqlite:///{tmp_path / 'state.db'}")
    orch = OrchestratorSettings(kafka=kafka_settings, api_keys=KEYS, database_url=database_url, requests_per_minute=0)
    async with Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=30)) as executor:
        async with serve(create_app(orch)) as url, httpx.AsyncClient(base_url=url) as http:
            yield Stack(url=url, kafka=kafka_settings, executor=executor, http=http, orchestrator_settings=orch)


async def test_no_record_stops_a_reader(stack: Stack) -> None:
    templates = _templates(stack.kafka.topics)
    producer = AIOKafkaProducer(bootstrap_servers=stack.kafka.bootstrap, max_request_size=4 * 1024 * 1024)
    consumer = AIOKafkaConsumer(bootstrap_servers=stack.kafka.bootstrap)
    await producer.start()
    await consumer.start()
    prompt = "canary: what is 6*7?"
    clean = await collect_events(stack.ws_url, VICTIM_KEY, await stack.submit(VICTIM_KEY, input=prompt))
    answer = clean[-1]["event"]["output"]
    batches = _draw_batches(templates)
    records = 0
    try:
        for n, batch in enumerate(batches):
            ids = {TARGET: await stack.submit("key-a", input=f"the fuzzing tenant's own execution {n}"), JOB: f"job-fz-{n}"}
            await _job(stack, "key-a", ids[JOB])
            await _job(stack, VICTIM_KEY, f"job-canary-{n}")
            ids[VICTIM] = await stack.submit(VICTIM_KEY, input=prompt)
            records += await _produce(producer, consumer, batch, ids)
            try:
                await _canary(stack, producer, ids[VICTIM], f"job-canary-{n}", answer)
            except (AssertionError, TimeoutError) as exc:
                shown = [(t, k[:40] if k else k, (v or b"")[:300], h) for t, k, v, h in batch]
                raise AssertionError(f"after batch {n} {shown}: {exc!r}") from exc
        await _assert_dlq_bounded(stack)
    finally:
        await producer.stop()
        await consumer.stop()
    print(f"reader fuzz: {len(batches)} batches, {records} records, every canary completed")


async def _assert_dlq_bounded(stack: Stack) -> None:
    dlq = AIOKafkaConsumer(bootstrap_servers=stack.kafka.bootstrap, enable_auto_commit=False)
    await dlq.start()
    try:
        tps = await partitions_of(dlq, stack.kafka.topics.dlq)
        dlq.assign(tps)
        await dlq.seek_to_beginning(*tps)
        end = await dlq.end_offsets(tps)
        assert sum(end.values()) > 0, "no fuzzed record reached the DLQ"
        seen, total = 0, sum(end.values())
        while seen < total:
            batch = await dlq.getmany(timeout_ms=2000)
            assert batch, f"the DLQ ended after {seen} of {total} records"
            for records in batch.values():
                for record in records:
                    seen += 1
                    assert len(record.value or b"") <= DLQ_COPY_LIMIT, f"an unbounded DLQ copy: {len(record.value or b'')} bytes"
                    names = {k for k, _ in record.headers}
                    assert {"dlq.reason", "dlq.topic", "dlq.offset"} <= names, names
    finally:
        await dlq.stop()
