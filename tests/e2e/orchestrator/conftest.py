"""An orchestrator (with or without an executor) on the real broker and a real database."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr

from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import create_app
from services.orchestrator.settings import OrchestratorSettings
from tests.databases import BACKENDS, fresh_database
from tests.support import serve

KEYS = {"key-a": "tenant-a", "key-b": "tenant-b"}
ADMIN = "admin-secret"
SERVICE_TOKEN = "svc-token"


@dataclass
class Orch:
    url: str
    http: httpx.AsyncClient
    settings: OrchestratorSettings

    @property
    def kafka(self) -> KafkaSettings:
        return self.settings.kafka

    @property
    def ws_url(self) -> str:
        return self.url.replace("http", "ws", 1)

    async def post(self, path: str, body: Any = None, *, key: str = "key-a", headers: dict[str, str] | None = None) -> httpx.Response:
        auth = {"Authorization": f"Bearer {key}", **(headers or {})}
        return await self.http.post(path, json=body if body is not None else {}, headers=auth)

    async def get(self, path: str, *, key: str = "key-a", **params: Any) -> httpx.Response:
        # No params: None, not {} (httpx replaces a query string in ``path`` with an empty one: the
        # filters in paths like "/v1/executions?status=completed" were silently dropped).
        return await self.http.get(path, headers={"Authorization": f"Bearer {key}"}, params=params or None)

    async def wait_for(
        self, path: str, predicate: Callable[[dict[str, Any]], bool], *, key: str = "key-a", timeout: float = 30
    ) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                r = await self.get(path, key=key)
                if r.status_code == 200 and predicate(r.json()):
                    return dict(r.json())
                await asyncio.sleep(0.05)


Launcher = Callable[..., contextlib.AbstractAsyncContextManager[Orch]]


@pytest.fixture(params=BACKENDS)
async def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[str]:
    async with fresh_database(request.param, tmp_path) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'state.db'}"


def settings_for(kafka: KafkaSettings, database_url: str, **overrides: Any) -> OrchestratorSettings:
    values: dict[str, Any] = {
        "kafka": kafka,
        "api_keys": KEYS,
        "database_url": SecretStr(database_url),
        "admin_token": SecretStr(ADMIN),
        "service_tokens": {"query": SecretStr(SERVICE_TOKEN)},
        "callbacks_allow_private": True,
        "callback_backoff_s": 0.1,
        "callback_poll_s": 0.1,
        "sweep_interval_s": 0.1,
    }
    return OrchestratorSettings(**(values | overrides))


@pytest.fixture
def launch(kafka_settings: KafkaSettings) -> Launcher:
    """``async with launch(db_url, executor=True, **settings) as orch``: a fresh orchestrator."""

    @contextlib.asynccontextmanager
    async def _launch(database_url: str, *, executor: bool = True, **overrides: Any) -> AsyncIterator[Orch]:
        settings = settings_for(kafka_settings, database_url, **overrides)
        async with contextlib.AsyncExitStack() as stack:
            if executor:
                await stack.enter_async_context(Executor(ExecutorSettings(kafka=kafka_settings, scripted_token_delay_ms=1)))
            url = await stack.enter_async_context(serve(create_app(settings)))
            http = await stack.enter_async_context(httpx.AsyncClient(base_url=url, timeout=30))
            yield Orch(url=url, http=http, settings=settings)

    return _launch
