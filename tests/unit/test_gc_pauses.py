"""The collector's pauses are measured by generation (``agentstream_gc_pause_seconds``)."""

from __future__ import annotations

import gc

from services.common.heap import watch_collections
from services.common.observability.metrics import COMMON


def _count(generation: str) -> float:
    value = COMMON.get_sample_value("agentstream_gc_pause_seconds_count", {"generation": generation})
    return value or 0.0


def test_each_collection_is_timed_once_by_its_generation() -> None:
    watch_collections()
    watch_collections()  # idempotent: one callback
    before_full, before_young = _count("2"), _count("0")
    gc.collect(2)
    gc.collect(0)
    assert _count("2") == before_full + 1
    assert _count("0") >= before_young + 1
    assert (COMMON.get_sample_value("agentstream_gc_pause_seconds_sum", {"generation": "2"}) or 0.0) > 0


def test_a_service_collects_its_young_generation_at_a_server_threshold() -> None:
    from services.common import heap

    saved = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        heap.freeze_startup_heap()
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, 10, 10)
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*saved)
