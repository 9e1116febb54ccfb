"""`agentstream replay`: execution and session through the API, topic ranges with a consumer group."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime

import orjson
import pytest

from services.replay import ReplayError, execution_events, session_events, topic_records
from tests.e2e.conftest import Stack
from tests.support import collect_events

pytestmark = pytest.mark.kafka


async def test_replay_execution_and_session_match_the_stream(stack: Stack) -> None:
    first = await stack.submit(input="1+2", session_id="s-9")
    second = await stack.submit(input="3+4", session_id="s-9")
    live = {i: await collect_events(stack.ws_url, "key-a", i) for i in (first, second)}
    replayed = [item async for item in execution_events(stack.url, "key-a", first)]
    assert replayed == live[first]
    tail = [item async for item in execution_events(stack.url, "key-a", first, cursor=live[first][2]["cursor"])]
    assert tail == live[first][3:]
    session = [item async for item in session_events(stack.url, "key-a", "s-9", idle_s=1.0)]
    for execution_id, items in live.items():
        assert [i for i in session if i["execution_id"] == execution_id] == items
    with pytest.raises(ReplayError, match="404"):
        [item async for item in execution_events(stack.url, "key-b", first)]


async def test_replay_topic_with_own_group_goes_on_where_it_stopped(stack: Stack) -> None:
    started = datetime.now(UTC)
    execution_id = await stack.submit()
    items = await collect_events(stack.ws_url, "key-a", execution_id)
    topic = stack.kafka.topics.events
    common = {"kafka": stack.kafka, "topic": topic, "from_time": None, "idle_s": 1.0}
    first = [r async for r in topic_records(group_id="auditor", from_beginning=True, limit=3, **common)]  # type: ignore[arg-type]
    assert [r["offset"] for r in first] == [i["cursor"] for i in items[:3]]
    assert first[0]["headers"]["type"] == "execution.started" and first[0]["key"] == execution_id
    rest = [r async for r in topic_records(group_id="auditor", from_beginning=True, limit=None, **common)]  # type: ignore[arg-type]
    assert [r["value"] for r in rest] == [i["event"] for i in items[3:]]
    by_time = [
        r
        async for r in topic_records(group_id=None, from_beginning=False, limit=None, **{**common, "from_time": started})  # type: ignore[arg-type]
    ]
    assert len(by_time) == len(items)


async def test_replay_topic_command_prints_json_lines(stack: Stack) -> None:
    execution_id = await stack.submit()
    items = await collect_events(stack.ws_url, "key-a", execution_id)
    env = {**os.environ, "AGENTSTREAM_KAFKA_BOOTSTRAP": stack.kafka.bootstrap, "AGENTSTREAM_KAFKA_TOPIC_PREFIX": stack.kafka.topic_prefix}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "services.cli",
        "replay",
        "topic",
        "--from-beginning",
        "--limit",
        "2",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    lines = [orjson.loads(line) for line in out.splitlines()]
    assert [line["value"] for line in lines] == [i["event"] for i in items[:2]]
