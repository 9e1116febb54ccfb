"""The offline ``scripted`` model: deterministic, streams word by word, calls the calculator once.

With a ``response_format`` of JSON (structured outputs) the answer is ``{"answer": "..."}``.

Turn 1 streams a short preface and asks the calculator to evaluate the first arithmetic expression
in the user's input (or ``6*7``). Turn 2, after the tool result, streams the answer.

With ``transfer_to_agent`` offered (an agent with ``handoffs``) and a target's name in the input,
turn 1 hands off to it; the target's turns then start afresh (the calculator, then the answer).

With ``knowledge_search`` allowed and a question about the documents as input, turn 1 searches the
documents instead, and turn 2 answers from what the search returned.

With ``embed`` allowed and an input ``embed: first text | second text``, turn 1 embeds those texts
and turn 2 says what came back (the orchestrator's result cache is tested with it).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Sequence
from typing import Any

from schemas.events import Usage
from services.executor.providers.base import Chunk, ModelRequest, TextDelta, ToolCall, TurnEnd

_DOCS_QUESTION = re.compile(r"\b(docs?|documents?|documentation|knowledge base)\b", re.IGNORECASE)
_EMBED = re.compile(r"^\s*embed:\s*(.+)$", re.IGNORECASE | re.DOTALL)
_EXPR = re.compile(r"[-+]?\d+(?:\.\d+)?(?:\s*[-+*/]\s*\(?\s*[-+]?\d+(?:\.\d+)?\s*\)?)+")


class ScriptedProvider:
    name = "scripted"
    default_model = "scripted-1"

    def __init__(self, *, token_delay_s: float = 0.0) -> None:
        self._delay = token_delay_s

    async def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        messages = request.messages
        user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
        # After a handoff (issue 20) the new agent starts its own turns: earlier tool results are not its own.
        mine = _after_handoff(messages)
        tool_results = [m for m in mine if m["role"] == "tool"]
        target = _handoff_target(request, user) if not tool_results and mine is messages else None
        if target is not None:
            text = f"Let me hand you to {target}."
            async for delta in self._words(text):
                yield delta
            arguments = json.dumps({"agent": target, "reason": f"the user asked for {target}"})
            yield TurnEnd(tool_calls=(ToolCall(id="call_h", name="transfer_to_agent", arguments=arguments),), usage=_usage(0, text))
            return
        has_calculator = any(t.name == "calculator" for t in request.tools)
        prompt_tokens = sum(len(str(m.get("content") or "").split()) for m in messages)
        if any(t.name == "embed" for t in request.tools) and _EMBED.match(user):
            async for chunk in self._embedding(user, tool_results, prompt_tokens):
                yield chunk
            return
        if any(t.name == "knowledge_search" for t in request.tools):
            async for chunk in self._knowledge(user, messages, tool_results, prompt_tokens):
                yield chunk
                if isinstance(chunk, TurnEnd):
                    return
        if has_calculator and not tool_results:
            match = _EXPR.search(user)
            expression = match.group(0).strip() if match else "6*7"
            text = f"Let me work out {expression} with the calculator."
            async for delta in self._words(text):
                yield delta
            call = ToolCall(id="call_1", name="calculator", arguments=json.dumps({"expression": expression}))
            yield TurnEnd(tool_calls=(call,), usage=_usage(prompt_tokens, text))
            return
        if tool_results:
            payload = _tool_payload(tool_results[-1].get("content"))
            if "error" in payload:
                text = f"The calculator could not help: {payload['error']}. You asked: {user}"
            else:
                text = f"The calculator says {payload['result']}. You asked: {user}"
        else:
            text = f"You said: {user}"
        if _wants_json(request.params):
            text = json.dumps({"answer": text})  # a structured output: the same answer as one JSON field
        async for delta in self._words(text):
            yield delta
        yield TurnEnd(usage=_usage(prompt_tokens, text))

    async def _knowledge(
        self, user: str, messages: Sequence[dict[str, Any]], tool_results: list[Any], prompt_tokens: int
    ) -> AsyncIterator[Chunk]:
        """Search the documents for a question about them; answer from the search's result."""
        if not tool_results:
            if "?" not in user or not _DOCS_QUESTION.search(user):
                return
            text = "Let me search the documents."
            async for delta in self._words(text):
                yield delta
            call = ToolCall(id="call_1", name="knowledge_search", arguments=json.dumps({"query": user}))
            yield TurnEnd(tool_calls=(call,), usage=_usage(prompt_tokens, text))
            return
        called = [c["function"]["name"] for m in messages for c in (m.get("tool_calls") or ())]
        if not called or called[-1] != "knowledge_search":
            return
        payload = json.loads(tool_results[-1]["content"])
        if "error" in payload:
            text = f"I could not search the documents: {payload['error']}. You asked: {user}"
        else:
            found = payload["result"]
            titles = ", ".join(d.get("title") or d.get("id", "") for d in found.get("documents", [])[:3])
            text = f"According to the documents: {found.get('answer', '')} (sources: {titles}; job {found.get('job_id', '')})"
        async for delta in self._words(text):
            yield delta
        yield TurnEnd(usage=_usage(prompt_tokens, text))

    async def _embedding(self, user: str, tool_results: list[Any], prompt_tokens: int) -> AsyncIterator[Chunk]:
        match = _EMBED.match(user)
        assert match is not None
        if not tool_results:
            texts = [t.strip() for t in match.group(1).split("|") if t.strip()] or [match.group(1)]
            text = "Let me embed that."
            async for delta in self._words(text):
                yield delta
            call = ToolCall(id="call_1", name="embed", arguments=json.dumps({"texts": texts}))
            yield TurnEnd(tool_calls=(call,), usage=_usage(prompt_tokens, text))
            return
        payload = _tool_payload(tool_results[-1].get("content"))
        if "error" in payload:
            text = f"I could not embed it: {payload['error']}"
        else:
            found = payload["result"] if isinstance(payload["result"], dict) else {}
            vectors = found.get("embeddings") or []
            dim, model, job = found.get("dim", 0), found.get("model"), found.get("job_id", "")
            text = f"Embedded {len(vectors)} text(s) into {dim} dimensions with {model} (job {job})"
        async for delta in self._words(text):
            yield delta
        yield TurnEnd(usage=_usage(prompt_tokens, text))

    async def _words(self, text: str) -> AsyncIterator[TextDelta]:
        words = text.split(" ")
        for i, word in enumerate(words):
            if self._delay:
                await asyncio.sleep(self._delay)
            yield TextDelta(word if i == 0 else " " + word)


def _after_handoff(messages: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
    """The messages after the last handoff's result (all of them if there was none)."""
    for i in range(len(messages) - 1, -1, -1):
        if messages[i]["role"] == "tool" and "handed_off_to" in str(messages[i].get("content") or ""):
            return messages[i + 1 :]
    return messages


def _handoff_target(request: ModelRequest, user: str) -> str | None:
    """The first agent ``transfer_to_agent`` may name that the user's message names (as a word)."""
    tool = next((t for t in request.tools if t.name == "transfer_to_agent"), None)
    if tool is None:
        return None
    words = set(re.findall(r"[A-Za-z0-9_.\-]+", user.lower()))
    return next((str(a) for a in tool.parameters["properties"]["agent"]["enum"] if str(a).lower() in words), None)


def _usage(prompt_tokens: int, text: str) -> Usage:
    completion = len(text.split())
    return Usage(prompt_tokens=prompt_tokens, completion_tokens=completion, total_tokens=prompt_tokens + completion)


def _tool_payload(content: Any) -> dict[str, Any]:
    """A tool result as the calculator writes it; anything else (a caller's own history) is taken as text."""
    try:
        payload = json.loads(content)
    except (TypeError, ValueError):
        payload = content
    return payload if isinstance(payload, dict) and ("error" in payload or "result" in payload) else {"result": payload}


def _wants_json(params: dict[str, Any]) -> bool:
    response_format = params.get("response_format")
    return isinstance(response_format, dict) and response_format.get("type") in ("json_schema", "json_object")
