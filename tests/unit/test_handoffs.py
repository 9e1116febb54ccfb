"""Handoffs in the agent loop (loop.py, handoffs.py) and in the checkpoint (checkpoint.py), in memory."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import orjson
import pytest
from aiokafka import AIOKafkaProducer

from schemas.agents import AgentSpec
from schemas.bounds import MAX_HANDOFFS_PER_EXECUTION
from schemas.events import ExecutionRequested, ExecutionStarted, Usage
from schemas.status import ExecutionStatus
from services.common.kafka import encode, header
from services.executor.attempt import AttemptRun, Ended
from services.executor.checkpoint import LoggedRecord, rebuild
from services.executor.emitter import EventEmitter
from services.executor.handoffs import HANDOFF_TOOL, Agent
from services.executor.loop import ExecutionError, Outcome, run_agent
from services.executor.providers.base import Chunk, ModelRequest, TextDelta, ToolCall, TurnEnd
from services.executor.providers.scripted import ScriptedProvider
from services.executor.tools import ToolError, builtin_tools
from services.orchestrator.agents import agent_info
from services.orchestrator.handoffs import addressable
from tests.unit.test_emitter import ENVELOPE, HeldProducer
from tests.unit.test_loop_resume import SETTINGS

AGENTS = {
    "triage": AgentSpec(
        name="triage", model="triage-m", system_prompt="You are triage.", tools=("clock",), handoffs=("billing", "support")
    ),
    "billing": AgentSpec(name="billing", model="billing-m", system_prompt="You are billing.", tools=("calculator",)),
    "support": AgentSpec(name="support", model="support-m", system_prompt="You are support.", tools=(), handoffs=("triage",)),
}


class Desk:
    """Each agent's model, told apart by the request's model: what each turn answers is scripted
    per model (a list of turns; the last one repeats). Records every request."""

    name = "scripted"
    default_model = "scripted-1"

    def __init__(self, turns: dict[str, list[TurnEnd | str]]) -> None:
        self.turns = turns
        self.requests: list[ModelRequest] = []

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        script = self.turns[request.model]
        turn = script.pop(0) if len(script) > 1 else script[0]
        if isinstance(turn, str):
            yield TextDelta(turn)
            yield TurnEnd(usage=Usage(total_tokens=3))
            return
        yield TextDelta("Transferring.")
        yield turn


def transfer(agent: str, call_id: str = "h1", reason: str = "an invoice question") -> TurnEnd:
    arguments = orjson.dumps({"agent": agent, "reason": reason}).decode()
    return TurnEnd(tool_calls=(ToolCall(call_id, HANDOFF_TOOL, arguments),), usage=Usage(total_tokens=5))


class Resolver:
    """The executor's catalog, in memory: the agents above, with the built-in tools; counts lookups."""

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def __call__(self, name: str) -> Agent:
        self.asked.append(name)
        spec = AGENTS.get(name)
        if spec is None:
            raise ToolError(f"agent {name!r} is not available")
        return Agent(spec, builtin_tools(), (spec.system_prompt,))


async def _run(producer: HeldProducer, desk: Desk, resolver: Resolver, *, agent: str = "triage", resume: Any = None) -> Outcome:
    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    return await run_agent(
        spec=AGENTS[agent],
        request=ExecutionRequested(tenant_id="t", execution_id="e1", agent_id=agent, input="Why was I charged twice?"),
        providers={"scripted": cast(Any, desk)},
        tools=builtin_tools(),
        emitter=emitter,
        settings=SETTINGS,
        resume=resume,
        resolve=resolver,
    )


def _sent(producer: HeldProducer, type_: str) -> list[dict[str, Any]]:
    return [orjson.loads(value) for value, headers in producer.sent if header(headers, "type") == type_]


def _logged(producer: HeldProducer) -> list[LoggedRecord]:
    """What the attempt (number 2, as ENVELOPE says) wrote, as the events topic holds it, after its start."""
    started = LoggedRecord(0, "execution.started", 2, encode(ExecutionStarted(tenant_id="t", execution_id="e1", attempt=2)))
    return [started, *(LoggedRecord(i + 1, str(header(h, "type")), 2, value) for i, (value, h) in enumerate(producer.sent))]


def _tool_names(request: ModelRequest) -> list[str]:
    return [t.name for t in request.tools]


async def test_a_handoff_continues_the_execution_with_the_target_agent_and_its_answer_is_the_output() -> None:
    producer, resolver = HeldProducer(auto_ack=True), Resolver()
    desk = Desk({"triage-m": [transfer("billing")], "billing-m": ["Billing here: one charge is a hold."]})
    outcome = await _run(producer, desk, resolver)
    assert outcome.output == "Billing here: one charge is a hold." and outcome.agent == "billing"
    assert outcome.usage.total_tokens == 8  # both agents' turns count
    [first, second] = desk.requests
    # Triage is offered the handoff tool, with exactly its targets.
    assert _tool_names(first) == ["clock", HANDOFF_TOOL]
    offered = next(t for t in first.tools if t.name == HANDOFF_TOOL)
    assert offered.parameters["properties"]["agent"]["enum"] == ["billing", "support"]
    # Billing runs with its own prompt, model and tools, over the conversation so far.
    assert second.model == "billing-m" and _tool_names(second) == ["calculator"]
    assert second.messages[0] == {"role": "system", "content": "You are billing."}
    assert not any(m["content"] == "You are triage." for m in second.messages)
    assert [m["role"] for m in second.messages[1:]] == ["user", "assistant", "tool"]
    assert orjson.loads(second.messages[-1]["content"]) == {"result": {"handed_off_to": "billing"}}
    [handoff] = _sent(producer, "agent.handoff")
    assert (handoff["from_agent"], handoff["to_agent"], handoff["reason"], handoff["step"], handoff["call_id"]) == (
        "triage",
        "billing",
        "an invoice question",
        0,
        "h1",
    )
    assert (handoff["provider"], handoff["model"]) == ("scripted", "billing-m")  # what runs from here on
    types = [header(h, "type") for _, h in producer.sent]
    assert types.index("tool.call.started") < types.index("agent.handoff") < types.index("tool.call.completed")


async def test_a_target_outside_the_list_is_refused_to_the_model_and_never_run() -> None:
    producer, resolver = HeldProducer(auto_ack=True), Resolver()
    desk = Desk({"triage-m": [transfer("admin"), "I can help with that myself."], "billing-m": ["never"]})
    outcome = await _run(producer, desk, resolver)
    assert outcome.output == "I can help with that myself." and outcome.agent == "triage"
    assert resolver.asked == [] and _sent(producer, "agent.handoff") == []
    assert all(r.model == "triage-m" for r in desk.requests)
    [done] = _sent(producer, "tool.call.completed")
    assert done["tool"] == HANDOFF_TOOL and "admin" in done["error"] and done["result"] is None


async def test_a_target_the_executor_cannot_find_is_a_tool_error() -> None:
    producer, resolver = HeldProducer(auto_ack=True), Resolver()
    spec = AGENTS["triage"].model_copy(update={"handoffs": ("ghost",)})
    AGENTS["ghost-triage"] = spec
    try:
        desk = Desk({"triage-m": [transfer("ghost"), "Staying with triage."]})
        outcome = await _run(producer, desk, resolver, agent="ghost-triage")
    finally:
        del AGENTS["ghost-triage"]
    assert outcome.output == "Staying with triage." and resolver.asked == ["ghost"]
    [done] = _sent(producer, "tool.call.completed")
    assert "not available" in done["error"] and _sent(producer, "agent.handoff") == []


async def test_a_handoff_chain_stops_at_the_limit_with_a_tool_error() -> None:
    producer, resolver = HeldProducer(auto_ack=True), Resolver()
    # triage -> support -> triage -> ... each of them hands off again, until refused.
    desk = Desk({})
    desk.turns["triage-m"] = [transfer("support")] * MAX_HANDOFFS_PER_EXECUTION + ["Fine, triage answers."]
    desk.turns["support-m"] = [transfer("triage")] * MAX_HANDOFFS_PER_EXECUTION + ["Fine, support answers."]
    outcome = await _run(producer, desk, resolver)
    handoffs = _sent(producer, "agent.handoff")
    assert len(handoffs) == MAX_HANDOFFS_PER_EXECUTION
    assert [h["handoffs"] for h in handoffs] == list(range(1, MAX_HANDOFFS_PER_EXECUTION + 1))
    refused = [c for c in _sent(producer, "tool.call.completed") if c["error"]]
    assert refused and all(f"at most {MAX_HANDOFFS_PER_EXECUTION}" in c["error"] for c in refused)
    assert min(c["step"] for c in refused) == MAX_HANDOFFS_PER_EXECUTION  # the first one past the limit
    assert outcome.output == "Fine, triage answers." and outcome.agent == "triage"  # the agent in charge at the limit answers


async def test_a_resumed_attempt_continues_with_the_agent_the_log_says_took_over() -> None:
    producer, resolver = HeldProducer(auto_ack=True), Resolver()
    desk = Desk({"triage-m": [transfer("billing")], "billing-m": ["Billing here."]})
    await _run(producer, desk, resolver)
    # The attempt died after the handoff's call completed, before billing's answer reached the log.
    log = _logged(producer)
    cut = next(i for i, r in enumerate(log) if r.type == "tool.call.completed") + 1
    checkpoint = rebuild(log[:cut], from_offset=0)
    assert checkpoint.from_step == 1 and checkpoint.steps[0].handoff == ("h1", "billing")

    again, fresh = HeldProducer(auto_ack=True), Desk({"triage-m": ["triage must not be asked again"], "billing-m": ["Billing again."]})
    outcome = await _run(again, fresh, resolver, resume=checkpoint)
    assert outcome.output == "Billing again." and outcome.agent == "billing"
    assert [r.model for r in fresh.requests] == ["billing-m"]
    assert _sent(again, "agent.handoff") == []  # the handoff stands; it is not made twice


async def test_an_interrupted_handoff_call_runs_again_and_hands_off_once() -> None:
    producer, resolver = HeldProducer(auto_ack=True), Resolver()
    desk = Desk({"triage-m": [transfer("billing")], "billing-m": ["Billing here."]})
    await _run(producer, desk, resolver)
    log = _logged(producer)
    cut = next(i for i, r in enumerate(log) if r.type == "agent.handoff") + 1  # its tool.call.completed never made it
    checkpoint = rebuild(log[:cut], from_offset=0)
    assert checkpoint.rerun_calls == ("h1",)
    again, fresh = HeldProducer(auto_ack=True), Desk({"triage-m": ["no"], "billing-m": ["Billing again."]})
    outcome = await _run(again, fresh, resolver, resume=checkpoint)
    assert outcome.agent == "billing" and [r.model for r in fresh.requests] == ["billing-m"]
    assert len(_sent(again, "agent.handoff")) == 1


def test_an_agent_may_not_hand_off_to_itself_or_name_a_target_twice() -> None:
    with pytest.raises(ValueError, match="handoffs"):
        AgentSpec(name="a", handoffs=("a",))
    with pytest.raises(ValueError, match="handoffs"):
        AgentSpec(name="a", handoffs=("b", "b"))
    with pytest.raises(ValueError):
        AgentSpec(name="a", handoffs=("not a name",))


async def test_the_offline_scripted_model_hands_off_to_an_agent_the_user_names() -> None:
    """The README's example without an API key: triage hands off, billing uses its calculator and answers."""
    producer = HeldProducer(auto_ack=True)
    triage = AgentSpec(name="triage", tools=(), handoffs=("billing",))
    billing = AgentSpec(name="billing", tools=("calculator",))
    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)

    async def resolve(name: str) -> Agent:
        return Agent(billing, builtin_tools(), (billing.system_prompt,))

    outcome = await run_agent(
        spec=triage,
        request=ExecutionRequested(tenant_id="t", execution_id="e1", agent_id="triage", input="Put me through to billing: what is 2*21?"),
        providers={"scripted": ScriptedProvider()},
        tools=builtin_tools(),
        emitter=emitter,
        settings=SETTINGS,
        resolve=resolve,
    )
    assert outcome.agent == "billing" and outcome.output.startswith("The calculator says 42.")
    assert [h["to_agent"] for h in _sent(producer, "agent.handoff")] == ["billing"]
    assert [c["tool"] for c in _sent(producer, "tool.call.completed")] == [HANDOFF_TOOL, "calculator"]


class Catalog:
    """The executor's agent lookup (attempt.py's ``Lookup``), in memory."""

    def __init__(self, agents: dict[str, AgentSpec]) -> None:
        self.agents = agents

    async def __call__(self, name: str) -> tuple[AgentSpec | None, ExecutionError | None]:
        return self.agents.get(name), None


async def _attempt(agents: dict[str, AgentSpec], desk: Desk, producer: HeldProducer) -> tuple[Ended, list[ExecutionStatus]]:
    statuses: list[ExecutionStatus] = []

    async def publish(status: ExecutionStatus) -> None:
        statuses.append(status)

    providers = {"scripted": cast(Any, desk)}
    run = AttemptRun(providers=providers, tools=builtin_tools(), settings=SETTINGS, cancel_grace_s=1.0, lookup=Catalog(agents))
    emitter = EventEmitter(cast(AIOKafkaProducer, producer), topic="events", envelope=dict(ENVELOPE), max_chars=1000)
    request = ExecutionRequested(tenant_id="t", execution_id="e1", agent_id="triage", input="Why was I charged twice?")
    base = ExecutionStatus(execution_id="e1", tenant_id="t", agent_id="triage", attempt=2, events_topic="events")
    ended = await run.run(request, emitter=emitter, publish=publish, base=base, cancel=asyncio.Event())
    return ended, statuses


async def test_an_attempt_ends_naming_the_agent_that_answered() -> None:
    producer = HeldProducer(auto_ack=True)
    desk = Desk({"triage-m": [transfer("billing")], "billing-m": ["Billing here."]})
    ended, statuses = await _attempt(AGENTS, desk, producer)
    assert ended == Ended(finished=True, state="completed")
    [completed] = _sent(producer, "execution.completed")
    assert completed["handed_off_to"] == "billing" and completed["agent_id"] == ENVELOPE["agent_id"]
    assert statuses[-1].state == "completed" and statuses[-1].extra["handed_off_to"] == "billing"


async def test_a_target_that_cannot_take_over_is_a_tool_error_and_the_first_agent_answers() -> None:
    broken = {
        **AGENTS,
        # Its prompt needs a variable this request does not have; the other names a provider not configured here.
        "billing": AGENTS["billing"].model_copy(update={"system_prompt": "Order {{ order.id }}"}),
        "support": AGENTS["support"].model_copy(update={"provider": "groq"}),
    }
    for target, why in (("billing", "cannot take over"), ("support", "not configured")):
        producer = HeldProducer(auto_ack=True)
        desk = Desk({"triage-m": [transfer(target), "Triage answers."]})
        ended, _ = await _attempt(broken, desk, producer)
        assert ended.state == "completed"
        [done] = _sent(producer, "tool.call.completed")
        assert why in done["error"], done["error"]
        [completed] = _sent(producer, "execution.completed")
        assert completed["output"] == "Triage answers." and completed["handed_off_to"] is None
        assert _sent(producer, "agent.handoff") == []


def test_a_door_may_address_a_session_by_an_agent_whose_handoffs_reach_its_agent() -> None:
    assert addressable(AGENTS, "triage", "triage")
    assert addressable(AGENTS, "triage", "billing")  # triage -> billing
    assert addressable(AGENTS, "support", "billing")  # support -> triage -> billing
    assert not addressable(AGENTS, "billing", "triage")  # billing hands off to nobody
    assert not addressable(AGENTS, "ghost", "billing")


def test_the_agent_list_says_whom_an_agent_may_hand_off_to() -> None:
    assert agent_info(AGENTS["triage"]).handoffs == ["billing", "support"]
    assert agent_info(AGENTS["billing"]).handoffs == []
