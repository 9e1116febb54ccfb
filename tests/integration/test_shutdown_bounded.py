"""A replica told to stop stops, also when one of its parts never does (a consumer's close that waits
on a group's coordination, a task that swallows its cancellation): the rest still close, in order."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from pydantic import SecretStr

from services.common import shutdown
from services.common.settings import KafkaSettings
from services.executor.app import Executor
from services.executor.control import ControlTail
from services.executor.settings import ExecutorSettings
from services.orchestrator.app import open_state
from services.orchestrator.projection import Projection
from services.orchestrator.settings import OrchestratorSettings


class _Release:
    event: asyncio.Event


async def _hang(self: object) -> None:
    """A stop that swallows its cancellation, until the test releases it (so the loop can close)."""
    while not _Release.event.is_set():
        try:
            await _Release.event.wait()
        except asyncio.CancelledError:
            continue


async def test_orchestrator_shutdown_ends_when_a_part_hangs(
    kafka_settings: KafkaSettings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = OrchestratorSettings(
        kafka=kafka_settings, api_keys={"key-a": "tenant-a"}, database_url=SecretStr(f"sqlite+aiosqlite:///{tmp_path / 's.db'}")
    )
    monkeypatch.setattr(shutdown, "STOP_TIMEOUT_S", 1.0)
    stop = Projection.stop
    monkeypatch.setattr(Projection, "stop", _hang)
    _Release.event = asyncio.Event()
    with caplog.at_level(logging.WARNING, logger="services.common.shutdown"):
        async with open_state(settings) as state:
            bridge, producer, store, status = state.bridge, state.producer, state.store, state.status
            started = time.monotonic()
        elapsed = time.monotonic() - started
    _Release.event.set()
    await stop(state.runtime.projection)  # the part left behind, now for real
    assert elapsed < 8.0, elapsed
    assert any("projection did not stop within 1 s" in r.getMessage() for r in caplog.records)
    # What comes after the stuck part in the stop order still stopped.
    assert bridge.reader is None
    assert status.reader is None or status.reader.state == "stopped"
    assert store._engine is None
    assert producer._closed


async def test_executor_shutdown_ends_when_its_control_tail_hangs(
    kafka_settings: KafkaSettings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(shutdown, "STOP_TIMEOUT_S", 1.0)
    stop = ControlTail.stop
    monkeypatch.setattr(ControlTail, "stop", _hang)
    _Release.event = asyncio.Event()
    executor = Executor(ExecutorSettings(kafka=kafka_settings))
    await executor.start()
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="services.common.shutdown"):
        await asyncio.wait_for(executor.stop(), 20)
    elapsed = time.monotonic() - started
    _Release.event.set()
    await stop(executor.control)
    assert elapsed < 8.0, elapsed
    assert any("control tail did not stop" in r.getMessage() for r in caplog.records)
    assert executor.producer._closed
