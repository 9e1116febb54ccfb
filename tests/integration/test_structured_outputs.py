"""Structured outputs in the executor's loop, against the real SDK and the fake OpenAI server: the
final answer must match the schema; a mismatch is asked again once with the error, then fails."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest

from schemas.agents import AgentSpec
from services.common.settings import KafkaSettings
from tests.fakes.openai_server import Reply
from tests.integration.executor_harness import AGENTS, Harness, running_executor, types_of

pytestmark = pytest.mark.kafka

SCHEMA: dict[str, Any] = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"], "additionalProperties": False}


@pytest.fixture
async def harness(kafka_settings: KafkaSettings) -> AsyncIterator[Harness]:
    agents = dict(AGENTS) | {
        "typed": AgentSpec(name="typed", provider="openai", model="typed-model", tools=(), output_schema=SCHEMA),
        "multi": AgentSpec(name="multi", provider="openai", model="chat-model", tools=(), models=("other-model",)),
    }
    async with running_executor(kafka_settings, agents=agents) as h:
        yield h


async def test_a_mismatching_answer_is_asked_again_once_with_the_error(harness: Harness) -> None:
    harness.fake.script("chat-model", Reply(text=['{"n": "seven"}']), Reply(text=['{"n": ', "7}"]))
    events = await harness.events(await harness.submit("chat", "count", output_schema=SCHEMA))
    assert events[-1]["type"] == "execution.completed" and orjson.loads(events[-1]["output"]) == {"n": 7}
    restart = next(e for e in events if e["type"] == "execution.restarted")
    assert restart["text_discarded"] and "output schema" in restart["reason"] and "'seven' is not of type 'integer'" in restart["reason"]
    first, second = harness.fake.bodies("chat-model")
    assert first["response_format"] == {"type": "json_schema", "json_schema": {"name": "output", "schema": SCHEMA}}
    assert second["messages"][-2] == {"role": "assistant", "content": '{"n": "seven"}'}
    assert "'seven' is not of type 'integer'" in second["messages"][-1]["content"]


async def test_a_second_mismatch_fails_the_execution_with_the_reason(harness: Harness) -> None:
    harness.fake.script("chat-model", Reply(text=["not json"]), Reply(text=['{"m": 1}']))
    events = await harness.events(await harness.submit("chat", "count", output_schema=SCHEMA))
    assert events[-1]["type"] == "execution.failed"
    assert events[-1]["reason"] == (
        "the answer did not match the output schema, also when asked again: "
        "the answer does not match the output schema at (root): 'n' is a required property"
    )
    assert len(harness.fake.bodies("chat-model")) == 2  # asked again once, not more


async def test_an_agents_own_output_schema_is_enforced(harness: Harness) -> None:
    harness.fake.script("typed-model", Reply(text=["plain text"]), Reply(text=['{"n": 1}']))
    events = await harness.events(await harness.submit("typed", "count"))
    assert types_of(events).count("execution.restarted") == 1 and events[-1]["output"] == '{"n": 1}'


async def test_instructions_and_an_allowed_model_reach_the_model(harness: Harness) -> None:
    harness.fake.script("other-model", Reply(text=["ok"]))
    events = await harness.events(await harness.submit("multi", "hi", model="other-model", instructions="Answer in French."))
    assert events[-1]["type"] == "execution.completed"
    body = harness.fake.bodies("other-model")[0]
    assert body["messages"][1] == {"role": "system", "content": "Answer in French."}
    refused = await harness.events(await harness.submit("multi", "hi", model="not-allowed"))
    assert refused[-1]["type"] == "execution.failed" and "does not allow model 'not-allowed'" in refused[-1]["reason"]
