"""``/v1/schedules`` on the real broker: bounded and validated input (422 with the reason), tenant
scope, pause and resume, delete; another replica (or a restarted one) rebuilds the same from the log."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from services.orchestrator.app import create_app
from tests.e2e.conftest import Stack
from tests.support import serve

pytestmark = pytest.mark.kafka

A = {"Authorization": "Bearer key-a"}
B = {"Authorization": "Bearer key-b"}
TARGET = {"kind": "execution", "agent": "default", "input": "hello"}


@pytest.mark.parametrize(
    ("body", "reason"),
    [
        ({"cron": "0 0 30 2 *", "target": TARGET}, "never fires"),
        ({"interval_s": 5, "target": TARGET}, "at least 60"),
        ({"cron": "*/5 * * * *", "timezone": "Nowhere/City", "target": TARGET}, "unknown time zone"),
        ({"cron": "* * * * * *", "target": TARGET}, "five fields"),
        ({"cron": "*/5 * * * *", "interval_s": 60, "target": TARGET}, "invalid schedule"),
        ({"interval_s": 60, "target": {**TARGET, "agent": "nobody"}}, "unknown agent"),
        ({"interval_s": 60, "target": {**TARGET, "kind": "workflow"}}, "invalid schedule"),
        ({"interval_s": 10**12, "target": TARGET}, "invalid schedule"),
        ({"interval_s": 60}, "invalid schedule"),
    ],
)
async def test_a_schedule_that_cannot_fire_right_is_refused_with_the_reason(stack: Stack, body: dict[str, Any], reason: str) -> None:
    r = await stack.http.post("/v1/schedules", json=body, headers=A)
    assert r.status_code == 422, r.text
    assert reason in r.json()["error"]


async def test_schedules_are_the_tenants_own_and_pause_resume_and_delete(stack: Stack) -> None:
    r = await stack.http.post(
        "/v1/schedules", json={"name": "report", "cron": "*/5 * * * *", "timezone": "Europe/Paris", "target": TARGET}, headers=A
    )
    assert r.status_code == 201, r.text
    made = r.json()
    sid = made["schedule_id"]
    nxt = datetime.fromisoformat(made["next_fire_at"]).astimezone(ZoneInfo("Europe/Paris"))
    assert nxt.minute % 5 == 0 and nxt.second == 0 and nxt > datetime.now(ZoneInfo("Europe/Paris"))
    assert made["last_fired_at"] is None and made["paused"] is False and made["catch_up"] == "latest"

    # Another tenant sees nothing of it.
    assert (await stack.http.get(f"/v1/schedules/{sid}", headers=B)).status_code == 404
    assert (await stack.http.get("/v1/schedules", headers=B)).json() == {"schedules": []}
    assert (await stack.http.patch(f"/v1/schedules/{sid}", json={"paused": True}, headers=B)).status_code == 404
    assert (await stack.http.delete(f"/v1/schedules/{sid}", headers=B)).status_code == 404
    assert [s["schedule_id"] for s in (await stack.http.get("/v1/schedules", headers=A)).json()["schedules"]] == [sid]

    paused = (await stack.http.patch(f"/v1/schedules/{sid}", json={"paused": True}, headers=A)).json()
    assert paused["paused"] is True and paused["next_fire_at"] is None
    resumed = (await stack.http.patch(f"/v1/schedules/{sid}", json={"paused": False}, headers=A)).json()
    assert resumed["paused"] is False and resumed["next_fire_at"] is not None
    retimed = await stack.http.patch(f"/v1/schedules/{sid}", json={"interval_s": 120}, headers=A)
    assert retimed.status_code == 200, retimed.text
    assert retimed.json()["cron"] is None and retimed.json()["interval_s"] == 120
    bad = await stack.http.patch(f"/v1/schedules/{sid}", json={"timezone": "Nowhere/City"}, headers=A)
    assert bad.status_code == 422 and "unknown time zone" in bad.json()["error"]

    other = await stack.http.post("/v1/schedules", json={"interval_s": 3600, "target": TARGET}, headers=A)
    kept = other.json()["schedule_id"]
    assert (await stack.http.delete(f"/v1/schedules/{sid}", headers=A)).status_code == 204
    assert (await stack.http.get(f"/v1/schedules/{sid}", headers=A)).status_code == 404

    # Another replica (a restart is the same) reads it all back from the log: the change, the delete.
    async with serve(create_app(stack.orchestrator_settings)) as url, httpx.AsyncClient(base_url=url, headers=A) as replica:
        async with asyncio.timeout(30):
            while (r := await replica.get(f"/v1/schedules/{kept}")).status_code != 200:
                await asyncio.sleep(0.1)
        assert r.json()["interval_s"] == 3600
        assert (await replica.get(f"/v1/schedules/{sid}")).status_code == 404
        assert [s["schedule_id"] for s in (await replica.get("/v1/schedules")).json()["schedules"]] == [kept]


async def test_a_tenant_has_at_most_max_schedules_per_tenant(stack: Stack) -> None:
    settings = stack.orchestrator_settings.model_copy(update={"max_schedules_per_tenant": 1})
    async with serve(create_app(settings)) as url, httpx.AsyncClient(base_url=url) as http:
        body = {"interval_s": 3600, "target": TARGET}
        assert (await http.post("/v1/schedules", json=body, headers=A)).status_code == 201
        r = await http.post("/v1/schedules", json=body, headers=A)
        assert r.status_code == 409 and "the most it may have" in r.json()["error"]
        assert (await http.post("/v1/schedules", json=body, headers=B)).status_code == 201  # per tenant
