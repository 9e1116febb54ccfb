"""Our execution events -> AG-UI events (``ag_ui.core`` models), as a pure fold.

``RunMapper.feed(event)`` returns the AG-UI events one of ours becomes and keeps the run's messages,
so a stream resumed after cursor N folds the same events from the first one and sends only what
came after N: the message ids, tool call ids and snapshots are the same as on the first stream.

Choices where AG-UI and agentstream differ:
* A model turn's text is one assistant message (``TEXT_MESSAGE_START/CONTENT/END``); its tool
  calls (run server-side) are ``TOOL_CALL_START/ARGS/END`` under that message, then
  ``TOOL_CALL_RESULT`` with the result (or error) as JSON text.
* Text voided by a restart (``text_discarded``) or by a newer attempt cannot be taken back by a
  delta: its message is closed and a ``MESSAGES_SNAPSHOT`` (the run's input messages plus what
  stays of the run) replaces the client's list.
* With an output schema only the final answer is sent, whole, when the run completes.
* A handoff (``agent.handoff``) is a ``CUSTOM`` event named ``agent.handoff`` (from, to, reason).
* A cancelled run is ``RUN_FINISHED`` with the ``cancelled`` outcome; a failed one ``RUN_ERROR``.
"""

from __future__ import annotations

from typing import Any

import orjson
from ag_ui.core import (
    BaseEvent,
    CustomEvent,
    MessagesSnapshotEvent,
    RunErrorEvent,
    RunFinishedCancelledOutcome,
    RunFinishedEvent,
    RunFinishedSuccessOutcome,
    RunStartedEvent,
    StateSnapshotEvent,
    TextMessageContentEvent,
    TextMessageEndEvent,
    TextMessageStartEvent,
    TokenUsage,
    ToolCallArgsEvent,
    ToolCallEndEvent,
    ToolCallResultEvent,
    ToolCallStartEvent,
)
from ag_ui.core.types import Message
from pydantic import TypeAdapter

_MESSAGES: TypeAdapter[list[Message]] = TypeAdapter(list[Message])


class RunMapper:
    def __init__(self, *, thread_id: str, run_id: str, execution_id: str, prefix: list[dict[str, Any]], state: Any = None) -> None:
        self.thread_id = thread_id
        self.run_id = run_id
        self.execution_id = execution_id
        self._prefix = prefix  # the run's input messages (wire form): what a snapshot starts with
        self._state = state
        self.messages: list[dict[str, Any]] = []  # this run's messages (wire form)
        self._steps: list[int] = []  # the step each of them belongs to
        self._void: set[int] = set()
        self._voided_by_start: set[int] = set()  # what the newest attempt's start voided (a resume may keep some)
        self._parts: dict[int, list[str]] = {}  # the text of each text message, as streamed
        self._open: int | None = None  # the text message being streamed
        self._attempt = 0
        self._structured = False
        self.started = False
        self.finished = False

    # -- events ---------------------------------------------------------------------------
    def feed(self, event: dict[str, Any]) -> list[BaseEvent]:
        kind = event.get("type")
        out: list[BaseEvent] = []
        if kind == "execution.started":
            attempt = int(event.get("attempt", 1))
            self._structured = bool(event.get("structured", self._structured))
            if not self.started:
                self.started = True
                out.append(RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id))
                if self._state is not None:
                    out.append(StateSnapshotEvent(snapshot=self._state))
            elif attempt > self._attempt:  # a newer attempt starts over: what the older one said is void
                self._close(out)
                self._voided_by_start = set(range(len(self.messages))) - self._void
                self._void.update(self._voided_by_start)
                out.append(self.snapshot())
            self._attempt = max(self._attempt, attempt)
        elif kind == "execution.resumed" and int(event.get("attempt", 1)) == self._attempt:
            out += self._resumed(int(event.get("from_step", 0)), {str(c) for c in event.get("rerun_calls") or ()})
        elif kind == "token.delta" and not self._structured:
            step, text = int(event.get("step", 0)), str(event.get("text", ""))
            if self._open is None or self._steps[self._open] != step:
                self._close(out)
                self._open_message(out, step)
            assert self._open is not None
            self._parts[self._open].append(text)  # joined when a snapshot needs it: no copy per delta
            out.append(TextMessageContentEvent(message_id=self.messages[self._open]["id"], delta=text))
        elif kind == "execution.restarted" and event.get("text_discarded"):
            step = int(event.get("step", 0))
            voided = [i for i, s in enumerate(self._steps) if s == step and i in self._parts and i not in self._void]
            if voided:
                self._close(out)
                self._void.update(voided)
                out.append(self.snapshot())
        elif kind == "tool.call.started":
            self._tool_call(out, event)
        elif kind == "tool.call.completed":
            error = event.get("error")
            content = _json_text({"error": error} if error is not None else {"result": event.get("result")})
            call_id = self._call_id(str(event.get("call_id", "")))
            message_id = f"{call_id}.result"
            self.messages.append({"id": message_id, "role": "tool", "content": content, "toolCallId": call_id})
            self._steps.append(int(event.get("step", 0)))
            out.append(ToolCallResultEvent(message_id=message_id, tool_call_id=call_id, content=content, role="tool"))
        elif kind == "agent.handoff":  # issue 20: AG-UI has no handoff event; a CUSTOM one says who answers now
            value = {"from": event.get("from_agent"), "to": event.get("to_agent"), "reason": event.get("reason", "")}
            out.append(CustomEvent(name="agent.handoff", value=value))
        elif kind == "execution.completed":
            output = str(event.get("output", ""))
            if self._structured:
                self._close(out)
                self._open_message(out, -1)
                assert self._open is not None
                self._parts[self._open] = [output]
                out.append(TextMessageContentEvent(message_id=self.messages[self._open]["id"], delta=output))
            self._close(out)
            usage = event.get("usage") or {}
            tokens = TokenUsage(
                input_tokens=int(usage.get("prompt_tokens", 0)),
                output_tokens=int(usage.get("completion_tokens", 0)),
                total_tokens=int(usage.get("total_tokens", 0)),
            )
            out.append(
                RunFinishedEvent(
                    thread_id=self.thread_id, run_id=self.run_id, result=output, outcome=RunFinishedSuccessOutcome(), usage=[tokens]
                )
            )
            self.finished = True
        elif kind in ("execution.failed", "execution.cancelled"):
            out += self.end(kind.removeprefix("execution."), str(event.get("reason") or ""))
        return out

    def end(self, state: str, reason: str | None) -> list[BaseEvent]:
        """The run's last events: from a terminal event, or from the status view when the run ended
        without one (cancelled while queued, timed out)."""
        out: list[BaseEvent] = []
        if self.finished:
            return out
        if not self.started:
            self.started = True
            out.append(RunStartedEvent(thread_id=self.thread_id, run_id=self.run_id))
        self._close(out)
        self.finished = True
        if state == "completed":
            out.append(RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, outcome=RunFinishedSuccessOutcome()))
        elif state == "cancelled":
            out.append(RunFinishedEvent(thread_id=self.thread_id, run_id=self.run_id, outcome=RunFinishedCancelledOutcome()))
        else:
            out.append(RunErrorEvent(message=f"the run {state}: {reason or state}", code=f"execution_{state}"))
        return out

    def snapshot(self) -> MessagesSnapshotEvent:
        for i, parts in self._parts.items():
            self.messages[i]["content"] = "".join(parts)
        kept = [m for i, m in enumerate(self.messages) if i not in self._void]
        return MessagesSnapshotEvent(messages=_MESSAGES.validate_python(self._prefix + kept))

    def _resumed(self, from_step: int, rerun: set[str]) -> list[BaseEvent]:
        """The steps a resumed attempt reuses stand again (void since its start); calls it runs again
        are taken out of them (the new attempt announces them anew)."""
        kept = sorted(i for i in self._voided_by_start if self._steps[i] < from_step)
        if not kept:
            return []
        for i in kept:
            calls = self.messages[i].get("toolCalls")
            if calls is not None:
                self.messages[i]["toolCalls"] = [c for c in calls if c["id"].rsplit(".", 1)[-1] not in rerun]
            self._void.discard(i)
        self._voided_by_start = set()
        return [self.snapshot()]

    # -- parts ----------------------------------------------------------------------------
    def _call_id(self, call_id: str) -> str:
        # Unique in the thread: a model's call ids repeat across runs and attempts.
        return f"{self.execution_id}.{self._attempt}.{call_id}"

    def _open_message(self, out: list[BaseEvent], step: int) -> None:
        message_id = f"{self.execution_id}.{self._attempt}.{len(self.messages)}"
        self.messages.append({"id": message_id, "role": "assistant", "content": ""})
        self._steps.append(step)
        self._open = len(self.messages) - 1
        self._parts[self._open] = []
        out.append(TextMessageStartEvent(message_id=message_id, role="assistant"))

    def _close(self, out: list[BaseEvent]) -> None:
        if self._open is not None:
            out.append(TextMessageEndEvent(message_id=self.messages[self._open]["id"]))
            self._open = None

    def _tool_call(self, out: list[BaseEvent], event: dict[str, Any]) -> None:
        self._close(out)  # text before a tool call is that turn's message, complete now
        step = int(event.get("step", 0))
        holder = next(
            (i for i in range(len(self.messages) - 1, -1, -1) if self._steps[i] == step and self.messages[i]["role"] == "assistant"),
            None,
        )
        if holder is None or holder in self._void:
            self.messages.append({"id": f"{self.execution_id}.{self._attempt}.{len(self.messages)}", "role": "assistant"})
            self._steps.append(step)
            holder = len(self.messages) - 1
        message = self.messages[holder]
        call_id = self._call_id(str(event.get("call_id", "")))
        name, arguments = str(event.get("tool", "")), _json_text(event.get("arguments") or {})
        message.setdefault("toolCalls", []).append({"id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}})
        out.append(ToolCallStartEvent(tool_call_id=call_id, tool_call_name=name, parent_message_id=message["id"]))
        out.append(ToolCallArgsEvent(tool_call_id=call_id, delta=arguments))
        out.append(ToolCallEndEvent(tool_call_id=call_id))


def _json_text(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return orjson.dumps(str(value)).decode()
