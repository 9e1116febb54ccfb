"""The collector and a long-lived service's start-up heap.

Start-up leaves hundreds of thousands of long-lived objects (modules, pydantic schemas, clients,
the status view); every full collection walks them all again, and with 1,000 WebSockets open those
walks were 100-400 ms pauses in the middle of a fan-out (shared/measured/websocket-fanout.md).
``gc.freeze`` moves everything alive at the end of start-up to a generation the collector never
scans; what is allocated later is collected as usual.
"""

from __future__ import annotations

import gc


def freeze_startup_heap() -> None:
    """Collect once (no garbage of start-up frozen with it), then freeze what is left."""
    gc.collect()
    gc.freeze()
