from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from services.orchestrator.store import Store
from tests.databases import BACKENDS, fresh_database


@pytest.fixture(params=BACKENDS)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Store]:
    async with fresh_database(request.param, tmp_path) as url, Store(url) as store:
        yield store
