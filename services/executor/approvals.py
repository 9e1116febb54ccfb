"""Approval of tool calls (issue 16): which calls of a step wait for a human, and what was decided.

A step's calls that need approval (the agent's ``approval`` policy) and have no decision in the log
are announced with ``tool.call.approval_requested`` (once: a resume keeps the first deadline) and the
attempt parks (``Parked``): it ends ``waiting``, frees its slot and commits its lane record. The
decision (posted to the orchestrator, or the default once the deadline passed) is an event on the
execution's events topic; the next attempt, on any executor, rebuilds the step from the log
(checkpoint.py) and folds it in: approved calls run (with the approver's arguments, if edited),
rejected ones answer the model with the reason, as the tool's error.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from services.common.errors import AgentstreamError
from services.executor.providers.base import ToolCall


@dataclass(frozen=True, slots=True)
class Decision:
    decision: Literal["approve", "reject"]
    reason: str = ""
    arguments: dict[str, Any] | None = None
    by: str = "user"
    text: str | None = None  # ask_user: the user's answer


@dataclass(frozen=True, slots=True)
class Pending:
    """A call waiting for its decision: what the waiting snapshot lists."""

    call: ToolCall
    arguments: dict[str, Any]
    step: int
    deadline: datetime
    default: Literal["approve", "reject"]

    @property
    def kind(self) -> Literal["approval", "input"]:
        return "input" if self.call.name == ASK_USER else "approval"

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "call_id": self.call.id,
            "tool": self.call.name,
            "arguments": self.arguments,
            "step": self.step,
            "deadline": self.deadline.isoformat(),
            "default": self.default,
        }


ASK_USER = "ask_user"  # the built-in tool whose calls wait for the user's answer (tools.py)


class Parked(AgentstreamError):
    """Not a failure but a signal: the step's calls ran where they could; these wait for a decision.
    The attempt ends ``waiting`` (attempt.py)."""

    retriable = False

    def __init__(self, pending: list[Pending]) -> None:
        super().__init__(f"waiting for approval of {[p.call.id for p in pending]}")
        self.pending = pending


def rejection(decision: Decision) -> str:
    """The error the model sees for a rejected call (the same when rebuilt from the log)."""
    why = decision.reason or "no reason given"
    source = "its approval deadline passed" if decision.by == "deadline" else "the approver"
    return f"tool call rejected by {source}: {why}"
