"""The model stream parser (providers/sse.py) on chunks of any shape: a text delta, nothing, or a
retriable ProviderError; never another exception, never a usage the schema refuses."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.events import Usage
from services.executor.providers.base import ProviderError
from services.executor.providers.sse import DONE, TurnAssembler

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
anything = st.recursive(
    leaves,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["index", "id", "function", "name", "arguments", "content", "x"]), inner, max_size=3)
    ),
)
calls = st.lists(
    st.dictionaries(
        st.sampled_from(["index", "id", "function", "type"]),
        anything | st.fixed_dictionaries({}, optional={"name": anything, "arguments": anything}),
    ),
    max_size=2,
)
deltas = st.fixed_dictionaries({}, optional={"content": anything, "tool_calls": calls | anything, "role": anything})
chunks = st.one_of(
    anything,
    st.fixed_dictionaries(
        {},
        optional={
            "choices": st.lists(
                st.fixed_dictionaries({}, optional={"delta": deltas | anything, "finish_reason": anything}) | anything, max_size=2
            )
            | anything,
            "usage": st.dictionaries(st.sampled_from(["prompt_tokens", "completion_tokens", "total_tokens"]), anything) | anything,
            "x_groq": anything,
        },
    ),
)


@pytest.mark.parametrize(
    "chunk",
    [
        [1, 2],
        {"choices": {"0": {}}},
        {"choices": ["text"]},
        {"choices": [{"delta": {"content": 5}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": "a", "function": {"name": "x"}}]}}]},
        {"choices": [{"delta": {"tool_calls": [{"index": 0, "function": {"arguments": {"a": 1}}}]}}]},
        {"choices": [{"delta": {"tool_calls": "call"}}]},
    ],
)
def test_a_chunk_of_an_unexpected_shape_is_a_retriable_provider_error(chunk: Any) -> None:
    # Today these raise AttributeError, KeyError or TypeError out of the provider: the execution "crashed".
    with pytest.raises(ProviderError) as exc:
        TurnAssembler().feed("data: " + orjson.dumps(chunk).decode())
    assert exc.value.retriable


@settings(max_examples=500, deadline=None)
@given(stream=st.lists(chunks, max_size=4))
def test_any_chunks_give_text_nothing_or_a_provider_error(stream: list[Any]) -> None:
    assembler = TurnAssembler()
    for chunk in stream:
        try:
            piece = assembler.feed("data: " + orjson.dumps(chunk).decode())
        except ProviderError:
            return
        assert piece is None or piece is DONE or (isinstance(piece, str) and piece)
    end = assembler.end()
    Usage.model_validate(end.usage.model_dump())
    assert all(isinstance(c.id, str) and isinstance(c.name, str) and isinstance(c.arguments, str) for c in end.tool_calls)
