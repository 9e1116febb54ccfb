"""One attempt (attempt.py) calls the model without waiting for acknowledgements it does not need, and
keeps order on both topics, in memory: a producer whose acknowledgements the test releases."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec
from schemas.events import EventAdapter, ExecutionRequested
from schemas.status import ExecutionStatus
from services.executor.attempt import AttemptRun, Ended
from services.executor.emitter import EventEmitter
from services.executor.fence import Fenced
from services.executor.loop import ExecutionError, LoopSettings
from services.executor.providers.base import Chunk, ModelRequest, TextDelta, TurnEnd
from services.executor.settings import RetrySettings, TimeoutSettings
from tests.unit.test_emitter import ENVELOPE, HeldProducer

REQUEST = ExecutionRequested(tenant_id="t", execution_id="e1", agent_id="a", input="hi")
BASE = ExecutionStatus(execution_id="e1", tenant_id="t", agent_id="a", attempt=2, events_topic="events")


class Model:
    """Streams two tokens; notes what the broker had acknowledged when the request came."""

    name = "scripted"
    default_model = "m"

    def __init__(self, producer: HeldProducer, statuses: list[str]) -> None:
        self.producer = producer
        self.statuses = statuses
        self.seen: list[tuple[list[str], list[bool], list[str]]] = []
        self.called = asyncio.Event()

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        types: list[str] = [EventAdapter.validate_json(v).type for v, _ in self.producer.sent]
        self.seen.append((types, [f.done() for f in self.producer.pending], list(self.statuses)))
        self.called.set()
        yield TextDelta("hel")
        yield TextDelta("lo")
        yield TurnEnd()


async def lookup(agent_id: str) -> tuple[AgentSpec | None, ExecutionError | None]:
    return AgentSpec(name=agent_id), None


def attempt_with(model: Model) -> AttemptRun:
    return AttemptRun(
        providers={"scripted": cast(Any, model)},
        tools={},
        settings=LoopSettings(retry=RetrySettings(), timeouts=TimeoutSettings(), tool_timeout_s=2),
        cancel_grace_s=1.0,
        lookup=lookup,
    )


async def test_the_model_is_called_while_execution_started_is_still_in_flight() -> None:
    producer, statuses = HeldProducer(), list[str]()
    model = Model(producer, statuses)

    async def publish(status: ExecutionStatus) -> None:
        statuses.append(status.state)

    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    run = asyncio.create_task(attempt_with(model).run(REQUEST, emitter=emitter, publish=publish, base=BASE, cancel=asyncio.Event()))
    async with asyncio.timeout(5):
        await model.called.wait()
    # execution.started is with the producer, unacknowledged, and no running snapshot yet: nothing waited for them.
    assert model.seen == [(["execution.started"], [False], [])]
    producer.auto_ack = True
    producer.ack()
    async with asyncio.timeout(5):
        ended = await run
    assert ended == Ended(finished=True, state="completed")
    assert statuses == ["running", "completed"]
    events = [EventAdapter.validate_json(v) for v, _ in producer.sent]
    assert events[0].type == "execution.started" and events[-1].type == "execution.completed"
    assert "".join(getattr(e, "text", "") for e in events) == "hello"
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    emitter.close()


async def test_the_terminal_snapshot_waits_for_the_running_one() -> None:
    """started acknowledged only after the model finished: the running snapshot still goes first."""
    producer, statuses = HeldProducer(), list[str]()
    model = Model(producer, statuses)
    published: list[ExecutionStatus] = []

    async def publish(status: ExecutionStatus) -> None:
        statuses.append(status.state)
        published.append(status)

    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    run = asyncio.create_task(attempt_with(model).run(REQUEST, emitter=emitter, publish=publish, base=BASE, cancel=asyncio.Event()))
    async with asyncio.timeout(5):
        while not any(EventAdapter.validate_json(v).type == "execution.completed" for v, _ in producer.sent):
            await asyncio.sleep(0.001)
    assert statuses == []  # the terminal snapshot waits for the running one, which waits for started's ack
    producer.auto_ack = True
    producer.ack()
    async with asyncio.timeout(5):
        assert await run == Ended(finished=True, state="completed")
    assert statuses == ["running", "completed"]
    assert published[0].events_start_offset == 0  # where execution.started landed
    emitter.close()


async def test_a_fenced_running_snapshot_fences_the_attempt() -> None:
    producer = HeldProducer(auto_ack=True)
    model = Model(producer, [])

    async def publish(status: ExecutionStatus) -> None:
        raise Fenced("lost the partition")

    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    async with asyncio.timeout(5):
        ended = await attempt_with(model).run(REQUEST, emitter=emitter, publish=publish, base=BASE, cancel=asyncio.Event())
    assert ended == Ended(finished=False, fenced=True)
    emitter.close()


async def test_a_cancel_before_the_start_ends_without_calling_the_model() -> None:
    producer, statuses = HeldProducer(auto_ack=True), list[str]()
    model = Model(producer, statuses)

    async def publish(status: ExecutionStatus) -> None:
        statuses.append(status.state)

    cancel = asyncio.Event()
    cancel.set()
    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    async with asyncio.timeout(5):
        ended = await attempt_with(model).run(REQUEST, emitter=emitter, publish=publish, base=BASE, cancel=cancel)
    assert ended == Ended(finished=True, state="cancelled") and statuses == ["cancelled"] and model.seen == []
    emitter.close()
