"""Batches with progress and results; callbacks signed per Standard Webhooks, retried; bad input."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.e2e.orchestrator.conftest import ADMIN, Launcher
from tests.support import serve

pytestmark = pytest.mark.kafka


async def test_batch_reports_progress_and_results(launch: Launcher, database_url: str) -> None:
    async with launch(database_url) as orch:
        items = [{"input": f"what is {i}*3?", "custom_id": f"row-{i}"} for i in range(4)]
        r = await orch.post("/v1/batches", {"items": items})
        assert r.status_code == 202, r.text
        batch_id, ids = r.json()["batch_id"], r.json()["execution_ids"]
        assert len(ids) == 4
        assert (await orch.get(f"/v1/batches/{batch_id}", key="key-b")).status_code == 404
        view = await orch.wait_for(f"/v1/batches/{batch_id}", lambda b: b["status"] == "completed")
        assert view["total"] == 4 and view["counts"]["completed"] == 4 and view["priority"] == "batch"
        assert [(x["custom_id"], x["execution_id"]) for x in view["results"]] == [(f"row-{i}", ids[i]) for i in range(4)]
        assert all(str(i * 3) in x["output"] and x["usage"]["total_tokens"] > 0 for i, x in enumerate(view["results"]))


async def test_callbacks_are_signed_retried_and_visible(launch: Launcher, sqlite_url: str) -> None:
    received: list[tuple[bytes, dict[str, str]]] = []

    async def hook(request: Request) -> Response:
        received.append((await request.body(), dict(request.headers)))
        return Response(status_code=500 if len(received) == 1 else 204)  # the first attempt fails

    async with serve(Starlette(routes=[Route("/hook", hook, methods=["POST"])])) as hook_url, launch(sqlite_url) as orch:
        r = await orch.post("/v1/executions", {"input": "what is 5*5?", "callback_url": f"{hook_url}/hook"})
        execution_id = r.json()["execution_id"]
        view = await orch.wait_for(
            f"/v1/executions/{execution_id}", lambda v: bool(v["callbacks"]) and v["callbacks"][0]["state"] == "delivered"
        )
        delivery = view["callbacks"][0]
        assert delivery["attempts"] == 2 and delivery["last_status"] == 204
        secret = (await orch.get("/v1/admin/tenants/tenant-a", key=ADMIN)).json()["webhook_secret"]
        (_, first_headers), (body, headers) = received
        assert first_headers["webhook-id"] == headers["webhook-id"] == delivery["delivery_id"]  # same message, retried
        payload: Any = Webhook(secret).verify(body, headers)
        assert payload["type"] == "execution.completed" and payload["execution_id"] == execution_id and "25" in payload["output"]
        with pytest.raises(WebhookVerificationError):
            Webhook("whsec_" + "QUJD" * 8).verify(body, headers)

        received.clear()
        r = await orch.post("/v1/batches", {"items": [{"input": "1+1"}], "callback_url": f"{hook_url}/hook"})
        batch_id = r.json()["batch_id"]
        view = await orch.wait_for(f"/v1/batches/{batch_id}", lambda b: any(c["state"] == "delivered" for c in b["callbacks"]))
        kinds = {Webhook(secret).verify(b, h)["type"] for b, h in received}
        assert "batch.completed" in kinds


async def test_private_callback_urls_are_refused_unless_allowed(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False, callbacks_allow_private=False) as orch:
        for url in ("http://127.0.0.1:9/x", "http://10.1.2.3/x", "http://169.254.169.254/latest", "http://[::1]/x", "ftp://example.com/x"):
            r = await orch.post("/v1/executions", {"input": "hi", "callback_url": url})
            assert r.status_code == 422, (url, r.text)
        r = await orch.post("/v1/batches", {"items": [{"input": "hi"}], "callback_url": "http://localhost/x"})
        assert r.status_code == 422


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/v1/sessions", b"{nope", 400),
        ("POST", "/v1/sessions", b'{"agent": 5}', 422),
        ("POST", "/v1/sessions", b'{"agent": "ghost"}', 422),
        ("POST", "/v1/sessions", b'{"policy": "sometimes"}', 422),
        ("POST", "/v1/sessions/ses_unknown/chat", b'{"content": "hi"}', 404),
        ("GET", "/v1/sessions/ses_unknown", b"", 404),
        ("GET", "/v1/sessions/ses_unknown/messages", b"", 404),
        ("POST", "/v1/batches", b'{"items": []}', 422),
        ("POST", "/v1/batches", b'{"items": [{"input": "x", "agent": "ghost"}]}', 422),
        ("POST", "/v1/batches", b'{"items": "all"}', 422),
        ("GET", "/v1/batches/bat_unknown", b"", 404),
        ("POST", "/v1/executions/unknown/cancel", b"", 404),
        ("GET", "/v1/executions/unknown", b"", 404),
        ("POST", "/v1/jobs", b'{"service": ""}', 422),
        ("GET", "/v1/tasks/unknown", b"", 404),
        ("GET", "/v1/usage?group_by=x", b"", 422),
        ("POST", "/v1/batches", b'{"items": [{"input": "' + b"x" * 1_100_000 + b'"}]}', 413),
    ],
)
async def test_bad_input_is_a_clear_4xx(launch: Launcher, sqlite_url: str, method: str, path: str, body: bytes, status: int) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        headers = {"Authorization": "Bearer key-a", "Content-Type": "application/json"}
        r = await orch.http.request(method, path, content=body or None, headers=headers)
        assert r.status_code == status, r.text
        assert r.json()["error"]
        assert (await orch.http.request(method, path, content=body or None)).status_code == 401


async def test_another_tenants_ids_are_404(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False) as orch:
        session_id = (await orch.post("/v1/sessions", {})).json()["session_id"]
        batch_id = (await orch.post("/v1/batches", {"items": [{"input": "hi"}]})).json()["batch_id"]
        execution_id = (await orch.post("/v1/executions", {"input": "hi"})).json()["execution_id"]
        for path in (
            f"/v1/sessions/{session_id}",
            f"/v1/sessions/{session_id}/messages",
            f"/v1/batches/{batch_id}",
            f"/v1/executions/{execution_id}",
        ):
            assert (await orch.get(path, key="key-b")).status_code == 404, path
        assert (await orch.post(f"/v1/sessions/{session_id}/chat", {"content": "hi"}, key="key-b")).status_code == 404
        assert (await orch.post(f"/v1/executions/{execution_id}/cancel", key="key-b")).status_code == 404
        await asyncio.sleep(0)
