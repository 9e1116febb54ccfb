"""Usage a model endpoint reports, through the real openai and groq SDKs (fake server on 127.0.0.1):
odd numbers are clamped or dropped (services/executor/providers/usage.py), never a failed stream,
never a count the schema (and so the orchestrator) would refuse."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from schemas.bounds import MAX_TOKENS
from schemas.events import ExecutionCompleted
from services.executor.providers.base import ModelRequest, Provider, TurnEnd
from services.executor.providers.chat import groq_provider, openai_provider
from services.executor.settings import TimeoutSettings
from tests.fakes.openai_server import FakeOpenAI, Reply

TIMEOUTS = TimeoutSettings(connect_s=2, first_token_s=2, total_s=10, read_s=5)


@pytest.fixture
async def providers() -> AsyncIterator[tuple[FakeOpenAI, dict[str, Provider]]]:
    async with FakeOpenAI() as fake:
        made = {
            "openai": openai_provider(name="openai", api_key="sk-test", base_url=fake.openai_url, default_model="m", timeouts=TIMEOUTS),
            "groq": groq_provider(api_key="gsk-test", base_url=fake.url, default_model="m", timeouts=TIMEOUTS),
        }
        yield fake, dict(made)
        for provider in made.values():
            await provider.aclose()


@pytest.mark.parametrize("name", ["openai", "groq"])
@pytest.mark.parametrize(
    "raw, expected",
    [
        ({"prompt_tokens": 10**19, "completion_tokens": 3, "total_tokens": 10**19}, (MAX_TOKENS, 3, MAX_TOKENS)),
        ({"prompt_tokens": 1e20, "completion_tokens": 2}, (MAX_TOKENS, 2, MAX_TOKENS)),
        ({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": "abc"}, (7, 3, 10)),
        ({"prompt_tokens": -992_704, "completion_tokens": 5, "total_tokens": -992_699}, (0, 5, 5)),
        ({"prompt_tokens": 1.5, "completion_tokens": True, "total_tokens": None}, (0, 0, 0)),
        ({"prompt_tokens": 12.0, "completion_tokens": 4, "total_tokens": 16}, (12, 4, 16)),
    ],
)
async def test_odd_usage_from_a_model_is_clamped_or_dropped(
    providers: tuple[FakeOpenAI, dict[str, Provider]], name: str, raw: dict[str, Any], expected: tuple[int, int, int]
) -> None:
    fake, made = providers
    fake.script("m", Reply(text=["ok"], raw_usage=raw, usage_in_x_groq=name == "groq"))
    chunks = [c async for c in made[name].stream(ModelRequest(model="m", messages=({"role": "user", "content": "hi"},)))]
    end = chunks[-1]
    assert isinstance(end, TurnEnd)
    assert (end.usage.prompt_tokens, end.usage.completion_tokens, end.usage.total_tokens) == expected
    # What the executor then emits passes the schema the orchestrator validates with.
    event = ExecutionCompleted(tenant_id="t", execution_id="e", output="ok", usage=end.usage)
    assert ExecutionCompleted.model_validate_json(event.model_dump_json()).usage == end.usage
