"""Our execution events -> OpenAI's: ``chat.completion.chunk`` and the Responses stream events.

Both mappers are pure folds: ``feed(cursor, event)`` returns what to send for that event and keeps
what the final object needs, so a non-streaming answer, ``GET /v1/responses/{id}`` and a stream are
the same fold over the same events. Every Responses event carries ``sequence_number`` = the cursor
of the event it came from (its partition offset); the few events one of ours becomes share it and
go out in one write, so ``starting_after=N`` resumes exactly after event N.

Choices where OpenAI has no exact counterpart:
* Server-side tool calls are ``function_call`` items with status ``completed`` followed by their
  ``function_call_output`` (Responses); chat completions do not show them (``tool_calls`` in a chunk
  would ask the client to run them).
* Every model turn's text is answer text: turns are separate message items (Responses) or joined
  with a blank line (chat). With an output schema only the final answer is sent, whole, at the end.
* Text voided by a restart (``text_discarded``) or by a newer attempt: its message item ends
  ``incomplete`` and is left out of the final output; a chat stream cannot take it back.
"""

from __future__ import annotations

import time
from typing import Any

from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response

# "waiting" (a tool call waits for approval) is still in progress for the Responses API.
_STATUS = {
    "queued": "queued",
    "running": "in_progress",
    "waiting": "in_progress",
    "completed": "completed",
    "failed": "failed",
    "cancelled": "cancelled",
}


def response_status(state: str) -> str:
    return _STATUS.get(state, "failed")  # timed_out: failed, with the reason as its error


class ChatMapper:
    def __init__(self, *, execution_id: str, model: str, structured: bool, include_usage: bool) -> None:
        self.id = "chatcmpl-" + execution_id
        self.model = model
        self.created = int(time.time())
        self._structured = structured
        self._include_usage = include_usage
        self._steps: dict[int, list[str]] = {}
        self._before: dict[int, list[str]] = {}  # the steps as they stood when the newest attempt started
        self._attempt = 0
        self._sent_text = False
        self._last_step: int | None = None
        self.state: str | None = None
        self.output = ""
        self.error: str | None = None
        self.usage: dict[str, int] | None = None

    def _chunk(self, delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model, "choices": [choice]}

    def feed(self, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        if kind == "execution.started":
            first = self._attempt == 0
            self._structured = bool(event.get("structured", self._structured))
            if event.get("attempt", 1) > self._attempt and not first:
                self._before, self._steps = self._steps, {}  # a newer attempt starts over, unless it resumes
            self._attempt = max(self._attempt, int(event.get("attempt", 1)))
            return [self._chunk({"role": "assistant", "content": ""})] if first else []
        if kind == "token.delta":
            step, text = int(event.get("step", 0)), str(event.get("text", ""))
            self._steps.setdefault(step, []).append(text)
            if self._structured:
                return []
            if self._sent_text and self._last_step is not None and step != self._last_step:
                text = "\n\n" + text
            self._sent_text, self._last_step = True, step
            return [self._chunk({"content": text})]
        if kind == "execution.restarted" and event.get("text_discarded"):
            self._steps.pop(int(event.get("step", 0)), None)
            return []
        if kind == "execution.resumed" and int(event.get("attempt", 1)) == self._attempt:
            # Steps the new attempt reuses stand (their text was sent once and counts in the content).
            self._steps = {n: t for n, t in self._before.items() if n < int(event.get("from_step", 0))} | self._steps
            return []
        if kind == "execution.completed":
            self.state = "completed"
            self.output = str(event.get("output", ""))
            self.usage = dict(event.get("usage") or {})
            out = [self._chunk({"content": self.output})] if self._structured else []
            out.append(self._chunk({}, "stop"))
            if self._include_usage:
                out.append({**self._chunk({}), "choices": [], "usage": self.usage})
            return out
        if kind in ("execution.failed", "execution.cancelled"):
            self.state = kind.removeprefix("execution.")
            self.error = str(event.get("reason") or self.state)
        return []

    def content(self) -> str:
        if self._structured:
            return self.output
        return "\n\n".join(t for t in ("".join(p) for _, p in sorted(self._steps.items())) if t)

    def completion(self) -> dict[str, Any]:
        usage = self.usage or {}
        body = {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": self.model,
            "choices": [
                {"index": 0, "message": {"role": "assistant", "content": self.content()}, "finish_reason": "stop", "logprobs": None}
            ],
            "usage": {k: int(usage.get(k, 0)) for k in ("prompt_tokens", "completion_tokens", "total_tokens")},
        }
        return ChatCompletion.model_validate(body).model_dump(mode="json", exclude_none=True)


def chunk_json(chunk: dict[str, Any]) -> dict[str, Any]:
    """A chunk as the official type dumps it (used by tests; the stream sends the dicts as built)."""
    return ChatCompletionChunk.model_validate(chunk).model_dump(mode="json")


class ResponseMapper:
    """The Responses view of one execution, and its stream events."""

    def __init__(self, *, execution_id: str, model: str, created_at: float, structured: bool, request: dict[str, Any]) -> None:
        self.id = "resp_" + execution_id
        self.execution_id = execution_id
        self.model = model
        self.created_at = created_at
        self._structured = structured
        self._request = request  # instructions, metadata, background, previous_response_id, text ...
        self.items: list[dict[str, Any]] = []
        self._item_steps: dict[int, int] = {}  # the step each item belongs to
        self._void: set[int] = set()
        self._voided_by_start: set[int] = set()  # what the newest attempt's start voided (a resume may keep some)
        self._open: int | None = None  # the message item text goes to
        self._open_step: int | None = None
        self._attempt = 0
        self.status = "queued"
        self.error: dict[str, Any] | None = None
        self.usage: dict[str, Any] | None = None
        self.output_text = ""
        self.completed_at: float | None = None

    # -- the final object -----------------------------------------------------------------
    def snapshot(self) -> dict[str, Any]:
        output = [item for i, item in enumerate(self.items) if i not in self._void]
        body: dict[str, Any] = {
            "id": self.id,
            "object": "response",
            "created_at": self.created_at,
            "model": self.model,
            "status": self.status,
            "output": output,
            "error": self.error,
            "incomplete_details": None,
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": [],
            "usage": self.usage,
            "completed_at": self.completed_at,
            **self._request,
        }
        return Response.model_validate(body).model_dump(mode="json", exclude_none=True)

    # -- events ---------------------------------------------------------------------------
    def feed(self, seq: int, event: dict[str, Any]) -> list[dict[str, Any]]:
        kind = event.get("type")
        out: list[dict[str, Any]] = []

        def emit(type_: str, **fields: Any) -> None:
            out.append({"type": type_, "sequence_number": seq, **fields})

        if kind == "execution.started":
            attempt = int(event.get("attempt", 1))
            if self._attempt and attempt > self._attempt:
                self._close(emit, incomplete=True)
                self._voided_by_start = set(range(len(self.items))) - self._void
                self._void.update(self._voided_by_start)  # everything of the older attempt is void, unless it resumes
            first = self._attempt == 0
            # From the event, not the request: a resumed stream folds the same events the same way.
            self._structured = bool(event.get("structured", self._structured))
            self._attempt = max(self._attempt, attempt)
            if first:
                self.status = "in_progress"
                emit("response.created", response=self.snapshot())
                emit("response.in_progress", response=self.snapshot())
        elif kind == "token.delta":
            text, step = str(event.get("text", "")), int(event.get("step", 0))
            if self._structured:
                return out
            if self._open is None or self._open_step != step:
                self._close(emit)
                self._open_message(emit, step)
            assert self._open is not None
            self.items[self._open]["content"][0]["text"] += text
            emit(
                "response.output_text.delta",
                item_id=self.items[self._open]["id"],
                output_index=self._open,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        elif kind == "execution.resumed" and int(event.get("attempt", 1)) == self._attempt:
            # The final object keeps the steps the new attempt reuses; calls it runs again come anew.
            from_step, rerun = int(event.get("from_step", 0)), {str(c) for c in event.get("rerun_calls") or ()}
            for index in self._voided_by_start:
                item = self.items[index]
                if self._item_steps.get(index, from_step) < from_step and not (
                    item["type"] == "function_call" and item["call_id"] in rerun
                ):
                    self._void.discard(index)
            self._voided_by_start = set()
        elif kind == "execution.restarted" and event.get("text_discarded"):
            if self._open is not None and self._open_step == int(event.get("step", 0)):
                self._void.add(self._open)
                self._close(emit, incomplete=True)
        elif kind == "tool.call.started":
            self._close(emit, phase="commentary")  # text before a tool call is not the answer
            item = {
                "type": "function_call",
                "id": f"fc_{self.execution_id}_{len(self.items)}",
                "call_id": str(event.get("call_id", "")),
                "name": str(event.get("tool", "")),
                "arguments": _json_text(event.get("arguments") or {}),
                "status": "in_progress",
            }
            self.items.append(item)
            index = len(self.items) - 1
            self._item_steps[index] = int(event.get("step", 0))
            emit("response.output_item.added", output_index=index, item=dict(item, arguments=""))
            emit("response.function_call_arguments.delta", item_id=item["id"], output_index=index, delta=item["arguments"])
            emit(
                "response.function_call_arguments.done",
                item_id=item["id"],
                output_index=index,
                name=item["name"],
                arguments=item["arguments"],
            )
        elif kind == "tool.call.completed":
            call_id = str(event.get("call_id", ""))
            for index, item in enumerate(self.items):
                if (
                    item["type"] == "function_call"
                    and item["call_id"] == call_id
                    and item["status"] == "in_progress"
                    and index not in self._void
                ):
                    item["status"] = "completed"
                    emit("response.output_item.done", output_index=index, item=item)
                    break
            error = event.get("error")
            result = {"error": error} if error is not None else {"result": event.get("result")}
            output = {
                "type": "function_call_output",
                "id": f"fco_{self.execution_id}_{len(self.items)}",
                "call_id": call_id,
                "output": _json_text(result),
                "status": "completed",
            }
            self.items.append(output)
            self._item_steps[len(self.items) - 1] = int(event.get("step", 0))
            emit("response.output_item.added", output_index=len(self.items) - 1, item=output)
            emit("response.output_item.done", output_index=len(self.items) - 1, item=output)
        elif kind == "execution.completed":
            self.output_text = str(event.get("output", ""))
            if self._structured:
                self._open_message(emit, -1)
                assert self._open is not None
                self.items[self._open]["content"][0]["text"] = self.output_text
                emit(
                    "response.output_text.delta",
                    item_id=self.items[self._open]["id"],
                    output_index=self._open,
                    content_index=0,
                    delta=self.output_text,
                    logprobs=[],
                )
            self._close(emit, phase="final_answer")
            self.status = "completed"
            self.usage = _usage(event.get("usage") or {})
            self.completed_at = time.time()
            emit("response.completed", response=self.snapshot())
        elif kind in ("execution.failed", "execution.cancelled"):
            self._close(emit, incomplete=True)
            self.end(kind.removeprefix("execution."), str(event.get("reason") or ""))
            emit("response.failed", response=self.snapshot())
        return out

    def end(self, state: str, reason: str | None) -> None:
        """A terminal state known from the status view (no event, e.g. cancelled while queued)."""
        self.status = response_status(state)
        if self.status == "failed":
            self.error = {"code": "server_error", "message": reason or state}

    def _open_message(self, emit: Any, step: int) -> None:
        item: dict[str, Any] = {
            "type": "message",
            "id": f"msg_{self.execution_id}_{len(self.items)}",
            "role": "assistant",
            "status": "in_progress",
            "content": [{"type": "output_text", "text": "", "annotations": [], "logprobs": []}],
        }
        self.items.append(item)
        self._open, self._open_step = len(self.items) - 1, step
        self._item_steps[self._open] = step
        emit("response.output_item.added", output_index=self._open, item=dict(item, content=[]))
        emit("response.content_part.added", item_id=item["id"], output_index=self._open, content_index=0, part=dict(item["content"][0]))

    def _close(self, emit: Any, *, incomplete: bool = False, phase: str | None = None) -> None:
        if self._open is None:
            return
        index, self._open, self._open_step = self._open, None, None
        item = self.items[index]
        item["status"] = "incomplete" if incomplete else "completed"
        if phase is not None:
            item["phase"] = phase
        part = item["content"][0]
        emit("response.output_text.done", item_id=item["id"], output_index=index, content_index=0, text=part["text"], logprobs=[])
        emit("response.content_part.done", item_id=item["id"], output_index=index, content_index=0, part=part)
        emit("response.output_item.done", output_index=index, item=item)


def _usage(usage: dict[str, Any]) -> dict[str, Any]:
    return {
        "input_tokens": int(usage.get("prompt_tokens", 0)),
        "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0},
        "output_tokens": int(usage.get("completion_tokens", 0)),
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": int(usage.get("total_tokens", 0)),
    }


def _json_text(value: Any) -> str:
    import orjson

    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return orjson.dumps(str(value)).decode()
