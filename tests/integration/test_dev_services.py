"""deploy/dev-services.sh from a clone whose parents other users cannot enter (a clone under /root, 0700).

As root, PostgreSQL runs as `postgres`, which could not reach a data directory inside such a clone
(`initdb: could not access directory ...: Permission denied`); the script keeps that data under a
directory `postgres` owns instead.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from pathlib import Path

import asyncpg
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "dev-services.sh"
HAVE_SERVERS = bool(list(Path("/usr/lib/postgresql").glob("*/bin/initdb"))) and shutil.which("redis-server") is not None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.skipif(not HAVE_SERVERS, reason="needs Debian's postgresql and redis-server (make services installs them)")
async def test_dev_services_start_from_a_clone_under_a_closed_directory(tmp_path: Path) -> None:
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    deploy = private / "clone" / "deploy"
    deploy.mkdir(parents=True)
    shutil.copy(SCRIPT, deploy / "dev-services.sh")
    pg_port, redis_port = _free_port(), _free_port()
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "AGENTSTREAM_DEV_PG_PORT": str(pg_port), "AGENTSTREAM_DEV_REDIS_PORT": str(redis_port)}

    def script(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["bash", str(deploy / "dev-services.sh"), *args], env=env, capture_output=True, text=True, timeout=120, cwd=tmp_path
        )

    where = script("where").stdout.strip()
    try:
        started = script("start")
        assert started.returncode == 0, started.stderr
        assert f"postgres up on 127.0.0.1:{pg_port}" in started.stdout
        conn = await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{pg_port}/postgres", timeout=10)
        try:
            assert await conn.fetchval("SELECT 1") == 1
        finally:
            await conn.close()
        again = script("start")  # idempotent: finds its own cluster again
        assert again.returncode == 0 and "postgres already running" in again.stdout, again.stderr
    finally:
        script("stop")
        # Only what this clone's cluster is, never a path the script did not name (an empty answer is ".").
        if where.startswith(("/var/tmp/agentstream-dev-services/", str(deploy))):
            shutil.rmtree(where, ignore_errors=True)
