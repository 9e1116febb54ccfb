"""The executor's lane handling over in-memory lanes (no broker): one supervised reader per lane,
refusals parked, commits of the contiguous watermark, slots, and rebalances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import httpx
import pytest
from aiokafka import TopicPartition

from schemas.events import ExecutionCancelRequested, ExecutionRequested
from schemas.status import ExecutionStatus
from schemas.tenants import TenantRecord
from schemas.topics import Priority
from services.common.kafka import encode, header
from services.common.reader import readers_health
from services.common.settings import KafkaSettings
from services.common.sources import MemoryProducer, MemorySource, RecordSource
from services.executor.app import Executor
from services.executor.metrics_server import MetricsServer, watch
from services.executor.settings import ExecutorSettings


class MemoryLanes:
    """The lanes' sources: one in-memory log per lane topic, opened as the executor opens each lane."""

    def __init__(self) -> None:
        self.sources: dict[str, MemorySource] = {}

    async def open(self, lane: str, listener: object) -> RecordSource:
        source = self.sources[lane] = MemorySource()
        source.positions[TopicPartition(lane, 0)] = 0  # assigned partition 0 of the lane
        return source


@pytest.fixture
async def lanes() -> AsyncIterator[tuple[Executor, MemoryLanes, MemoryProducer]]:
    memory, dlq = MemoryLanes(), MemoryProducer()
    settings = ExecutorSettings(kafka=KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="unit."), max_concurrency=1)
    executor = Executor(settings, lane_opener=memory.open, lane_dlq=dlq)
    executor.tenants.apply("tenant-a", TenantRecord(tenant_id="tenant-a"))
    await executor.lanes.start()
    try:
        yield executor, memory, dlq
    finally:
        await executor.lanes.stop()
        await executor.stop()
        await executor.producer.stop()  # built, never started: closes it without a broker


async def _until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def _request(execution_id: str, priority: Priority = "standard") -> bytes:
    return encode(ExecutionRequested(tenant_id="tenant-a", execution_id=execution_id, input="hi", priority=priority))


def _done(executor: Executor, execution_id: str) -> None:
    executor.status.apply(ExecutionStatus(execution_id=execution_id, tenant_id="tenant-a", state="completed", attempt=1))


async def test_each_lane_reader_is_in_health_ready_and_metrics(lanes: tuple[Executor, MemoryLanes, MemoryProducer]) -> None:
    executor, memory, _ = lanes
    assert set(memory.sources) == set(executor.topics.lanes)
    names = [f"executor-lane-{p}" for p in ("critical", "standard", "batch")]
    await _until(lambda: all(r.running for r in executor.lanes.readers.values()))
    ok, states = readers_health(executor.readers())
    assert ok and [n for n in states if n in names] == names
    executor.metrics_server = MetricsServer(port=0)
    await watch(executor)
    try:
        async with httpx.AsyncClient(base_url=executor.metrics_server.url) as http:
            ready = await http.get("/health/ready")
            assert ready.status_code == 200 and all(ready.json()["readers"][n] == "running" for n in names)
            assert 'agentstream_reader_up{reader="executor-lane-batch"} 1.0' in (await http.get("/metrics")).text
            # A lane whose consumer broke (its fetches raise) shows as not ready until it is restarted.
            await memory.sources[executor.topics.lane("batch")].close()
            async with asyncio.timeout(3):
                while (ready := await http.get("/health/ready")).status_code != 503:
                    await asyncio.sleep(0.01)
            assert ready.json()["readers"]["executor-lane-batch"] == "restarting"
    finally:
        await watch(executor, stop=True)


async def test_a_poison_record_is_parked_and_the_next_one_handled(lanes: tuple[Executor, MemoryLanes, MemoryProducer]) -> None:
    executor, memory, dlq = lanes
    lane = executor.topics.lane("standard")
    tp = TopicPartition(lane, 0)
    _done(executor, "e-done")
    memory.sources[lane].append(lane, b"{not json", key=b"tenant-a")
    memory.sources[lane].append(lane, _request("e-done"), key=b"tenant-a")  # already completed: committed, not run
    await _until(lambda: memory.sources[lane].committed.get(tp) == 2)
    ((topic, key, value, headers),) = dlq.sent
    assert topic == executor.topics.dlq and key == b"tenant-a" and value == b"{not json"
    assert (header(headers, "dlq.reason") or "").startswith("invalid execution.requested")
    assert header(headers, "dlq.consumer") == executor.settings.consumer_group and header(headers, "dlq.offset") == "0"
    assert executor.lanes.readers[lane].running and executor.running() == []


async def test_a_lane_waiting_for_a_slot_does_not_hold_back_the_others_and_a_rebalance_drops_its_run(
    lanes: tuple[Executor, MemoryLanes, MemoryProducer],
) -> None:
    executor, memory, dlq = lanes
    batch, critical = executor.topics.lane("batch"), executor.topics.lane("critical")
    await executor._slots.acquire("standard")  # the only slot is taken: the batch request waits for it
    memory.sources[batch].append(batch, _request("e-waits", "batch"), key=b"tenant-a")
    await asyncio.sleep(0.1)
    assert executor.running() == [] and TopicPartition(batch, 0) not in memory.sources[batch].committed

    # The critical lane's reader goes on meanwhile: a refused record and a finished one, committed.
    _done(executor, "e-done")
    memory.sources[critical].append(critical, _request("e-other-tenant", "critical"), key=b"tenant-b")
    memory.sources[critical].append(critical, _request("e-done", "critical"), key=b"tenant-a")
    await _until(lambda: memory.sources[critical].committed.get(TopicPartition(critical, 0)) == 2)
    assert len(dlq.sent) == 1

    # The batch partition goes to another member while its request waits (what aiokafka calls on a
    # rebalance); when the slot comes free, the request is not run here: the new owner runs it.
    listener = executor.lanes.listeners[batch]
    await listener.on_partitions_revoked([TopicPartition(batch, 0)])
    await listener.on_partitions_assigned([])
    executor._slots.release()
    await _until(lambda: executor._slots.free == 1)
    await asyncio.sleep(0.05)
    assert executor.running() == [] and executor._slots.free == 1
    assert TopicPartition(batch, 0) not in memory.sources[batch].committed


async def test_a_cancel_only_stops_the_execution_of_the_tenant_it_names(lanes: tuple[Executor, MemoryLanes, MemoryProducer]) -> None:
    """Found by the reader fuzzer: a control record of tenant A naming tenant B's running execution
    cancelled it; and A's cancel could replace B's own one recorded before B's execution started."""
    executor, _, _ = lanes
    running = asyncio.Event()
    executor._cancels["e-running"] = ("tenant-b", running)
    executor.request_cancel(ExecutionCancelRequested(tenant_id="tenant-a", execution_id="e-running"))
    assert not running.is_set()
    executor.request_cancel(ExecutionCancelRequested(tenant_id="tenant-b", execution_id="e-running"))
    assert running.is_set()
    queued = ExecutionRequested(tenant_id="tenant-b", execution_id="e-queued", input="hi")
    executor.request_cancel(ExecutionCancelRequested(tenant_id="tenant-b", execution_id="e-queued"))
    executor.request_cancel(ExecutionCancelRequested(tenant_id="tenant-a", execution_id="e-queued"))
    assert executor._cancel_requested(queued)
    assert not executor._cancel_requested(queued.model_copy(update={"execution_id": "e-other"}))
