"""What start-up leaves is frozen out of the collector's reach (services/common/heap.py): with 1,000
WebSockets open, full collections walking it were 100-400 ms pauses in a fan-out."""

from __future__ import annotations

import gc
from collections.abc import Callable

import pytest
from starlette.applications import Starlette

from services.orchestrator.app import create_app
from services.orchestrator.bridgeapp import create_bridge_app
from services.orchestrator.settings import OrchestratorSettings
from tests.e2e.conftest import Stack
from tests.support import serve

pytestmark = pytest.mark.kafka


@pytest.mark.parametrize("factory", [create_app, create_bridge_app])
async def test_the_start_up_heap_is_frozen_once_the_app_has_started(
    stack: Stack, factory: Callable[[OrchestratorSettings], Starlette]
) -> None:
    gc.unfreeze()
    assert gc.get_freeze_count() == 0
    async with serve(factory(stack.orchestrator_settings)):
        assert gc.get_freeze_count() > 10_000
    gc.unfreeze()
