"""Tenants and API keys: admin API, hashed keys shown once, revocation; bootstrap keys keep working."""

from __future__ import annotations

import pytest

from tests.e2e.orchestrator.conftest import ADMIN, Launcher

pytestmark = pytest.mark.kafka


async def test_admin_creates_tenant_and_key_then_revokes(launch: Launcher, database_url: str) -> None:
    async with launch(database_url, executor=False) as orch:
        assert (await orch.post("/v1/admin/tenants", {"tenant_id": "acme"}, key="key-a")).status_code == 401
        r = await orch.post("/v1/admin/tenants", {"tenant_id": "acme", "limits": {"requests_per_minute": 100}}, key=ADMIN)
        assert r.status_code == 201, r.text
        assert r.json()["webhook_secret"].startswith("whsec_")
        assert (await orch.post("/v1/admin/tenants", {"tenant_id": "acme"}, key=ADMIN)).status_code == 409
        assert (await orch.post("/v1/admin/tenants", {"tenant_id": "bad id!"}, key=ADMIN)).status_code == 422
        r = await orch.post("/v1/admin/tenants/acme/keys", {"name": "ci"}, key=ADMIN)
        assert r.status_code == 201
        secret, key_id = r.json()["api_key"], r.json()["key_id"]
        assert (await orch.post("/v1/admin/tenants/nobody/keys", {}, key=ADMIN)).status_code == 404

        listed = (await orch.get("/v1/admin/tenants/acme/keys", key=ADMIN)).json()["keys"]
        assert [k["key_id"] for k in listed] == [key_id] and "api_key" not in listed[0]
        tenants = {t["tenant_id"] for t in (await orch.get("/v1/admin/tenants", key=ADMIN)).json()["tenants"]}
        assert {"acme", "tenant-a", "tenant-b"} <= tenants  # bootstrap tenants get rows too

        r = await orch.post("/v1/executions", {"input": "hi"}, key=secret)
        assert r.status_code == 202
        execution_id = r.json()["execution_id"]
        assert (await orch.get(f"/v1/executions/{execution_id}", key=secret)).status_code == 200
        assert (await orch.get(f"/v1/executions/{execution_id}", key="key-a")).status_code == 404
        assert (await orch.post("/v1/executions", {"input": "hi"}, key="key-a")).status_code == 202  # bootstrap key

        r = await orch.http.delete(f"/v1/admin/keys/{key_id}", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 200 and r.json()["revoked_at"]
        assert (await orch.post("/v1/executions", {"input": "hi"}, key=secret)).status_code == 401
        r = await orch.http.delete("/v1/admin/keys/key_nope", headers={"Authorization": f"Bearer {ADMIN}"})
        assert r.status_code == 404


async def test_admin_api_is_absent_without_a_token(launch: Launcher, sqlite_url: str) -> None:
    async with launch(sqlite_url, executor=False, admin_token=None) as orch:
        assert (await orch.get("/v1/admin/tenants", key="anything")).status_code == 404
