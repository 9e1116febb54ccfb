"""The SDK clients a test opened are closed on its own loop (left to the collector, they would close
on a loop already gone, and log an error in a later test)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.e2e.openai_door.test_chat_completions import OPENED


@pytest.fixture(autouse=True)
async def _close_sdk_clients() -> AsyncIterator[None]:
    yield
    while OPENED:
        sync, client = OPENED.pop()
        sync.close()
        await client.close()
