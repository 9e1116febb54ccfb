"""The agent loop: prompt -> model stream -> tool calls (concurrently) -> model ... up to max steps."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson

from schemas.agents import AgentSpec, ApprovalPolicy
from schemas.bounds import json_problem
from schemas.events import (
    ExecutionRequested,
    ExecutionRestarted,
    InputProvided,
    InputRequested,
    ToolCallApprovalDecided,
    ToolCallApprovalRequested,
    ToolCallCompleted,
    ToolCallStarted,
    TurnCompleted,
    TurnToolCall,
    Usage,
)
from schemas.outputs import output_mismatch
from services.common.errors import AgentstreamError
from services.common.observability.tracing import traced_tool_call
from services.common.prompts import PromptError, render_prompt
from services.executor.approvals import ASK_USER, Decision, Parked, Pending, rejection
from services.executor.checkpoint import Checkpoint, DoneStep, tool_content
from services.executor.emitter import EventEmitter
from services.executor.handoffs import HANDOFF_TOOL, Agent, HandoffTool, Resolve
from services.executor.providers.base import ModelRequest, Provider, TextDelta, ToolCall, ToolSpec, TurnEnd
from services.executor.resilience import Restart, Route, parse_route, resilient_stream
from services.executor.settings import RetrySettings, TimeoutSettings
from services.executor.tools import Tool, ToolContext, ToolError, current_tool_call, parse_arguments


class ExecutionError(AgentstreamError):
    """The execution cannot finish; the message is the ``execution.failed`` reason."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


ASK_USER_TIMEOUT_S = 86_400.0  # how long an ask_user call waits when the agent has no approval policy to say


@dataclass(frozen=True, slots=True)
class Outcome:
    output: str
    usage: Usage
    agent: str = ""  # the agent that answered (another than the requested one after a handoff)


@dataclass(frozen=True, slots=True)
class LoopSettings:
    retry: RetrySettings
    timeouts: TimeoutSettings
    tool_timeout_s: float
    tool_retries: int = 0
    tool_retry_backoff_s: float = 0.2


def render_system_prompt(spec: AgentSpec, request: ExecutionRequested) -> str:
    # The orchestrator rendered it at submit (services/common/prompts.py); a request from elsewhere may still fail here.
    try:
        return render_prompt(spec, request.variables, request.input)
    except PromptError as exc:
        raise ExecutionError(str(exc)) from exc


def routes_of(spec: AgentSpec, providers: dict[str, Provider]) -> list[Route]:
    return [Route(spec.provider, spec.model), *(parse_route(entry, providers) for entry in spec.fallback)]


async def run_agent(
    *,
    spec: AgentSpec,
    request: ExecutionRequested,
    providers: dict[str, Provider],
    tools: dict[str, Tool],
    emitter: EventEmitter,
    settings: LoopSettings,
    notices: Sequence[str] = (),
    resume: Checkpoint | None = None,
    resolve: Resolve | None = None,
) -> Outcome:
    """``notices``: what the model should know about its tools (an MCP server that is down), as system messages.
    ``resume``: steps earlier attempts completed (checkpoint.py): their turns and tool results are the
    transcript's, not run again; calls of the last one that never completed run now, then the next step.
    ``resolve``: how a handoff's target agent is found (handoffs.py); without it, no agent hands off."""
    completion = request.mode == "completion"
    spec = _with_model(spec, request.model)
    system = () if completion else (render_system_prompt(spec, request), *notices)
    context = _Context(request, settings, emitter, providers, resolve)
    agent = _Running.of(Agent(spec, tools, system), context, made=0, completion=completion)
    body: list[dict[str, Any]] = []
    if request.instructions:
        body.append({"role": "system", "content": request.instructions})
    body += [m.model_dump(exclude_none=True) for m in request.history]
    body.append({"role": "user", "content": request.input})
    usage = Usage()
    steps = 1 if completion else spec.max_steps
    step, retried = 0, False
    if resume is not None and resume.steps:
        usage = resume.usage
        for done in resume.steps:
            body.append(_assistant(done.text, done.calls))
            results = dict(done.results)
            rerun = [c for c in done.calls if c.id not in results]
            if rerun:  # interrupted mid-call: run again, with the same call id (so the same idempotency key)
                results |= dict(zip((c.id for c in rerun), await agent.call(rerun, step=done.step, done=done), strict=True))
                await emitter.drain()
            body += [{"role": "tool", "tool_call_id": c.id, "content": results[c.id]} for c in done.calls]
            # A handoff the log holds as done (or that the rerun just made): the next step is the target's.
            handed = agent.chosen()
            if handed is None and done.handoff is not None and done.handoff[0] in done.results:
                handed = await _resolved(resolve, done.handoff[1])
            if handed is not None:
                agent = agent.handed_to(handed)
                steps = done.step + 1 + handed.spec.max_steps
        step = resume.from_step
    while step < steps:
        parts: list[str] = []
        end = TurnEnd()
        messages = (*agent.head, *body)
        model_request = ModelRequest(model=agent.spec.model, messages=messages, tools=agent.specs, params=agent.params)
        stream = resilient_stream(agent.routes, model_request, providers, retry=settings.retry, timeouts=agent.timeouts)
        async with contextlib.aclosing(stream):
            async for chunk in stream:
                if isinstance(chunk, TextDelta):
                    parts.append(chunk.text)
                    await emitter.text(chunk.text, step=step)
                elif isinstance(chunk, Restart):
                    parts.clear()
                    await _announce_restart(emitter, chunk, step)
                else:
                    end = chunk
        usage = usage + end.usage
        text = "".join(parts)
        if not end.tool_calls:
            schema = agent.schema
            problem = None if schema is None else output_mismatch(schema, text)
            if problem is None:
                return Outcome(output=text, usage=usage, agent=agent.spec.name)
            if retried:
                raise ExecutionError(f"the answer did not match the output schema, also when asked again: {problem}")
            # Once more, with the validation error: the same step, its text void (as after a restart).
            retried = True
            provider, model = agent.spec.provider, agent.spec.model
            again = Restart(f"output schema: {problem}", provider, model, provider, model, True, 0.0)
            await _announce_restart(emitter, again, step)
            body.append({"role": "assistant", "content": text})
            body.append({"role": "user", "content": _RETRY_PROMPT.format(problem=problem)})
            continue
        body.append(_assistant(text, end.tool_calls))
        # The step's checkpoint, acknowledged before any of its tools runs: a later attempt reuses this
        # turn (and its call ids, so the tools' idempotency keys) instead of asking the model again.
        await (await emitter.emit(TurnCompleted, step=step, text=text, tool_calls=_turn_calls(end.tool_calls), usage=end.usage))
        contents = await agent.call(end.tool_calls, step=step, done=None)
        # The step's results in the log before the model hears of them: a call the model saw answered
        # is one a later attempt reuses, never one it runs again.
        await emitter.drain()
        for tool_call, content in zip(end.tool_calls, contents, strict=True):
            body.append({"role": "tool", "tool_call_id": tool_call.id, "content": content})
        handed = agent.chosen()
        if handed is not None:  # the target answers from the next step, with a budget of its own
            agent = agent.handed_to(handed)
            steps = step + 1 + handed.spec.max_steps
        step += 1
    raise ExecutionError(f"agent {agent.spec.name!r} did not finish within max_steps={agent.spec.max_steps}")


@dataclass(frozen=True, slots=True)
class _Running:
    """The agent running the loop's turns now: what its model calls and tool calls are made with.
    A handoff replaces it (``handed_to``); the transcript (everything but ``head``) carries over."""

    spec: AgentSpec
    head: tuple[dict[str, Any], ...]  # its system messages
    specs: tuple[ToolSpec, ...]
    params: dict[str, Any]
    schema: dict[str, Any] | None
    routes: list[Route]
    timeouts: TimeoutSettings
    call: Callable[..., Awaitable[list[str]]]
    handoff: HandoffTool | None
    made: int  # handoffs the execution made before this agent took over
    context: _Context

    @classmethod
    def of(cls, agent: Agent, context: _Context, *, made: int, completion: bool = False) -> _Running:
        spec, request, settings, resolve = agent.spec, context.request, context.settings, context.resolve
        allowed = {} if completion else {name: agent.tools[name] for name in spec.tools if name in agent.tools}
        handoff = None
        if spec.handoffs and resolve is not None and not completion:
            handoff = HandoffTool(source=spec.name, targets=spec.handoffs, made=made, resolve=resolve)
            allowed[HANDOFF_TOOL] = handoff
        params = {**spec.params, **request.params}
        schema = request.output_schema or spec.output_schema
        if schema is not None and "response_format" not in params:
            params["response_format"] = {"type": "json_schema", "json_schema": {"name": "output", "schema": schema}}
        timeouts = settings.timeouts
        if spec.first_token_timeout_s is not None:
            timeouts = timeouts.model_copy(update={"first_token_s": spec.first_token_timeout_s})
        timeout_s = spec.tool_timeout_s or settings.tool_timeout_s
        call = functools.partial(_gated_calls, allowed, context.emitter, timeout_s=timeout_s, settings=settings, policy=spec.approval)
        return cls(
            spec=spec,
            head=tuple({"role": "system", "content": text} for text in agent.system),
            specs=tuple(t.spec for t in allowed.values()),
            params=params,
            schema=schema,
            routes=routes_of(spec, context.providers),
            timeouts=timeouts,
            call=call,
            handoff=handoff,
            made=made,
            context=context,
        )

    def chosen(self) -> Agent | None:
        return self.handoff.chosen if self.handoff is not None else None

    def handed_to(self, agent: Agent) -> _Running:
        return _Running.of(agent, self.context, made=self.made + 1)


@dataclass(frozen=True, slots=True)
class _Context:
    """What every agent of one execution runs with."""

    request: ExecutionRequested
    settings: LoopSettings
    emitter: EventEmitter
    providers: dict[str, Provider]
    resolve: Resolve | None


async def _resolved(resolve: Resolve | None, name: str) -> Agent:
    """A handoff's target, found again on resume; one that is gone now ends the execution."""
    if resolve is None:
        raise ExecutionError(f"the execution handed off to agent {name!r}, which cannot run here")
    try:
        return await resolve(name)
    except ToolError as exc:
        raise ExecutionError(f"the execution handed off to agent {name!r}, which cannot run now: {exc}", retriable=exc.retriable) from exc


def _assistant(text: str, calls: Sequence[ToolCall]) -> dict[str, Any]:
    return {
        "role": "assistant",
        "content": text or None,
        "tool_calls": [{"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in calls],
    }


def _turn_calls(calls: Sequence[ToolCall]) -> list[TurnToolCall]:
    return [TurnToolCall(id=c.id, name=c.name, arguments=c.arguments) for c in calls]


async def _gated_calls(
    tools: dict[str, Tool],
    emitter: EventEmitter,
    calls: Sequence[ToolCall],
    *,
    step: int,
    timeout_s: float,
    settings: LoopSettings,
    policy: ApprovalPolicy | None,
    done: DoneStep | None,
) -> list[str]:
    """A step's calls through the agent's approval policy (approvals.py): calls without a decision
    are announced and the attempt parks (``Parked``) once the others ran and are in the log;
    rejected calls answer with the reason; approved ones run, with the approver's arguments if edited."""
    if policy is None and all(c.name != ASK_USER for c in calls):
        return await _run_calls(tools, emitter, calls, step=step, timeout_s=timeout_s, settings=settings)
    decisions = dict(done.decisions) if done is not None else {}
    requested = done.requested if done is not None else {}
    now = datetime.now(UTC)
    wait_s = policy.timeout_s if policy is not None else ASK_USER_TIMEOUT_S
    default = policy.default if policy is not None else "reject"
    run: list[ToolCall] = []
    contents: dict[str, str] = {}
    waiting: list[ToolCall] = []
    for c in calls:
        asking = c.name == ASK_USER and ASK_USER in tools
        # A handoff is the loop's own move, not a side effect: "all" does not gate it (naming it does).
        exempt = c.name == HANDOFF_TOOL and policy is not None and policy.tools == "all"
        if not asking and (policy is None or exempt or not policy.requires(c.name)):
            run.append(c)
            continue
        decision = decisions.get(c.id)
        deadline = requested.get(c.id)
        if decision is None and deadline is not None and deadline <= now:  # nobody decided in time: the default, as an event
            decision = await _deadline_passed(c, deadline, default, emitter, step=step, asking=asking)
        if decision is None:
            waiting.append(c)
        elif asking:
            contents[c.id] = await _answered(c, decision, emitter, step=step)
        elif decision.decision == "reject":
            contents[c.id] = await _reject(c, decision, emitter, step=step)
        elif decision.arguments is not None:
            run.append(ToolCall(id=c.id, name=c.name, arguments=orjson.dumps(decision.arguments).decode()))
        else:
            run.append(c)
    results = await _run_calls(tools, emitter, run, step=step, timeout_s=timeout_s, settings=settings)
    contents |= dict(zip((c.id for c in run), results, strict=True))
    if waiting:
        pending = [Pending(c, _arguments_of(c), step, requested.get(c.id) or now + timedelta(seconds=wait_s), default) for c in waiting]
        for p in pending:
            if p.call.id in requested:  # announced once: a resume keeps the first deadline
                continue
            if p.kind == "input":
                question = str(p.arguments.get("question", ""))[:4096]
                await emitter.emit(InputRequested, call_id=p.call.id, question=question, step=step, deadline=p.deadline)
            else:
                await emitter.emit(
                    ToolCallApprovalRequested,
                    call_id=p.call.id,
                    tool=p.call.name,
                    arguments=p.arguments,
                    step=step,
                    deadline=p.deadline,
                    default=p.default,
                )
        await emitter.drain()  # the other calls' results and the requests in the log before the attempt parks
        raise Parked(pending)
    return [contents[c.id] for c in calls]


async def _deadline_passed(
    call: ToolCall, deadline: datetime, default: Literal["approve", "reject"], emitter: EventEmitter, *, step: int, asking: bool
) -> Decision:
    reason = f"no decision before {deadline.isoformat()}"
    if asking:
        await emitter.emit(InputProvided, call_id=call.id, step=step, text="", by="deadline")
        return Decision("reject", f"no answer before {deadline.isoformat()}", by="deadline")
    await emitter.emit(ToolCallApprovalDecided, call_id=call.id, step=step, decision=default, reason=reason, by="deadline")
    return Decision(default, reason, by="deadline")


async def _answered(call: ToolCall, decision: Decision, emitter: EventEmitter, *, step: int) -> str:
    """An ask_user call's result: the user's answer, or an error if none came before the deadline."""
    answered = decision.by != "deadline" and decision.text is not None
    result = {"answer": decision.text} if answered else None
    error = None if answered else f"the user did not answer: {decision.reason or 'deadline passed'}"
    await emitter.emit(ToolCallStarted, call_id=call.id, tool=call.name, arguments=_arguments_of(call), step=step)
    await emitter.emit(ToolCallCompleted, call_id=call.id, tool=call.name, result=result, error=error, duration_ms=0.0, step=step)
    return tool_content(result, error)


def _arguments_of(call: ToolCall) -> dict[str, Any]:
    try:
        value = orjson.loads(call.arguments or "{}")
    except orjson.JSONDecodeError:
        return {"_raw": call.arguments[:4096]}
    return value if isinstance(value, dict) and json_problem(value) is None else {"_raw": call.arguments[:4096]}


async def _reject(call: ToolCall, decision: Decision, emitter: EventEmitter, *, step: int) -> str:
    """A rejected call never runs: its result is the rejection, as the tool's error."""
    error = rejection(decision)
    await emitter.emit(ToolCallStarted, call_id=call.id, tool=call.name, arguments=_arguments_of(call), step=step)
    await emitter.emit(ToolCallCompleted, call_id=call.id, tool=call.name, result=None, error=error, duration_ms=0.0, step=step)
    return tool_content(None, error)


async def _run_calls(
    tools: dict[str, Tool], emitter: EventEmitter, calls: Sequence[ToolCall], *, step: int, timeout_s: float, settings: LoopSettings
) -> list[str]:
    """A step's tool calls, concurrently; each one's tool message content, in order."""
    return await asyncio.gather(
        *(
            traced_tool_call(
                functools.partial(_call_tool, call, tools, emitter, step=step, timeout_s=timeout_s, settings=settings),
                tool=call.name,
                call_id=call.id,
            )
            for call in calls
        )
    )


_RETRY_PROMPT = "Your answer is not valid: {problem}. Answer again with only a JSON document that matches the required schema."


def started_fields(request: ExecutionRequested, spec: AgentSpec | None) -> dict[str, Any]:
    """What ``execution.started`` says: the provider and model that run, whether the answer is structured."""
    if spec is None:
        return {"provider": "", "model": ""}
    return {
        "provider": spec.provider,
        "model": request.model or spec.model,
        "structured": bool(request.output_schema or spec.output_schema),
    }


def _with_model(spec: AgentSpec, model: str | None) -> AgentSpec:
    """The agent with one of its allowed ``models`` (a request's ``agent:model``); others are refused."""
    if model is None or model == spec.model:
        return spec
    if model not in spec.models:
        raise ExecutionError(f"agent {spec.name!r} does not allow model {model!r}; allowed: {[spec.model, *spec.models]}")
    return spec.model_copy(update={"model": model})


async def _announce_restart(emitter: EventEmitter, restart: Restart, step: int) -> None:
    if restart.text_discarded:
        emitter.discard(step)  # what is still buffered never reaches the client
    await emitter.emit(
        ExecutionRestarted,
        step=step,
        reason=restart.reason,
        provider=restart.provider,
        model=restart.model,
        previous_provider=restart.previous_provider,
        previous_model=restart.previous_model,
        fallback=restart.fallback,
        text_discarded=restart.text_discarded,
        delay_s=restart.delay_s,
    )


async def _invoke(tool: Tool, args: dict[str, Any], *, timeout_s: float, settings: LoopSettings) -> Any:
    """Each attempt has the timeout; retriable failures are tried again, a bounded number of times."""
    for attempt in range(settings.tool_retries + 1):
        try:
            return await asyncio.wait_for(tool(args), timeout_s)
        except ToolError as exc:
            if not exc.retriable or attempt == settings.tool_retries:
                raise
        await asyncio.sleep(settings.tool_retry_backoff_s * 2.0**attempt)
    raise AssertionError("unreachable")


def _bounded(what: str, tool: str, value: Any) -> Any:
    """Tool arguments (the model's) and results (a service's) within the bounds every event has
    (schemas/bounds.py): out of them, the call fails with the reason, as a result for the model."""
    problem = json_problem(value)
    if problem is not None:
        raise ToolError(f"tool {tool!r} {what} out of bounds: JSON value {problem}")
    return value


async def _call_tool(
    call: ToolCall, tools: dict[str, Tool], emitter: EventEmitter, *, step: int, timeout_s: float, settings: LoopSettings
) -> str:
    """Run one tool call; a failure becomes an error result for the model, never a crash."""
    started = time.perf_counter()
    tool = tools.get(call.name)
    args: dict[str, Any] = {}
    result: Any = None
    error: str | None = None
    announced = False
    try:
        if tool is None:
            raise ToolError(f"unknown tool {call.name!r}; available: {sorted(tools)}")
        timeout_s = getattr(tool, "timeout_s", None) or timeout_s  # tools that wait for a job bring their own
        args = _bounded("arguments", call.name, parse_arguments(tool, call.arguments))
        await emitter.emit(ToolCallStarted, call_id=call.id, tool=call.name, arguments=args, step=step)
        announced = True
        key = f"{emitter.envelope['execution_id']}:{call.id}"
        current_tool_call.set(ToolContext(emitter=emitter, call_id=call.id, tool=call.name, step=step, idempotency_key=key))
        result = _bounded("result", call.name, await _invoke(tool, args, timeout_s=timeout_s, settings=settings))
    except ToolError as exc:
        error = str(exc)
    except TimeoutError:
        error = f"tool {call.name!r} timed out after {timeout_s:g}s"
    except Exception as exc:  # a tool's own bug is the model's error result, not the execution's end
        error = f"tool {call.name!r} failed: {type(exc).__name__}: {exc}"
    if not announced:
        await emitter.emit(ToolCallStarted, call_id=call.id, tool=call.name, arguments={}, step=step)
    duration_ms = (time.perf_counter() - started) * 1000
    await emitter.emit(ToolCallCompleted, call_id=call.id, tool=call.name, result=result, error=error, duration_ms=duration_ms, step=step)
    return tool_content(result, error)
