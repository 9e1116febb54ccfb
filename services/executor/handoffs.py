"""Handoffs (issue 20): an agent hands the conversation to another agent, within the same execution.

An agent whose spec names ``handoffs`` is offered the built-in ``transfer_to_agent`` tool, whose
``agent`` argument is an enum of exactly those names. A call the schema refuses (a target outside
the list), a second handoff in one turn, one past ``MAX_HANDOFFS_PER_EXECUTION`` or to an agent the
executor cannot find is a tool error for the model: nothing else happens. A call that succeeds
writes ``agent.handoff`` (before its ``tool.call.completed``, so the checkpoint has it whenever the
call counts as done) and the loop (loop.py) continues from the next step with the target's prompt,
model and tools; the conversation so far, this call included, is the target's transcript.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from schemas.agents import AgentSpec
from schemas.bounds import MAX_HANDOFF_REASON_CHARS, MAX_HANDOFFS_PER_EXECUTION
from schemas.events import AgentHandoff
from services.executor.providers.base import ToolSpec
from services.executor.tools import Tool, ToolError, current_tool_call

HANDOFF_TOOL = "transfer_to_agent"


@dataclass(frozen=True, slots=True)
class Agent:
    """An agent ready to run: its spec, the tools it may call, its system messages (prompt, notices)."""

    spec: AgentSpec
    tools: dict[str, Tool]
    system: tuple[str, ...]


Resolve = Callable[[str], Awaitable[Agent]]  # raises ToolError when the agent cannot run here


def handoff_spec(targets: tuple[str, ...]) -> ToolSpec:
    return ToolSpec(
        name=HANDOFF_TOOL,
        description=(
            "Hand the conversation to another agent, who answers the user from here on. "
            "Use it when another agent is better suited; say why in `reason`."
        ),
        parameters={
            "type": "object",
            "properties": {
                "agent": {"type": "string", "enum": list(targets)},
                "reason": {"type": "string", "maxLength": MAX_HANDOFF_REASON_CHARS},
            },
            "required": ["agent"],
            "additionalProperties": False,
        },
    )


@dataclass(slots=True)
class HandoffTool:
    """``transfer_to_agent`` for one agent's turns; ``chosen`` is the agent a successful call picked."""

    source: str
    targets: tuple[str, ...]
    made: int  # handoffs this execution made before this agent took over
    resolve: Resolve
    spec: ToolSpec = field(init=False)
    chosen: Agent | None = None

    def __post_init__(self) -> None:
        self.spec = handoff_spec(self.targets)

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        target = str(arguments.get("agent", ""))
        if target not in self.targets:  # the schema's enum refuses it first; this says it again, plainly
            raise ToolError(f"agent {self.source!r} may not hand off to {target!r}; allowed: {list(self.targets)}")
        if self.chosen is not None:
            raise ToolError(f"this turn already hands off to {self.chosen.spec.name!r}; one handoff per turn")
        if self.made >= MAX_HANDOFFS_PER_EXECUTION:
            raise ToolError(f"handoff refused: this execution already made {self.made} handoffs (at most {MAX_HANDOFFS_PER_EXECUTION})")
        agent = await self.resolve(target)
        context = current_tool_call.get()
        if context is None:
            raise ToolError("transfer_to_agent runs only inside the agent loop")
        reason = str(arguments.get("reason", ""))[:MAX_HANDOFF_REASON_CHARS]
        await context.emitter.emit(
            AgentHandoff,
            call_id=context.call_id,
            from_agent=self.source,
            to_agent=target,
            reason=reason,
            step=context.step,
            handoffs=self.made + 1,
            provider=agent.spec.provider[:128],
            model=agent.spec.model[:128],
        )
        self.chosen = agent
        return {"handed_off_to": target}
