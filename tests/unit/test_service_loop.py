"""The services' process setup (services/cli/serve.py): uvloop under every service, a frozen heap once started."""

from __future__ import annotations

import asyncio
import gc

import uvloop

from services.cli.serve import freeze_heap, run_service


def test_a_service_runs_on_uvloop() -> None:
    seen: list[asyncio.AbstractEventLoop] = []

    async def main() -> None:
        seen.append(asyncio.get_running_loop())

    run_service(main())
    assert len(seen) == 1 and isinstance(seen[0], uvloop.Loop)
    assert seen[0].is_closed()  # the runner closed it


def test_the_heap_alive_at_start_is_frozen_out_of_the_collector() -> None:
    gc.unfreeze()
    kept = [object() for _ in range(100)]
    try:
        freeze_heap()
        assert gc.get_freeze_count() >= len(kept)
    finally:
        gc.unfreeze()
