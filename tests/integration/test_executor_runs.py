"""The executor on the real broker, its providers being the real SDKs against the fake server."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator

import pytest

from schemas.agents import AgentSpec
from schemas.status import ExecutionStatus
from services.common.settings import KafkaSettings
from tests.fakes.openai_server import FakeToolCall, Reply
from tests.integration.executor_harness import TENANT, Harness, running_executor, text_of, types_of

pytestmark = pytest.mark.kafka


@pytest.fixture
async def harness(kafka_settings: KafkaSettings) -> AsyncIterator[Harness]:
    async with running_executor(kafka_settings) as h:
        yield h


async def test_text_streams_and_completes_with_usage(harness: Harness) -> None:
    harness.fake.script("chat-model", Reply(text=["Hello", ",", " world"], usage=(12, 3)))
    events = await harness.events(await harness.submit("chat", "hi"))
    assert types_of(events)[0] == "execution.started" and events[0]["provider"] == "openai"
    assert text_of(events) == "Hello, world"
    assert events[-1]["type"] == "execution.completed" and events[-1]["output"] == "Hello, world"
    assert events[-1]["usage"] == {"prompt_tokens": 12, "completion_tokens": 3, "total_tokens": 15}
    body = harness.fake.bodies("chat-model")[0]
    assert body["messages"][0]["role"] == "system" and body["messages"][-1] == {"role": "user", "content": "hi"}
    assert "tools" not in body


async def test_two_step_tool_loop_sums_usage(harness: Harness) -> None:
    harness.fake.script(
        "tool-model",
        Reply(text=["Let me compute."], tool_calls=[FakeToolCall("calculator", '{"expression": "17*23+4"}', id="c1")], usage=(20, 5)),
        Reply(text=["It is ", "395."], usage=(40, 4)),
    )
    events = await harness.events(await harness.submit("tools", "17*23+4?"))
    assert types_of(events) == [
        "execution.started",
        "token.delta",
        "turn.completed",
        "tool.call.started",
        "tool.call.completed",
        "token.delta",
        "execution.completed",
    ]
    turn = events[2]
    assert turn["step"] == 0 and turn["text"] == "Let me compute." and turn["usage"]["total_tokens"] == 25
    assert turn["tool_calls"] == [{"id": "c1", "name": "calculator", "arguments": '{"expression": "17*23+4"}'}]
    completed = events[4]
    assert completed["result"] == 395 and completed["error"] is None and completed["duration_ms"] >= 0
    assert events[3]["arguments"] == {"expression": "17*23+4"}
    assert text_of(events, step=0) == "Let me compute." and text_of(events, step=1) == "It is 395."
    assert events[-1]["usage"] == {"prompt_tokens": 60, "completion_tokens": 9, "total_tokens": 69}
    second = harness.fake.bodies("tool-model")[1]["messages"]
    assert second[-2]["tool_calls"][0]["id"] == "c1"
    assert second[-1] == {"role": "tool", "tool_call_id": "c1", "content": '{"result":395}'}


async def test_parallel_tool_calls_run_concurrently(harness: Harness) -> None:
    calls = [FakeToolCall("sleeper", '{"seconds": 0.3}', id=f"s{i}") for i in range(3)]
    harness.fake.script("tool-model", Reply(tool_calls=calls), Reply(text=["done"]))
    events = await harness.events(await harness.submit("tools"))
    done = [e for e in events if e["type"] == "tool.call.completed"]
    assert sorted(e["call_id"] for e in done) == ["s0", "s1", "s2"] and all(e["result"] == "slept" for e in done)
    started = [e for e in events if e["type"] == "tool.call.started"]
    assert len(started) == 3
    # Sequential would take >= 0.9 s of tool time; all three overlap.
    tool_span = max(e["duration_ms"] for e in done)
    assert tool_span < 600, tool_span
    assert events[-1]["output"] == "done"


async def test_tool_timeout_is_an_error_result_for_the_model(harness: Harness) -> None:
    harness.fake.script("tool-model", Reply(tool_calls=[FakeToolCall("sleeper", '{"seconds": 5}', id="t")]), Reply(text=["ok"]))
    events = await harness.events(await harness.submit("tools"))
    completed = next(e for e in events if e["type"] == "tool.call.completed")
    assert completed["error"] == "tool 'sleeper' timed out after 0.5s"
    tool_message = harness.fake.bodies("tool-model")[1]["messages"][-1]
    assert json.loads(tool_message["content"]) == {"error": "tool 'sleeper' timed out after 0.5s"}
    assert events[-1]["type"] == "execution.completed"


@pytest.mark.parametrize(
    ("arguments", "expected"),
    [('{"expression": ', "not valid JSON"), ('{"expr": "1"}', "do not match the schema"), ("[1, 2]", "must be a JSON object")],
)
async def test_invalid_or_malformed_tool_arguments_go_back_to_the_model(harness: Harness, arguments: str, expected: str) -> None:
    harness.fake.script("tool-model", Reply(tool_calls=[FakeToolCall("calculator", arguments, id="bad")]), Reply(text=["sorry"]))
    events = await harness.events(await harness.submit("tools"))
    completed = next(e for e in events if e["type"] == "tool.call.completed")
    assert expected in completed["error"]
    assert expected in harness.fake.bodies("tool-model")[1]["messages"][-1]["content"]
    assert events[-1]["type"] == "execution.completed"
    # The executor keeps serving.
    harness.fake.script("chat-model", Reply(text=["still here"]))
    after = await harness.events(await harness.submit("chat"))
    assert after[-1]["output"] == "still here"


async def test_unknown_tool_from_the_model_is_an_error_result(harness: Harness) -> None:
    harness.fake.script("tool-model", Reply(tool_calls=[FakeToolCall("rm_rf", "{}")]), Reply(text=["ok"]))
    events = await harness.events(await harness.submit("tools"))
    assert "unknown tool 'rm_rf'" in next(e for e in events if e["type"] == "tool.call.completed")["error"]


async def test_fallback_mid_stream_tells_the_client_the_text_restarted(harness: Harness) -> None:
    broken = Reply(text=["Half", " an", " answ"], disconnect_after=3, token_delay_s=0.03)
    harness.fake.script("groq-model", broken, broken)  # two attempts (settings), both break
    harness.fake.script("backup-model", Reply(text=["A whole", " answer"], usage=(5, 2)))
    events = await harness.events(await harness.submit("groq"))
    restarts = [e for e in events if e["type"] == "execution.restarted"]
    assert [(r["provider"], r["fallback"], r["text_discarded"]) for r in restarts] == [("groq", False, True), ("openai", True, True)]
    assert restarts[-1]["model"] == "backup-model" and "broke off" in restarts[-1]["reason"]
    last = events.index(restarts[-1])
    assert text_of(events[last:]) == "A whole answer"
    assert events[-1]["output"] == "A whole answer"  # the void text is not in the output


async def test_missing_template_variable_fails_clearly(harness: Harness) -> None:
    events = await harness.events(await harness.submit("templated"))
    assert events[-1]["type"] == "execution.failed"
    assert events[-1]["reason"] == "prompt template of agent 'templated': 'customer' is undefined"
    harness.fake.script("chat-model", Reply(text=["hi Ada"]))
    ok = await harness.events(await harness.submit("templated", variables={"customer": "Ada"}))
    assert ok[-1]["type"] == "execution.completed"
    assert harness.fake.bodies("chat-model")[-1]["messages"][0]["content"] == "Help Ada."


async def test_sandbox_refuses_code_in_templates(kafka_settings: KafkaSettings) -> None:
    evil = AgentSpec(name="evil", provider="openai", model="chat-model", system_prompt="{{ ''.__class__.__mro__[1].__subclasses__() }}")
    async with running_executor(kafka_settings, agents={"evil": evil}) as h:
        events = await h.events(await h.submit("evil"))
    assert events[-1]["type"] == "execution.failed" and "cannot be rendered" in events[-1]["reason"]


async def test_completion_mode_is_one_turn_without_tools(harness: Harness) -> None:
    harness.fake.script("tool-model", Reply(text=["just ", "text"], usage=(3, 2)))
    events = await harness.events(await harness.submit("tools", "complete me", mode="completion", params={"temperature": 0}))
    assert types_of(events) == ["execution.started", "token.delta", "execution.completed"]
    body = harness.fake.bodies("tool-model")[0]
    assert body["messages"] == [{"role": "user", "content": "complete me"}] and "tools" not in body and body["temperature"] == 0


async def test_provider_failing_for_good_is_a_retriable_failure(harness: Harness) -> None:
    harness.fake.script("chat-model", Reply(status=500), Reply(status=500))
    events = await harness.events(await harness.submit("chat"))
    assert events[-1]["type"] == "execution.failed" and events[-1]["retriable"] is True
    assert "every provider failed" in events[-1]["reason"]


async def test_cancel_stops_a_running_execution(harness: Harness) -> None:
    harness.fake.script("tool-model", Reply(tool_calls=[FakeToolCall("sleeper", '{"seconds": 30}')]), Reply(text=["never"]))
    harness.executor.loop_settings = dataclasses.replace(harness.executor.loop_settings, tool_timeout_s=60)
    execution_id = await harness.submit("tools")
    await asyncio.wait_for(harness.sleeper.started.wait(), 10)
    await harness.cancel(execution_id)
    await harness.cancel(execution_id)  # twice is harmless
    events = await harness.events(execution_id)
    assert events[-1]["type"] == "execution.cancelled"
    assert types_of(events).count("execution.cancelled") == 1
    assert harness.sleeper.cancelled
    assert len(harness.fake.bodies("tool-model")) == 1  # the model was not called again
    status = harness.executor.status.get(execution_id)
    assert status is not None and status.state == "cancelled"


async def test_cancel_stops_a_provider_stream(harness: Harness) -> None:
    harness.fake.script("chat-model", Reply(text=["tok"] * 400, token_delay_s=0.02))
    execution_id = await harness.submit("chat")
    async with asyncio.timeout(10):
        while not harness.executor.status.get(execution_id) or harness.executor.status.get(execution_id).state != "running":  # type: ignore[union-attr]
            await asyncio.sleep(0.02)
    await asyncio.sleep(0.2)
    loop = asyncio.get_running_loop()
    asked = loop.time()
    await harness.cancel(execution_id)
    events = await harness.events(execution_id)
    assert events[-1]["type"] == "execution.cancelled"
    assert loop.time() - asked < 2.0
    assert 0 < len(text_of(events)) < 3 * 400


async def test_cancel_before_start_is_skipped_by_status(harness: Harness) -> None:
    # The orchestrator writes a cancelled snapshot for a cancel that arrives before the start.
    execution_id = "pre-cancelled"
    await harness.write_status(ExecutionStatus(execution_id=execution_id, tenant_id=TENANT, state="cancelled"))
    await harness.executor.status.wait_until(execution_id, lambda s: s.terminal, timeout=5)
    await harness.submit("chat", execution_id=execution_id)
    harness.fake.script("chat-model", Reply(text=["next"]))
    later = await harness.events(await harness.submit("chat"))
    assert later[-1]["output"] == "next"
    assert len(harness.fake.bodies("chat-model")) == 1  # the cancelled one never reached the model


async def _seen(harness: Harness, execution_id: str, tenant_id: str) -> None:
    """Until the executor's control reader has read that cancel (a condition, not a pause: CI is loaded)."""
    async with asyncio.timeout(20):
        while (execution_id, tenant_id) not in harness.executor._recent_cancels:
            await asyncio.sleep(0.02)


async def test_cancel_seen_on_the_control_topic_before_the_request(harness: Harness) -> None:
    execution_id = "cancel-first"
    await harness.cancel(execution_id)
    await _seen(harness, execution_id, TENANT)  # the control tail has it; the status view does not know this execution
    await harness.submit("chat", execution_id=execution_id)
    events = await harness.events(execution_id)
    assert types_of(events) == ["execution.cancelled"]
    assert not harness.fake.bodies("chat-model")


async def test_a_cancel_for_another_tenant_does_nothing(harness: Harness) -> None:
    harness.fake.script("chat-model", Reply(text=["mine"]))
    execution_id = "foreign-cancel"
    await harness.cancel(execution_id, tenant_id="someone-else")
    await _seen(harness, execution_id, "someone-else")  # read, and then ignored
    events = await harness.events(await harness.submit("chat", execution_id=execution_id))
    assert events[-1]["type"] == "execution.completed"


async def test_unreachable_agent_service_fails_the_execution_clearly(kafka_settings: KafkaSettings) -> None:
    async with running_executor(kafka_settings, agent_service_url="http://127.0.0.1:9", agent_service_timeout_s=1) as h:
        events = await h.events(await h.submit("from-the-service"))
        assert events[-1]["type"] == "execution.failed" and events[-1]["retriable"] is True
        assert "agent service at http://127.0.0.1:9 is unreachable" in events[-1]["reason"]
        # Agents of the YAML catalog still run.
        h.fake.script("chat-model", Reply(text=["local"]))
        assert (await h.events(await h.submit("chat")))[-1]["output"] == "local"
