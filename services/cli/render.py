"""One execution's stream in a terminal: a spinner until the first token, text and tool calls in
stream order, a summary line at the end.

``Transcript`` is the fold (events in, lines to print out), so what voids text is decided in one
place and tested without a terminal: the text of the step being written stays pending until the
step ends (a tool call, the end), so an ``execution.restarted`` with ``text_discarded`` takes it
back, like the console does. A new attempt (another executor took over) starts the answer again.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.spinner import Spinner
from rich.text import Text

TERMINAL = {"execution.completed", "execution.failed", "execution.cancelled"}
WAITS = {"tool.call.approval_requested", "input.requested"}  # what a person at the terminal is asked about
DECIDED = {"tool.call.approval_decided", "input.provided"}  # what withdraws such a question
Ask = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass
class Transcript:
    submitted_at: float = field(default_factory=time.monotonic)
    pending: str = ""  # text of the step being written: a restart may still void it
    pending_step: int | None = None
    attempt: int = 0
    status: str = "queued"
    first_token_s: float | None = None
    outcome: dict[str, Any] | None = None  # the terminal event
    cursor: int | None = None  # the last event's cursor: where `attach --cursor` resumes

    def apply(self, event: dict[str, Any], *, cursor: int | None = None) -> list[RenderableType]:
        """Fold one event in; returns what is final and can be printed above the live line."""
        if cursor is not None:
            self.cursor = cursor
        kind = event.get("type", "")
        out: list[RenderableType] = []
        if kind == "execution.started":
            attempt = int(event.get("attempt", 1))
            if self.attempt and attempt > self.attempt:
                self.pending, self.pending_step = "", None
                out.append(Text(f"↻ attempt {attempt}: another executor took over; its answer replaces the text above", style="yellow"))
            self.attempt = max(self.attempt, attempt)
            self.status = f"running on {event.get('provider', '?')}/{event.get('model', '?')}"
        elif kind == "token.delta":
            if self.first_token_s is None:
                self.first_token_s = time.monotonic() - self.submitted_at
            step = int(event.get("step", 0))
            if self.pending_step is not None and step != self.pending_step:
                out += self._commit()
            self.pending_step = step
            self.pending += str(event.get("text", ""))
        elif kind == "tool.call.started":
            out += self._commit()
            arguments = json.dumps(event.get("arguments", {}))
            out.append(Text.assemble(("⚙ ", "cyan"), (str(event.get("tool")), "cyan"), (f"({arguments})", "dim"), " …"))
            self.status = f"calling {event.get('tool')}"
        elif kind == "tool.call.completed":
            if event.get("error"):
                out.append(Text.assemble((f"✗ {event.get('tool')} failed: ", "red"), str(event["error"])))
            else:
                result = json.dumps(event.get("result"))
                took = f" ({float(event.get('duration_ms', 0)):.0f} ms)"
                out.append(Text.assemble((f"✓ {event.get('tool')}", "green"), f" → {result}", (took, "dim")))
            self.status = "thinking"
        elif kind == "execution.resumed":
            reused = f"{event.get('reused_calls', 0)} finished tool call(s) reused"
            rerun = event.get("rerun_calls") or []
            again = f", {len(rerun)} interrupted one(s) run again" if rerun else ""
            out.append(Text(f"↻ resumed from step {event.get('from_step', 0)}: the steps above stand ({reused}{again})", style="yellow"))
        elif kind == "tool.call.approval_requested":
            out += self._commit()
            arguments = json.dumps(event.get("arguments", {}))
            call_id, execution_id = event.get("call_id"), event.get("execution_id")
            out.append(
                Text.assemble(
                    ("⏸ approval needed: ", "magenta"),
                    (str(event.get("tool")), "cyan"),
                    (f"({arguments})", "dim"),
                    f" call {call_id}, until {event.get('deadline')} (then {event.get('default')}); ",
                    (f"agentstream approve|reject {execution_id} {call_id}", "bold"),
                )
            )
            self.status = "waiting for approval"
        elif kind == "input.requested":
            out += self._commit()
            call_id, execution_id = event.get("call_id"), event.get("execution_id")
            out.append(
                Text.assemble(
                    ("? the agent asks: ", "magenta"),
                    (str(event.get("question", "")), "bold"),
                    f" (call {call_id}, until {event.get('deadline')}); ",
                    (f'agentstream answer {execution_id} {call_id} "..."', "bold"),
                )
            )
            self.status = "waiting for your answer"
        elif kind == "input.provided":
            by = " (deadline passed, no answer)" if event.get("by") == "deadline" else ""
            out.append(Text(f"✓ answered {event.get('call_id')}{by}: {event.get('text', '')}", style="magenta"))
        elif kind == "tool.call.approval_decided":
            verdict = "approved" if event.get("decision") == "approve" else "rejected"
            why = f": {event['reason']}" if event.get("reason") else ""
            edited = f" with arguments {json.dumps(event['arguments'])}" if event.get("arguments") is not None else ""
            by = " (deadline passed)" if event.get("by") == "deadline" else ""
            out.append(
                Text(f"{'✓' if verdict == 'approved' else '✗'} call {event.get('call_id')} {verdict}{edited}{by}{why}", style="magenta")
            )
        elif kind == "agent.handoff":
            out += self._commit()
            why = f": {event['reason']}" if event.get("reason") else ""
            out.append(Text(f"⇄ handed off from {event.get('from_agent')} to {event.get('to_agent')}{why}", style="blue"))
            on = f" on {event['provider']}/{event['model']}" if event.get("provider") else ""
            self.status = f"{event.get('to_agent')} is answering{on}"
        elif kind == "execution.restarted":
            why = f"{event.get('reason') or 'retry'}; now {event.get('provider')}/{event.get('model')}"
            if event.get("text_discarded") and self.pending_step == int(event.get("step", 0)):
                self.pending, self.pending_step = "", None
                why += "; its text so far is void"
            out.append(Text(f"↻ model call restarted ({why})", style="yellow"))
        elif kind.startswith("workflow."):
            out += self._workflow(kind, event)
        elif kind in TERMINAL:
            out += self._commit()
            self.outcome = event
        return out

    def _workflow(self, kind: str, event: dict[str, Any]) -> list[RenderableType]:
        """A workflow run's own events (issue 20): its start and each step's start and end."""
        step = str(event.get("step", ""))
        if kind == "workflow.run.started":
            self.status = f"workflow {event.get('workflow')}"
            return [Text(f"▶ workflow {event.get('workflow')}: {', '.join(map(str, event.get('steps', [])))}", style="cyan")]
        if kind == "workflow.step.started":
            self.status = f"step {step} running"
            return [Text.assemble(("▶ ", "cyan"), (step, "bold"), f" ({event.get('kind')}) as {event.get('task_id')}")]
        if kind == "workflow.step.completed":
            return [Text.assemble(("✓ ", "green"), (step, "bold"), f" → {str(event.get('output') or '')[:200]}")]
        if kind == "workflow.step.failed":
            style = "dim" if event.get("status") == "skipped" else "red"
            return [Text(f"{'·' if style == 'dim' else '✗'} {step} {event.get('status')}: {event.get('reason', '')}", style=style)]
        return []

    def _commit(self) -> list[RenderableType]:
        text, self.pending, self.pending_step = self.pending, "", None
        return [Text(text)] if text else []

    def live(self) -> RenderableType:
        if self.pending:
            return Text(self.pending)
        return Spinner("dots", text=Text(self.status, style="dim"))

    def summary(self) -> Text:
        event = self.outcome or {}
        took = time.monotonic() - self.submitted_at
        first = f" · first token {self.first_token_s:.2f}s" if self.first_token_s is not None else ""
        if event.get("type") == "execution.completed":
            usage = event.get("usage") or {}
            tokens = f" · tokens {usage.get('prompt_tokens', 0)} in / {usage.get('completion_tokens', 0)} out"
            return Text.assemble(("✓ completed", "green"), (f" in {took:.2f}s{first}{tokens}", "dim"))
        if event.get("type") == "execution.failed":
            return Text.assemble(("✗ failed", "bold red"), f": {event.get('reason', '')}", (f" ({took:.2f}s)", "dim"))
        if event.get("type") == "execution.cancelled":
            return Text.assemble(("cancelled", "yellow"), f": {event.get('reason', '')}", (f" ({took:.2f}s)", "dim"))
        return Text("the stream ended without an end event", style="yellow")

    @property
    def succeeded(self) -> bool:
        return (self.outcome or {}).get("type") == "execution.completed"


class Questions:
    """What the person at the terminal is asked, one question at a time, beside the stream (not in
    its way): a decision arriving in the stream (made elsewhere, or the deadline's) withdraws its
    question. The live region is stopped while a question is on screen, so it is not drawn over."""

    def __init__(self, console: Console, ask: Ask, live: Live | None) -> None:
        self._console, self._ask, self._live = console, ask, live
        self._queue: dict[str, dict[str, Any]] = {}  # call id -> its request, asked in order
        self._current: tuple[str, asyncio.Task[None]] | None = None
        self._closed = False

    def fold(self, event: dict[str, Any]) -> None:
        kind, call_id = event.get("type"), str(event.get("call_id", ""))
        if kind in WAITS:
            self._queue[call_id] = event
            self._next()
        elif kind in DECIDED:
            self._queue.pop(call_id, None)
            if self._current is not None and self._current[0] == call_id and not self._current[1].done():
                self._current[1].cancel()
                self._console.print()  # end the prompt's line; the decision's line follows

    def _next(self) -> None:
        if self._closed or self._current is not None:
            return
        if not self._queue:
            if self._live is not None:
                self._live.start()
            return
        call_id = next(iter(self._queue))
        event = self._queue.pop(call_id)
        if self._live is not None:
            self._live.stop()
        task = asyncio.ensure_future(self._ask(event))
        self._current = (call_id, task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._current = None
        if not task.cancelled() and task.exception() is not None:
            self._console.print(Text(f"could not ask: {task.exception()}", style="yellow"))
        self._next()

    def close(self) -> None:
        self._closed = True
        self._queue.clear()
        if self._current is not None:
            self._current[1].cancel()


async def render_stream(
    console: Console, items: AsyncGenerator[dict[str, Any], None], transcript: Transcript, *, ask: Ask | None = None
) -> Transcript:
    """Render ``{"cursor", "event"}`` items until the execution ends. On a terminal the pending text is
    a live region (so it can be taken back); elsewhere lines are printed once they are final. ``ask``
    (given when a person is at the terminal) is called on an approval request or a question
    (``Questions``)."""
    if not console.is_terminal:
        questions = Questions(console, ask, None) if ask is not None else None
        try:
            async with contextlib.aclosing(items):
                async for item in items:
                    if questions is not None:
                        questions.fold(item["event"])
                    for line in transcript.apply(item["event"], cursor=item.get("cursor")):
                        console.print(line, highlight=False, soft_wrap=True)
                    if transcript.outcome is not None:
                        break
        finally:
            if questions is not None:
                questions.close()
        console.print(transcript.summary(), highlight=False, soft_wrap=True)
        return transcript
    live = Live(transcript.live(), console=console, refresh_per_second=12, transient=True, vertical_overflow="visible")
    questions = Questions(console, ask, live) if ask is not None else None
    try:
        async with contextlib.aclosing(items):
            with live:
                async for item in items:
                    event = item["event"]
                    if questions is not None and event.get("type") in DECIDED:
                        questions.fold(event)  # before its line: the withdrawn prompt's line ends first
                    for line in transcript.apply(event, cursor=item.get("cursor")):
                        live.console.print(line, highlight=False, soft_wrap=True)
                    if questions is not None and event.get("type") in WAITS:
                        questions.fold(event)  # after its line: the request is shown, then asked
                    live.update(Group(transcript.live()))
                    if transcript.outcome is not None:
                        break
                if questions is not None:
                    questions.close()
    finally:
        if questions is not None:
            questions.close()
    console.print(transcript.summary(), highlight=False, soft_wrap=True)
    return transcript
