"""The collector and a long-lived service's start-up heap.

Start-up leaves hundreds of thousands of long-lived objects (modules, pydantic schemas, clients,
the status view); every full collection walks them all again, and with 1,000 WebSockets open those
walks were 100-400 ms pauses in the middle of a fan-out (shared/measured/websocket-fanout.md).
``gc.freeze`` moves everything alive at the end of start-up to a generation the collector never
scans; what is allocated later is collected as usual.
"""

from __future__ import annotations

import gc
import time
from typing import Any

from services.common.observability.metrics import GC_PAUSES

_started: list[float] = [0.0]
_pauses = [GC_PAUSES.labels(generation=str(g)) for g in range(3)]


def _time_collection(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started[0] = time.perf_counter()
    else:
        _pauses[info["generation"]].observe(time.perf_counter() - _started[0])


def watch_collections() -> None:
    """Time every collection into ``agentstream_gc_pause_seconds`` (idempotent)."""
    if _time_collection not in gc.callbacks:
        gc.callbacks.append(_time_collection)


# The young generation's threshold (CPython's default is 700 allocations). Almost nothing a request
# allocates is cyclic garbage (refcounting frees it), but at 700 every young collection finds the
# in-flight requests' objects still alive, walks them and promotes them, and the promoted ones make
# the older generations' collections frequent and long: at 1,400 POSTs/s the default spent 20 % of
# the orchestrator's time collecting (docs/performance.md). At 20,000 most of them die first.
YOUNG_THRESHOLD = 20_000


def freeze_startup_heap() -> None:
    """Collect once (no garbage of start-up frozen with it), then freeze what is left; time the
    collections from here on, with a young threshold a server's allocation rate suits."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
    watch_collections()
