"""An execution cancelled the moment its model asked for tools: the tool calls scheduled but not yet
begun must not leave a coroutine behind that is never awaited (a RuntimeWarning at collection,
which pytest's error filter turns into a failure of whichever test happens to run then)."""

from __future__ import annotations

import asyncio
import gc
import warnings
from collections.abc import AsyncIterator
from typing import Any, cast

from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec
from schemas.events import ExecutionRequested
from services.executor.emitter import EventEmitter
from services.executor.loop import LoopSettings, run_agent
from services.executor.providers.base import Chunk, ModelRequest, ToolCall, ToolSpec, TurnEnd
from services.executor.settings import RetrySettings, TimeoutSettings
from tests.unit.test_fence import RecordingProducer


class AsksForTools:
    """One turn that asks for two tool calls, and cancels the running execution as it ends."""

    name = "scripted"
    default_model = "scripted-1"

    def __init__(self, victim: list[asyncio.Task[Any]]) -> None:
        self.victim = victim

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        # Runs before the tasks gather schedules for the tool calls take their first step.
        asyncio.get_running_loop().call_soon(self.victim[0].cancel)
        yield TurnEnd(tool_calls=(ToolCall("c1", "echo", "{}"), ToolCall("c2", "echo", "{}")))


class Echo:
    spec = ToolSpec(name="echo", description="", parameters={"type": "object"})

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        return arguments


async def test_cancel_as_the_tools_are_scheduled_leaves_no_coroutine_unawaited() -> None:
    emitter = EventEmitter(
        cast(AIOKafkaProducer, RecordingProducer()),
        topic="events",
        envelope={"tenant_id": "t", "execution_id": "e1", "session_id": None, "agent_id": "a", "attempt": 1},
        max_chars=1,
    )
    victim: list[asyncio.Task[Any]] = []
    run = run_agent(
        spec=AgentSpec(name="a", tools=("echo",)),
        request=ExecutionRequested(tenant_id="t", execution_id="e1", agent_id="a", input="hi"),
        providers={"scripted": cast(Any, AsksForTools(victim))},
        tools={"echo": Echo()},
        emitter=emitter,
        settings=LoopSettings(retry=RetrySettings(), timeouts=TimeoutSettings(), tool_timeout_s=2),
    )
    victim.append(asyncio.ensure_future(run))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            await victim[0]
        except asyncio.CancelledError:
            pass
        else:
            raise AssertionError("the execution was to be cancelled")
        del victim[:]
        gc.collect()
    never_awaited = [str(w.message) for w in caught if "never awaited" in str(w.message)]
    assert never_awaited == []
