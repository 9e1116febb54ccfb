"""An idle orchestrator does not poll its store (issue 14, the idle stack): the sweeper and the
callback dispatcher query it when something there falls due (nextdue.py), not every round. And the
deadline of an execution accepted while idle still ends it on time: the view's hint wakes the sweep."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from services.common.settings import KafkaSettings
from services.orchestrator.app import create_app
from tests.e2e.orchestrator.conftest import settings_for
from tests.support import serve

pytestmark = pytest.mark.kafka
AUTH = {"Authorization": "Bearer key-a"}


async def test_an_idle_orchestrator_leaves_its_store_alone_until_a_deadline_is_due(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    settings = settings_for(
        kafka_settings,
        f"sqlite+aiosqlite:///{tmp_path / 'state.db'}",
        sweep_interval_s=0.05,
        callback_poll_s=0.05,
        store_refresh_s=3600,
        execution_timeout_s=1,
    )
    app = create_app(settings)
    statements: list[str] = []

    def count(_conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "deadline" in statement or "next_attempt_at" in statement:
            statements.append(statement)

    async with serve(app) as url, httpx.AsyncClient(base_url=url, timeout=30) as http:
        engine = app.state.agentstream.runtime.store.engine.sync_engine
        event.listen(engine, "before_cursor_execute", count)
        await asyncio.sleep(1.5)  # 30 sweeper rounds, 30 dispatcher rounds
        idle = len(statements)
        # Before: every round queried the store (about 90 statements here). Now: at most the first
        # look of each (they may have run before the listener was attached).
        assert idle <= 4, statements

        # An execution with a 1 s timeout, nobody to run it (no executor): its deadline, hinted by
        # the status view, makes the sweep look again and time it out.
        accepted = await http.post("/v1/executions", json={"input": "x"}, headers=AUTH)
        assert accepted.status_code == 202, accepted.text
        execution_id = accepted.json()["execution_id"]
        until = time.monotonic() + 30
        while True:
            got = (await http.get(f"/v1/executions/{execution_id}", headers=AUTH)).json()
            if got["status"] == "timed_out":
                break
            assert time.monotonic() < until, got
            await asyncio.sleep(0.1)
        event.remove(engine, "before_cursor_execute", count)
