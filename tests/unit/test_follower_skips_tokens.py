"""The events follower skips token deltas by their header without making a coroutine for each (the
reader awaits only what a handler returns): nearly every record it reads is one."""

from __future__ import annotations

import inspect

from aiokafka import ConsumerRecord

from services.orchestrator.completions import EventsFollower


def _record(type_: str, value: bytes | None = b'{"execution_id":"e","attempt":1}') -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("events", 0, 1, 0, 0, b"e", value, None, 1, len(value or b""), [("type", type_.encode())])


def test_a_token_delta_is_skipped_and_a_wanted_event_is_applied() -> None:
    follower = object.__new__(EventsFollower)  # handle() reads only the record until it applies one
    assert follower.handle(_record("token.delta")) is None
    assert follower.handle(_record("execution.completed", None)) is None  # a tombstone: nothing to apply
    pending = follower.handle(_record("execution.completed"))
    assert inspect.iscoroutine(pending)
    pending.close()  # not run here: applying needs the lifecycle
