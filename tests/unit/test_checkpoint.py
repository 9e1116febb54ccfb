"""Rebuilding an execution's checkpoint from the records its attempts wrote (services/executor/checkpoint.py)."""

from __future__ import annotations

from typing import Any, cast

import httpx
import orjson
from aiokafka import AIOKafkaProducer

from schemas.events import Envelope, ExecutionResumed, ExecutionStarted, ToolCallCompleted, TurnCompleted, TurnToolCall, Usage
from services.common.kafka import encode
from services.executor.checkpoint import LoggedRecord, rebuild, tool_content
from services.executor.emitter import EventEmitter
from services.executor.httptools import HttpTool
from services.executor.providers.base import ToolSpec
from services.executor.tools import ToolContext, current_tool_call

IDS = {"tenant_id": "t", "execution_id": "e"}


class Log:
    def __init__(self) -> None:
        self.records: list[LoggedRecord] = []

    def add(self, event: Envelope) -> None:
        value = encode(event)
        self.records.append(LoggedRecord(len(self.records), orjson.loads(value)["type"], event.attempt, value))

    def started(self, attempt: int) -> None:
        self.add(ExecutionStarted(tenant_id="t", execution_id="e", attempt=attempt))

    def turn(self, attempt: int, step: int, *calls: str, text: str = "t") -> None:
        tool_calls = tuple(TurnToolCall(id=c, name="book", arguments=f'{{"item": "{c}"}}') for c in calls)
        self.add(
            TurnCompleted(
                tenant_id="t", execution_id="e", attempt=attempt, step=step, text=text, tool_calls=tool_calls, usage=Usage(total_tokens=10)
            )
        )

    def done(self, attempt: int, step: int, call: str, result: Any = "ok") -> None:
        self.add(ToolCallCompleted(tenant_id="t", execution_id="e", attempt=attempt, step=step, call_id=call, tool="book", result=result))

    def resumed(self, attempt: int, from_step: int) -> None:
        self.add(ExecutionResumed(tenant_id="t", execution_id="e", attempt=attempt, from_step=from_step))


def test_done_steps_are_reused_and_a_half_done_one_reruns_only_its_missing_calls() -> None:
    log = Log()
    log.started(1)
    log.turn(1, 0, "a")
    log.done(1, 0, "a", {"booked": "A"})
    log.turn(1, 1, "b", "c")
    log.done(1, 1, "c")
    checkpoint = rebuild(log.records, from_offset=7)
    assert [s.step for s in checkpoint.steps] == [0, 1]
    assert checkpoint.from_step == 2
    assert checkpoint.rerun_calls == ("b",)
    assert checkpoint.reused_calls == 2
    assert checkpoint.steps[0].results == {"a": tool_content({"booked": "A"}, None)}
    assert (checkpoint.previous_attempt, checkpoint.attempts, checkpoint.from_offset) == (1, (1,), 7)
    assert checkpoint.usage.total_tokens == 20


def test_a_turn_cut_off_before_its_checkpoint_is_not_reused() -> None:
    log = Log()
    log.started(1)
    log.turn(1, 0, "a")
    log.done(1, 0, "a")
    checkpoint = rebuild(log.records, from_offset=0)
    assert (checkpoint.from_step, checkpoint.rerun_calls) == (1, ())


def test_a_newer_attempt_that_started_over_voids_the_older_ones_events() -> None:
    log = Log()
    log.started(1)
    log.turn(1, 0, "a")
    log.done(1, 0, "a")
    log.started(2)  # no execution.resumed: it ran from the start
    assert rebuild(log.records, from_offset=0).steps == ()


def test_a_resume_of_a_resume_keeps_the_lineage_and_ignores_a_fenced_attempts_late_writes() -> None:
    log = Log()
    log.started(1)
    log.turn(1, 0, "a")
    log.done(1, 0, "a")
    log.turn(1, 1, "b")  # attempt 1 dies inside call b
    log.started(2)
    log.resumed(2, from_step=2)
    log.done(1, 1, "b")  # a paused attempt 1 woke up: fenced, not reused
    log.done(2, 1, "b", "second")
    log.turn(2, 2, text="never finished")
    log.started(3)
    log.resumed(3, from_step=1)  # attempt 3 only trusted step 0 (say, it read less): step 1 is void
    log.turn(3, 1, "d")
    checkpoint = rebuild(log.records, from_offset=0)
    assert [s.step for s in checkpoint.steps] == [0, 1]
    assert checkpoint.steps[1].calls[0].id == "d"
    assert checkpoint.rerun_calls == ("d",)
    assert checkpoint.attempts == (1, 3)


def test_results_of_calls_a_turn_never_asked_for_are_ignored_and_a_gap_ends_the_reuse() -> None:
    log = Log()
    log.started(1)
    log.turn(1, 0, "a")
    log.done(1, 0, "zzz")  # not a call of step 0
    assert rebuild(log.records, from_offset=0).rerun_calls == ("a",)
    gap = Log()
    gap.started(1)
    gap.turn(1, 1, "b")  # no step 0
    assert rebuild(gap.records, from_offset=0).steps == ()


def test_a_record_that_is_not_one_of_ours_is_skipped() -> None:
    log = Log()
    log.started(1)
    log.records.append(LoggedRecord(1, "turn.completed", 1, b"not json"))
    log.turn(1, 0, "a")
    log.done(1, 0, "a")
    assert rebuild(log.records, from_offset=0).from_step == 1


async def test_http_tools_send_the_calls_idempotency_key() -> None:
    seen: list[str | None] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("idempotency-key"))
        return httpx.Response(200, json={"result": orjson.loads(request.content)["arguments"]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as client:
        spec = ToolSpec(name="book", description="", parameters={"type": "object"})
        tool = HttpTool(spec, "http://127.0.0.1:1/book", client=client, allow_private=True)
        # The tool only reads the context; nothing is sent through this emitter.
        emitter = EventEmitter(cast(AIOKafkaProducer, None), topic="x", envelope={**IDS, "attempt": 1}, max_chars=1)
        token = current_tool_call.set(ToolContext(emitter=emitter, call_id="c1", tool="book", step=0, idempotency_key="e:c1"))
        try:
            assert await tool({"item": "A"}) == {"item": "A"}
        finally:
            current_tool_call.reset(token)
    assert seen == ["e:c1"]
