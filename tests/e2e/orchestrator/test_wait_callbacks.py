"""Callbacks fire when an execution parks ``waiting`` (issue 16): once per wait, signed like the
others, with what is waited for and where to decide; not again from an orchestrator restarted
mid-wait. Real broker, a real orchestrator and executor, a loopback receiver."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from tests.e2e.orchestrator.conftest import ADMIN, Launcher
from tests.e2e.orchestrator.test_cli_approvals import Booking, _files, model
from tests.fakes.openai_server import FakeOpenAI
from tests.support import serve

pytestmark = pytest.mark.kafka

WAIT_S = 90.0


class Receiver:
    def __init__(self) -> None:
        self.received: list[tuple[bytes, dict[str, str]]] = []
        self._changed = asyncio.Event()
        self.app = Starlette(routes=[Route("/hook", self.hook, methods=["POST"])])

    async def hook(self, request: Request) -> Response:
        self.received.append((await request.body(), dict(request.headers)))
        self._changed.set()
        return Response(status_code=204)

    def payloads(self, secret: str) -> list[dict[str, Any]]:
        return [Webhook(secret).verify(body, headers) for body, headers in self.received]

    async def until(self, secret: str, ready: Callable[[list[dict[str, Any]]], bool]) -> list[dict[str, Any]]:
        async with asyncio.timeout(WAIT_S):
            while not ready(self.payloads(secret)):
                self._changed.clear()
                await self._changed.wait()
        return self.payloads(secret)


def _of(payloads: list[dict[str, Any]], execution_id: str) -> list[dict[str, Any]]:
    return [p for p in payloads if p["execution_id"] == execution_id]


async def test_a_wait_fires_the_callback_once_signed_with_how_to_decide(
    launch: Launcher, sqlite_url: str, tmp_path: Path, kafka_settings: KafkaSettings
) -> None:
    service = Booking()
    receiver = Receiver()
    async with serve(service.app) as tool_url, serve(receiver.app) as hook_url, FakeOpenAI(default=model) as fake:
        agents, tools = _files(tmp_path, tool_url)
        hook = f"{hook_url}/hook"
        settings = ExecutorSettings(
            kafka=kafka_settings, agents_file=agents, tools_file=tools, compatible_base_url=fake.openai_url, allow_private_tool_urls=True
        )
        async with Executor(settings):
            async with launch(sqlite_url, executor=False, agents_file=agents) as orch:
                secret = (await orch.get("/v1/admin/tenants/tenant-a", key=ADMIN)).json()["webhook_secret"]
                r = await orch.post("/v1/executions", {"input": "please book A", "agent": "booker", "callback_url": hook})
                assert r.status_code == 202, r.text
                first = r.json()["execution_id"]
                got = await receiver.until(secret, lambda ps: len(_of(ps, first)) >= 1)
                (waiting,) = _of(got, first)
                assert waiting["type"] == "execution.waiting" and waiting["status"] == "waiting"
                (asked,) = waiting["waiting_for"]
                assert asked["kind"] == "approval" and asked["call_id"] == "call_1" and asked["tool"] == "book"
                assert asked["arguments"] == {"item": "A"} and asked["default"] == "reject" and asked["deadline"]
                assert asked["decide"] == f"POST /v1/executions/{first}/approvals/call_1"
                _, headers = receiver.received[0]
                assert headers["webhook-id"].startswith("msg_w")

            # A restarted orchestrator (same store) reads the wait from the log again: no second callback for it.
            async with launch(sqlite_url, executor=False, agents_file=agents) as orch:
                r = await orch.post("/v1/executions", {"input": "please book B", "agent": "booker", "callback_url": hook})
                second = r.json()["execution_id"]
                # Its callback means the new orchestrator's sweeps ran while the first execution waited.
                got = await receiver.until(secret, lambda ps: len(_of(ps, second)) >= 1)
                assert len(_of(got, first)) == 1, got
                # A decision: the execution goes on, asks a question (a new wait: a callback for it), then ends.
                r = await orch.post(f"/v1/executions/{first}/approvals/call_1", {"decision": "approve"})
                assert r.status_code == 200, r.text
                got = await receiver.until(secret, lambda ps: len(_of(ps, first)) >= 2)
                question = _of(got, first)[1]
                assert question["type"] == "execution.waiting" and question["attempt"] > waiting["attempt"]
                (asked,) = question["waiting_for"]
                assert asked["kind"] == "input" and asked["question"] == "Which colour?"
                assert asked["answer"] == f"POST /v1/executions/{first}/inputs/ask_1"
                r = await orch.post(f"/v1/executions/{first}/inputs/ask_1", {"text": "red"})
                assert r.status_code == 200, r.text
                got = await receiver.until(secret, lambda ps: any(p["type"] == "execution.completed" for p in _of(ps, first)))
                assert [p["type"] for p in _of(got, first)] == ["execution.waiting", "execution.waiting", "execution.completed"]
                r = await orch.post(f"/v1/executions/{second}/approvals/call_1", {"decision": "reject", "reason": "no"})
                assert r.status_code == 200, r.text
                await receiver.until(secret, lambda ps: any(p["type"] == "execution.completed" for p in _of(ps, second)))
