"""The agent loop's checkpoints (loop.py), in memory: what must be in the log before a tool runs or
the model is asked again, and a run resumed from a checkpoint (checkpoint.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec
from schemas.events import ExecutionRequested, Usage
from services.common.kafka import header
from services.executor.checkpoint import Checkpoint, DoneStep, tool_content
from services.executor.emitter import EventEmitter
from services.executor.loop import LoopSettings, run_agent
from services.executor.providers.base import Chunk, ModelRequest, TextDelta, ToolCall, ToolSpec, TurnEnd
from services.executor.settings import RetrySettings, TimeoutSettings
from services.executor.tools import current_tool_call
from tests.unit.test_emitter import ENVELOPE, HeldProducer, until


class TwoTurns:
    """Turn 1 asks for ``book`` (two calls); turn 2, with their results, answers. Records every request."""

    name = "scripted"
    default_model = "scripted-1"

    def __init__(self) -> None:
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        if not any(m["role"] == "tool" for m in request.messages):
            yield TextDelta("Booking.")
            yield TurnEnd(
                tool_calls=(ToolCall("c1", "book", '{"item": "A"}'), ToolCall("c2", "book", '{"item": "B"}')), usage=Usage(total_tokens=5)
            )
            return
        yield TextDelta("Done.")
        yield TurnEnd(usage=Usage(total_tokens=7))


class Book:
    spec = ToolSpec(name="book", description="", parameters={"type": "object"})

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        context = current_tool_call.get()
        assert context is not None
        self.calls.append((context.idempotency_key, arguments))
        return f"booked {arguments['item']}"


SETTINGS = LoopSettings(retry=RetrySettings(), timeouts=TimeoutSettings(), tool_timeout_s=5)


def _run(producer: HeldProducer, model: TwoTurns, book: Book, resume: Checkpoint | None = None) -> Any:
    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    return run_agent(
        spec=AgentSpec(name="a", tools=("book",)),
        request=ExecutionRequested(tenant_id="t", execution_id="e1", agent_id="a", input="book"),
        providers={"scripted": cast(Any, model)},
        tools={"book": book},
        emitter=emitter,
        settings=SETTINGS,
        resume=resume,
    )


def _types(producer: HeldProducer) -> list[str | None]:
    return [header(headers, "type") for _, headers in producer.sent]


async def test_no_tool_runs_before_its_turn_is_acknowledged_and_no_model_call_before_the_results_are() -> None:
    producer, model, book = HeldProducer(), TwoTurns(), Book()
    run = asyncio.create_task(_run(producer, model, book))
    await until(lambda: "turn.completed" in _types(producer))
    await asyncio.sleep(0)  # a few turns of the loop: nothing may move without the acknowledgement
    await asyncio.sleep(0)
    assert book.calls == []
    producer.ack()
    await until(lambda: _types(producer).count("tool.call.completed") == 2)
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert len(model.requests) == 1  # the results are not acknowledged yet: the model waits
    producer.auto_ack = True
    producer.ack()
    outcome = await asyncio.wait_for(run, 5)
    assert outcome.output == "Done." and len(model.requests) == 2
    assert book.calls == [("e1:c1", {"item": "A"}), ("e1:c2", {"item": "B"})]
    turn = orjson.loads(producer.sent[_types(producer).index("turn.completed")][0])
    assert [c["id"] for c in turn["tool_calls"]] == ["c1", "c2"] and turn["text"] == "Booking."


async def test_a_resumed_run_reuses_the_transcript_and_runs_only_the_interrupted_call() -> None:
    producer, model, book = HeldProducer(auto_ack=True), TwoTurns(), Book()
    calls = (ToolCall("c1", "book", '{"item": "A"}'), ToolCall("c2", "book", '{"item": "B"}'))
    done = DoneStep(0, "Booking.", calls, Usage(total_tokens=5), {"c1": tool_content("booked A", None)}, frozenset({1}))
    outcome = await _run(producer, model, book, Checkpoint(steps=(done,), previous_attempt=1, from_offset=0))
    assert book.calls == [("e1:c2", {"item": "B"})]  # c1 completed in the log: never again
    [request] = model.requests  # turn 1 is the checkpoint's: only the next turn is asked
    tool_messages = [m for m in request.messages if m["role"] == "tool"]
    assert [(m["tool_call_id"], orjson.loads(m["content"])) for m in tool_messages] == [
        ("c1", {"result": "booked A"}),
        ("c2", {"result": "booked B"}),
    ]
    assert request.messages[-3]["tool_calls"][0]["function"]["arguments"] == '{"item": "A"}'
    assert outcome.output == "Done." and outcome.usage.total_tokens == 12  # the reused turn's usage counts
    assert "turn.completed" not in _types(producer)
