"""The agent loop: prompt -> model stream -> tool calls (concurrently) -> model ... up to max steps."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import orjson
from jinja2 import StrictUndefined, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

from schemas.agents import AgentSpec
from schemas.events import ExecutionRequested, ToolCallCompleted, ToolCallStarted, Usage
from services.executor.emitter import EventEmitter
from services.executor.providers.base import ModelRequest, Provider, TextDelta, ToolCall, TurnEnd
from services.executor.tools import Tool, ToolError, parse_arguments

_templates = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class ExecutionError(Exception):
    """The execution cannot finish; the message is the ``execution.failed`` reason."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


@dataclass(frozen=True, slots=True)
class Outcome:
    output: str
    usage: Usage


def render_system_prompt(spec: AgentSpec, request: ExecutionRequested) -> str:
    try:
        return _templates.from_string(spec.system_prompt).render(**request.variables, input=request.input, agent=spec.name)
    except UndefinedError as exc:
        raise ExecutionError(f"prompt template of agent {spec.name!r}: {exc.message}") from exc
    except TemplateError as exc:
        raise ExecutionError(f"prompt template of agent {spec.name!r} cannot be rendered: {exc}") from exc


async def run_agent(
    *,
    spec: AgentSpec,
    request: ExecutionRequested,
    provider: Provider,
    tools: dict[str, Tool],
    emitter: EventEmitter,
    tool_timeout_s: float,
) -> Outcome:
    messages: list[dict[str, Any]] = [{"role": "system", "content": render_system_prompt(spec, request)}]
    messages += [m.model_dump(exclude_none=True) for m in request.history]
    messages.append({"role": "user", "content": request.input})
    allowed = {name: tools[name] for name in spec.tools if name in tools}
    specs = tuple(t.spec for t in allowed.values())
    usage = Usage()
    for step in range(spec.max_steps):
        parts: list[str] = []
        end = TurnEnd()
        model_request = ModelRequest(model=spec.model, messages=tuple(messages), tools=specs, params=spec.params)
        async for chunk in provider.stream(model_request):
            if isinstance(chunk, TextDelta):
                parts.append(chunk.text)
                await emitter.text(chunk.text, step=step)
            else:
                end = chunk
        usage = usage + end.usage
        text = "".join(parts)
        if not end.tool_calls:
            return Outcome(output=text, usage=usage)
        messages.append(
            {
                "role": "assistant",
                "content": text or None,
                "tool_calls": [
                    {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}} for c in end.tool_calls
                ],
            }
        )
        results = await asyncio.gather(
            *(_call_tool(call, allowed, emitter, step=step, timeout_s=tool_timeout_s) for call in end.tool_calls)
        )
        for call, content in zip(end.tool_calls, results, strict=True):
            messages.append({"role": "tool", "tool_call_id": call.id, "content": content})
    raise ExecutionError(f"agent {spec.name!r} did not finish within max_steps={spec.max_steps}")


async def _call_tool(call: ToolCall, tools: dict[str, Tool], emitter: EventEmitter, *, step: int, timeout_s: float) -> str:
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
        args = parse_arguments(tool, call.arguments)
        await emitter.emit(ToolCallStarted, call_id=call.id, tool=call.name, arguments=args, step=step)
        announced = True
        result = await asyncio.wait_for(tool(args), timeout_s)
    except ToolError as exc:
        error = str(exc)
    except TimeoutError:
        error = f"tool {call.name!r} timed out after {timeout_s:g}s"
    if not announced:
        await emitter.emit(ToolCallStarted, call_id=call.id, tool=call.name, arguments={}, step=step)
    duration_ms = (time.perf_counter() - started) * 1000
    await emitter.emit(ToolCallCompleted, call_id=call.id, tool=call.name, result=result, error=error, duration_ms=duration_ms, step=step)
    payload = {"error": error} if error is not None else {"result": result}
    return orjson.dumps(payload).decode()
