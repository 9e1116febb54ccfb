from __future__ import annotations

import json

import pytest

from services.executor.providers.base import ModelRequest, TextDelta, TurnEnd
from services.executor.providers.scripted import ScriptedProvider
from services.executor.tools import Calculator, ToolError, builtin_tools, parse_arguments
from services.executor.watermark import PartitionWatermark


def test_watermark_commits_only_the_contiguous_prefix() -> None:
    mark = PartitionWatermark(next_offset=10, committed=10)
    for offset in (10, 11, 12):
        mark.begin(offset)
    assert mark.finish(11) is None  # 10 still runs
    assert mark.finish(12) is None
    assert mark.finish(10) == 13
    mark.begin(13)
    assert mark.finish(13) == 14


@pytest.mark.parametrize(("expression", "value"), [("17 * 23 + 4", 395), ("2**10", 1024), ("7/2", 3.5), ("-(3+4)", -7)])
async def test_calculator(expression: str, value: float) -> None:
    assert await Calculator()({"expression": expression}) == value


@pytest.mark.parametrize("expression", ["__import__('os')", "1/0", "9**999", "a+1"])
async def test_calculator_refuses_what_is_not_arithmetic(expression: str) -> None:
    with pytest.raises(ToolError):
        await Calculator()({"expression": expression})


def test_tool_arguments_are_validated_against_the_schema() -> None:
    calc = builtin_tools()["calculator"]
    assert parse_arguments(calc, '{"expression": "1+1"}') == {"expression": "1+1"}
    with pytest.raises(ToolError, match="not valid JSON"):
        parse_arguments(calc, '{"expression": ')
    with pytest.raises(ToolError, match="schema"):
        parse_arguments(calc, '{"expr": "1+1"}')


async def test_scripted_model_calls_the_calculator_then_answers() -> None:
    provider = ScriptedProvider()
    tools = tuple(t.spec for t in builtin_tools().values())
    messages: tuple[dict[str, object], ...] = ({"role": "user", "content": "what is 3*4?"},)
    chunks = [c async for c in provider.stream(ModelRequest(model="m", messages=messages, tools=tools))]
    end = chunks[-1]
    assert isinstance(end, TurnEnd) and end.tool_calls[0].name == "calculator"
    assert json.loads(end.tool_calls[0].arguments) == {"expression": "3*4"}
    messages += ({"role": "tool", "tool_call_id": "call_1", "content": '{"result": 12}'},)
    chunks = [c async for c in provider.stream(ModelRequest(model="m", messages=messages, tools=tools))]
    text = "".join(c.text for c in chunks if isinstance(c, TextDelta))
    assert text.startswith("The calculator says 12.")
    assert isinstance(chunks[-1], TurnEnd) and not chunks[-1].tool_calls and chunks[-1].usage.total_tokens > 0
