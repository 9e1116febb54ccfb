"""An executor that wakes after a stall longer than its lease writes nothing before it knows whether
the group still counts it a member (fence.py), in memory: a clock that jumps, a producer that records."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.structs import RecordMetadata, TopicPartition

from schemas.events import ExecutionStarted
from services.executor.emitter import EventEmitter
from services.executor.fence import Claim, Fenced, Tenure


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class RecordingProducer:
    """The part of AIOKafkaProducer the emitter uses; every record is kept, acknowledged at once."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    async def send(
        self, topic: str, *, value: bytes, key: bytes, headers: Any, partition: int | None = None
    ) -> asyncio.Future[RecordMetadata]:
        self.sent.append((topic, value))
        future: asyncio.Future[RecordMetadata] = asyncio.get_running_loop().create_future()
        future.set_result(RecordMetadata(topic, 0, TopicPartition(topic, 0), len(self.sent) - 1, -1, 0, -1))
        return future


def emitter_with(claim: Claim) -> tuple[EventEmitter, RecordingProducer]:
    producer = RecordingProducer()
    emitter = EventEmitter(
        cast(AIOKafkaProducer, producer),
        topic="events",
        envelope={"tenant_id": "t", "execution_id": "e1", "session_id": None, "agent_id": "default", "attempt": 1},
        max_chars=1,
        tenure=Tenure(claim),
    )
    return emitter, producer


async def test_after_a_stall_and_a_rebalance_the_run_is_fenced_before_its_next_record() -> None:
    clock = Clock()
    claim = Claim("lane", ttl_s=3.0, confirm_s=30.0, clock=clock)
    emitter, producer = emitter_with(claim)
    await emitter.emit(ExecutionStarted)
    await emitter.text("one", step=0)
    assert len(producer.sent) == 2

    clock.now += 12.0  # SIGSTOP ... SIGCONT: longer than the lease
    pending = asyncio.create_task(emitter.text("zombie", step=0))
    await asyncio.sleep(0.05)
    assert not pending.done() and len(producer.sent) == 2  # held before the record, not sent

    assert claim.revoked()  # the heartbeat after waking was refused: the group rebalances us
    with pytest.raises(Fenced):
        await pending
    with pytest.raises(Fenced):  # and every later record of that run
        await emitter.emit(ExecutionStarted)
    assert len(producer.sent) == 2

    claim.assigned()
    fresh, fresh_producer = emitter_with(claim)  # a run of the new term (the record delivered again) writes
    await fresh.emit(ExecutionStarted)
    assert len(fresh_producer.sent) == 1


async def test_a_stall_without_a_rebalance_only_delays_the_writes() -> None:
    clock = Clock()
    claim = Claim("lane", ttl_s=3.0, confirm_s=0.05, clock=clock)
    emitter, producer = emitter_with(claim)
    await emitter.emit(ExecutionStarted)
    clock.now += 4.0  # stalled past the lease, but within the session timeout: still a member
    claim.tick()
    assert claim.in_doubt
    await asyncio.wait_for(emitter.text("still mine", step=0), 1.0)  # no rebalance came: confirmed
    assert len(producer.sent) == 2 and not claim.in_doubt


def test_a_rebalance_on_time_does_not_end_the_term() -> None:
    clock = Clock()
    claim = Claim("lane", ttl_s=3.0, confirm_s=1.0, clock=clock)
    tenure = Tenure(claim)
    clock.now += 0.1
    claim.tick()
    assert not claim.revoked()  # the loop kept time: a plain rebalance, decided per partition
    claim.assigned()
    assert tenure.ok()


async def test_a_rebalance_soon_after_a_cleared_stall_still_ends_the_term() -> None:
    """The confirm window passed without a rebalance, then the refused heartbeat's rebalance came late."""
    clock = Clock()
    claim = Claim("lane", ttl_s=3.0, confirm_s=0.05, clock=clock)
    tenure = Tenure(claim)
    clock.now += 12.0
    claim.tick()
    await asyncio.wait_for(tenure.check(), 1.0)  # cleared: writes went on
    clock.now += 1.0
    assert claim.revoked()  # yet the member had been evicted: its runs are fenced
    with pytest.raises(Fenced):
        await tenure.check()
    clock.now += 60.0
    claim.assigned()
    assert not claim.revoked()  # a rebalance long after the stall is a plain one
