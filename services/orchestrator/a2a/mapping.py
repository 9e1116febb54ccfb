"""Our execution events -> A2A task events (the SDK's protobuf types), as a pure fold.

A task is an execution (``task.id`` = execution id), its context the session (``contextId`` =
session id). ``TaskMapper.feed(cursor, event)`` returns the A2A events one of ours becomes, each
with ``metadata["agentstream.cursor"]``: our cursor (the event's partition offset), ``N:k`` for the
earlier ones of a group, so a client that stops anywhere can resubscribe after exactly that event.
``task()`` is the task as of the events folded so far.

Choices where A2A has no exact counterpart:
* The answer is one artifact (``answer``): model text is appended to it as it streams (turns joined
  by a blank line); text voided by a restart or a newer attempt is taken back by sending the whole
  artifact again (``append: false``); at the end the final answer replaces it (``lastChunk``), so
  with an output schema the artifact is the JSON answer alone.
* Tool calls run server-side: each start and result is a ``working`` status update whose message
  has one data part (``{"toolCall": ...}`` / ``{"toolResult": ...}``).
"""

from __future__ import annotations

from typing import Any

import orjson
from a2a.helpers.proto_helpers import new_data_part
from a2a.types import Artifact, Message, Part, Role, Task, TaskArtifactUpdateEvent, TaskState, TaskStatus, TaskStatusUpdateEvent

CURSOR_KEY = "agentstream.cursor"
ARTIFACT_ID = "answer"
A2AEvent = TaskStatusUpdateEvent | TaskArtifactUpdateEvent

_STATES = {
    "queued": TaskState.TASK_STATE_SUBMITTED,
    "running": TaskState.TASK_STATE_WORKING,
    "waiting": TaskState.TASK_STATE_INPUT_REQUIRED,  # a tool call waits for approval (issue 16)
    "completed": TaskState.TASK_STATE_COMPLETED,
    "cancelled": TaskState.TASK_STATE_CANCELED,
}


def task_state(state: str) -> TaskState:
    return _STATES.get(state, TaskState.TASK_STATE_FAILED)  # failed, timed_out


class TaskMapper:
    def __init__(self, *, task_id: str, context_id: str, history: list[Message]) -> None:
        self.task_id = task_id
        self.context_id = context_id
        self.history = history
        self.state: TaskState = TaskState.TASK_STATE_SUBMITTED
        self.reason: str | None = None
        self.cursor: str | None = None  # of the last event folded
        self._steps: dict[int, list[str]] = {}  # each model turn's text, as streamed (joined when needed)
        self._before: dict[int, list[str]] = {}  # the steps as they stood when the newest attempt started
        self._last_step: int | None = None
        self._final: str | None = None
        self._structured = False
        self._attempt = 0

    @property
    def finished(self) -> bool:
        return self.state in (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED)

    # -- events ---------------------------------------------------------------------------
    def feed(self, cursor: int, event: dict[str, Any]) -> list[A2AEvent]:
        out = self._events(event)
        for k, item in enumerate(out):
            item.metadata.update({CURSOR_KEY: str(cursor) if k == len(out) - 1 else f"{cursor}:{k}"})
        if out:
            self.cursor = str(cursor)
        return out

    def _events(self, event: dict[str, Any]) -> list[A2AEvent]:
        kind = event.get("type")
        if kind == "execution.started":
            attempt = int(event.get("attempt", 1))
            self._structured = bool(event.get("structured", self._structured))
            previous, self._attempt = self._attempt, max(self._attempt, attempt)
            if previous == 0:
                self.state = TaskState.TASK_STATE_WORKING
                return [self._status()]
            if attempt > previous and self._steps:  # a newer attempt starts over (its text is void), unless it resumes
                self._before, self._steps = self._steps, {}
                return [self._artifact("", append=False)]
            return []
        if kind == "execution.resumed" and int(event.get("attempt", 1)) == self._attempt:
            kept = {n: t for n, t in self._before.items() if n < int(event.get("from_step", 0))}
            if not kept:
                return []
            self._steps = kept | self._steps  # the steps the new attempt reuses stand
            self._last_step = max(self._steps)
            return [] if self._structured else [self._artifact(self.text(), append=False)]
        if kind == "token.delta":
            step, text = int(event.get("step", 0)), str(event.get("text", ""))
            fresh = not self._steps
            if self._steps and self._last_step is not None and step != self._last_step and step not in self._steps:
                text = "\n\n" + text
            self._steps.setdefault(step, []).append(text)
            self._last_step = step
            if self._structured:
                return []
            return [self._artifact(text, append=not fresh)]
        if kind == "execution.restarted" and event.get("text_discarded"):
            if self._steps.pop(int(event.get("step", 0)), None) is not None and not self._structured:
                return [self._artifact(self.text(), append=False)]
            return []
        if kind == "tool.call.started":
            call = {"callId": str(event.get("call_id", "")), "tool": str(event.get("tool", "")), "arguments": event.get("arguments") or {}}
            return [self._status(self._data_message(f"call.{call['callId']}", {"toolCall": call}))]
        if kind == "tool.call.completed":
            result: dict[str, Any] = {"callId": str(event.get("call_id", "")), "tool": str(event.get("tool", ""))}
            error = event.get("error")
            result |= {"error": error} if error is not None else {"result": _plain(event.get("result"))}
            return [self._status(self._data_message(f"result.{result['callId']}", {"toolResult": result}))]
        if kind == "agent.handoff":  # issue 20: who answers from here on, as a data part of a status update
            handoff = {key: str(event.get(field, "")) for key, field in (("from", "from_agent"), ("to", "to_agent"), ("reason", "reason"))}
            return [self._status(self._data_message(f"handoff.{event.get('call_id', '')}", {"handoff": handoff}))]
        if kind == "execution.completed":
            self._final = str(event.get("output", ""))
            self.state = TaskState.TASK_STATE_COMPLETED
            return [self._artifact(self._final, append=False, last=True), self._status()]
        if kind in ("execution.failed", "execution.cancelled"):
            return self.end(kind.removeprefix("execution."), str(event.get("reason") or ""))
        return []

    def end(self, state: str, reason: str | None) -> list[A2AEvent]:
        """The final status: from a terminal event, or from the status view (no event: cancelled
        while queued, timed out)."""
        if self.finished:
            return []
        self.state, self.reason = task_state(state), reason or state
        return [self._status(self._text_message("status", f"the task {state}: {self.reason}"))]

    def settled(self, state: str, output: str | None, error: str | None) -> None:
        """The task as the store recorded its end (its events out of the bridge's reach)."""
        self.state = task_state(state)
        if output:
            self._final = output
        if self.state != TaskState.TASK_STATE_COMPLETED:
            self.reason = error or state

    # -- the task -------------------------------------------------------------------------
    def text(self) -> str:
        if self._final is not None:
            return self._final
        return "".join("".join(parts) for _, parts in sorted(self._steps.items())).lstrip("\n")

    def task(self, *, history_length: int | None = None) -> Task:
        task = Task(id=self.task_id, context_id=self.context_id, status=self._status_of())
        text = self.text()
        if text:
            task.artifacts.append(Artifact(artifact_id=ARTIFACT_ID, name=ARTIFACT_ID, parts=[self._part(text)]))
        history = self.history if history_length is None else self.history[-history_length:] if history_length else []
        task.history.extend(history)
        if self.cursor is not None:
            task.metadata.update({CURSOR_KEY: self.cursor})
        return task

    def _status_of(self, message: Message | None = None) -> TaskStatus:
        status = TaskStatus(state=self.state)
        if message is not None:
            status.message.CopyFrom(message)
        elif self.reason is not None and self.state != TaskState.TASK_STATE_COMPLETED:
            status.message.CopyFrom(self._text_message("status", self.reason))
        return status

    def _status(self, message: Message | None = None) -> TaskStatusUpdateEvent:
        return TaskStatusUpdateEvent(task_id=self.task_id, context_id=self.context_id, status=self._status_of(message))

    def _part(self, text: str) -> Part:
        return Part(text=text, media_type="application/json" if self._structured else "text/plain")

    def _artifact(self, text: str, *, append: bool, last: bool = False) -> TaskArtifactUpdateEvent:
        artifact = Artifact(artifact_id=ARTIFACT_ID, name=ARTIFACT_ID, parts=[self._part(text)])
        return TaskArtifactUpdateEvent(task_id=self.task_id, context_id=self.context_id, artifact=artifact, append=append, last_chunk=last)

    def _text_message(self, suffix: str, text: str) -> Message:
        return Message(
            message_id=f"{self.task_id}.{self._attempt}.{suffix}",
            context_id=self.context_id,
            task_id=self.task_id,
            role=Role.ROLE_AGENT,
            parts=[Part(text=text)],
        )

    def _data_message(self, suffix: str, data: dict[str, Any]) -> Message:
        message = self._text_message(suffix, "")
        del message.parts[:]
        message.parts.append(new_data_part(data, "application/json"))
        return message


def _plain(value: Any) -> Any:
    """A tool result as protobuf's Struct takes it (JSON types only; numbers become doubles)."""
    try:
        return orjson.loads(orjson.dumps(value))
    except TypeError:
        return str(value)
