"""Several orchestrator replicas: a client of /v1/tasks/stream on any replica sees every task update of
its tenant, whichever replica applied it (the events follower group splits the work between them)."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import websockets

from services.orchestrator.app import create_app
from tests.e2e.conftest import Stack
from tests.support import serve

pytestmark = pytest.mark.kafka


async def test_every_replica_streams_every_task_update_of_its_tenants(stack: Stack) -> None:
    async with serve(create_app(stack.orchestrator_settings)) as other:
        async with (
            websockets.connect(f"{other.replace('http', 'ws', 1)}/v1/tasks/stream?api_key=key-a") as a_stream,
            websockets.connect(f"{other.replace('http', 'ws', 1)}/v1/tasks/stream?api_key=key-b") as b_stream,
        ):
            assert orjson.loads(await a_stream.recv()) == {"type": "subscribed"}
            assert orjson.loads(await b_stream.recv()) == {"type": "subscribed"}
            # Submitted on the first replica; their ends land on partitions either replica may own.
            submitted = {await stack.submit("key-a", input=f"{i}+{i}") for i in range(9)}
            b_only = await stack.submit("key-b", input="tenant b")
            seen: dict[str, str] = {}
            async with asyncio.timeout(45):
                while {k for k, v in seen.items() if v == "completed"} != submitted:
                    update = orjson.loads(await a_stream.recv())
                    seen[update["task_id"]] = update["status"]
            assert set(seen) == submitted  # only tenant a's own tasks
            async with asyncio.timeout(30):
                update = orjson.loads(await b_stream.recv())
            assert update["task_id"] == b_only and update["status"] == "completed"
