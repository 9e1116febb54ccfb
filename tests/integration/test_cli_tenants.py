"""`agentstream tenants` and `agentstream keys` against a real store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from services.orchestrator.store import Store
from services.orchestrator.store import tenants as repo


def _cli(db: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTSTREAM_DATABASE_URL": db, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "services.cli", *args], env=env, capture_output=True, text=True, timeout=60, check=False)


async def test_cli_creates_tenant_and_key_and_revokes(tmp_path: Path) -> None:
    db = f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"
    created = _cli(db, "tenants", "create", "acme", "--rpm", "10")
    assert created.returncode == 0, created.stderr
    assert "whsec_" in created.stdout
    assert _cli(db, "tenants", "create", "acme").returncode == 1
    assert "acme" in _cli(db, "tenants", "list").stdout
    made = _cli(db, "keys", "create", "acme", "--name", "ci")
    assert made.returncode == 0, made.stderr
    secret = made.stdout.strip().splitlines()[-1]
    assert secret.startswith("as_")
    assert _cli(db, "keys", "create", "nobody").returncode == 1
    async with Store(db) as store, store.begin() as conn:
        tenant = await repo.tenant_for_key(conn, secret)
        assert tenant is not None and tenant.id == "acme" and tenant.limits == {"requests_per_minute": 10}
        (key,) = await repo.list_keys(conn, "acme")
    assert secret not in _cli(db, "keys", "list").stdout
    assert _cli(db, "keys", "revoke", key.id).returncode == 0
    async with Store(db) as store, store.begin() as conn:
        assert await repo.tenant_for_key(conn, secret) is None
