"""Fencing rules, in memory: once a newer attempt has started, nothing an older attempt writes
afterwards is delivered to a client, counted as the execution's end, or kept by the status view.

The records are what a paused executor produces when it wakes up: attempt 1 keeps streaming and
writes its terminal event after attempt 2 (another member) has started.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiokafka import ConsumerRecord

from schemas.events import Envelope, ExecutionCompleted, ExecutionStarted, TokenDelta
from schemas.status import ExecutionStatus
from services.common.kafka import encode, event_headers
from services.common.settings import KafkaSettings
from services.common.statusview import StatusView
from services.orchestrator.bridge import Bridge, Subscription
from services.orchestrator.sinks import Sink

KAFKA = KafkaSettings(bootstrap="127.0.0.1:1", topic_prefix="unit.")
EVENTS = KAFKA.topics.events


class ListSink(Sink):
    """A sink that keeps what it is given (the bridge's side of a client)."""

    def __init__(self) -> None:
        super().__init__(max_bytes=1 << 30)
        self.events: list[tuple[int, str, dict[str, Any]]] = []
        self.controls: list[dict[str, Any]] = []

    def push_event(self, execution_id_json: bytes, offset: int, type_: str, value: bytes) -> None:
        self.events.append((offset, type_, orjson.loads(value)))

    def push_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)


def record(offset: int, event: Envelope) -> ConsumerRecord[bytes, bytes]:
    value = encode(event)
    type_ = str(type(event).model_fields["type"].default)
    headers = event_headers(type_=type_, tenant_id=event.tenant_id, attempt=event.attempt)
    return ConsumerRecord(EVENTS, 0, offset, 0, 0, event.execution_id.encode(), value, None, 1, len(value), headers)


def zombie_log(execution_id: str = "e1") -> list[ConsumerRecord[bytes, bytes]]:
    """Attempt 1 starts; attempt 2 starts elsewhere; attempt 1 wakes, streams and ends; attempt 2 ends."""
    ids: dict[str, Any] = {"tenant_id": "t", "execution_id": execution_id}
    return [
        record(0, ExecutionStarted(**ids, attempt=1, seq=1)),
        record(1, TokenDelta(**ids, attempt=1, seq=2, text="old ")),
        record(2, ExecutionStarted(**ids, attempt=2, seq=1)),
        record(3, TokenDelta(**ids, attempt=1, seq=3, text="zombie ")),
        record(4, TokenDelta(**ids, attempt=2, seq=2, text="new ")),
        record(5, ExecutionCompleted(**ids, attempt=1, seq=4, output="old zombie")),
        record(6, ExecutionCompleted(**ids, attempt=2, seq=3, output="new")),
    ]


def delivered(sink: ListSink) -> list[tuple[int, int]]:
    return [(offset, event["attempt"]) for offset, _, event in sink.events]


# -- the status snapshot ----------------------------------------------------------------------


def test_an_older_attempts_end_does_not_supersede_a_newer_attempt() -> None:
    base = ExecutionStatus(execution_id="e1", tenant_id="t")
    running_2 = base.model_copy(update={"state": "running", "attempt": 2})
    completed_1 = base.model_copy(update={"state": "completed", "attempt": 1, "output": "zombie"})
    completed_2 = base.model_copy(update={"state": "completed", "attempt": 2, "output": "new"})
    assert not completed_1.supersedes(running_2)
    assert completed_2.supersedes(running_2)
    assert not running_2.supersedes(completed_1)  # an end that came first is final

    view = StatusView(KAFKA)
    view.apply(running_2)
    view.apply(completed_1)
    current = view.get("e1")
    assert current is not None and current.state == "running" and current.attempt == 2
    view.apply(completed_2)
    current = view.get("e1")
    assert current is not None and current.state == "completed" and current.output == "new"


def test_within_an_attempt_and_across_attempts_the_view_never_goes_back() -> None:
    base = ExecutionStatus(execution_id="e1", tenant_id="t")
    queued = base
    running_1 = base.model_copy(update={"state": "running", "attempt": 1})
    running_2 = base.model_copy(update={"state": "running", "attempt": 2})
    timed_out_2 = running_2.model_copy(update={"state": "timed_out"})  # the sweeper copies the newest snapshot it has
    assert running_1.supersedes(queued) and not queued.supersedes(running_1)
    assert running_2.supersedes(running_1) and not running_1.supersedes(running_2)
    assert timed_out_2.supersedes(running_2) and not running_2.supersedes(timed_out_2)


# -- the bridge's subscription ----------------------------------------------------------------


def live_subscription(*, cursor: int | None = None, attempt: int = 0) -> tuple[Subscription, ListSink]:
    sink = ListSink()
    sub = Subscription(sink, "e1", cursor=cursor, attempt=attempt)
    sub.catching_up = False
    return sub, sink


def test_a_live_client_gets_nothing_of_attempt_1_after_attempt_2_started() -> None:
    sub, sink = live_subscription()
    for r in zombie_log():
        sub.offer(r)
    assert delivered(sink) == [(0, 1), (1, 1), (2, 2), (4, 2), (6, 2)]
    assert sub.done and not sink.controls


def test_a_client_resuming_past_the_new_start_gets_no_older_attempt() -> None:
    """Resumed after cursor 3 (past attempt 2's start at 2): the status view says attempt 2 runs from there."""
    running_2 = ExecutionStatus(execution_id="e1", tenant_id="t", state="running", attempt=2, events_partition=0, events_start_offset=2)
    assert Subscription.resumed_attempt(running_2, 3) == 2
    assert Subscription.resumed_attempt(running_2, 1) == 0  # before that start: the records tell, as they told a live client
    assert Subscription.resumed_attempt(running_2, None) == 0
    sub, sink = live_subscription(cursor=3, attempt=Subscription.resumed_attempt(running_2, 3))
    for r in zombie_log()[4:]:
        sub.deliver(r)
    assert delivered(sink) == [(4, 2), (6, 2)]
    assert sink.events[-1][2]["output"] == "new"


def test_a_client_resuming_inside_the_events_a_resumed_attempt_reuses_still_gets_them() -> None:
    """Attempt 2 resumed from attempt 1's events (they start at 0, its own start is at 2): a client at
    cursor 1 has not seen attempt 2 start, so attempt 1's records after its cursor still reach it."""
    resumed_2 = ExecutionStatus(
        execution_id="e1", tenant_id="t", state="running", attempt=2, events_partition=0, events_start_offset=0, attempt_start_offset=2
    )
    assert Subscription.resumed_attempt(resumed_2, 1) == 0
    assert Subscription.resumed_attempt(resumed_2, 2) == 2
    ended = ExecutionStatus(execution_id="e1", tenant_id="t", state="completed", attempt=2)
    assert ended.merged_over(resumed_2).attempt_start_offset == 2  # the terminal snapshot keeps it, as it keeps the start


def test_catch_up_from_memory_learns_the_attempt_from_records_before_the_cursor() -> None:
    """The bridge's memory replays every record of the execution; those up to the cursor are not sent,
    but the start of attempt 2 among them still fences what follows."""
    sub, sink = live_subscription(cursor=3)
    for r in zombie_log():
        sub.deliver(r)
    assert delivered(sink) == [(4, 2), (6, 2)]


def test_an_older_attempts_end_before_the_cursor_does_not_end_the_subscription() -> None:
    sub, sink = live_subscription(cursor=5)
    for r in zombie_log()[:6]:
        sub.deliver(r)
    assert not sub.done and not sink.controls  # attempt 2 still runs: the client waits for its end
    sub.deliver(zombie_log()[6])
    assert delivered(sink) == [(6, 2)] and sub.done


async def test_the_tail_does_not_record_an_older_attempts_end_as_the_status() -> None:
    """The status view still says attempt 1 runs (it lags the events tail); the tail saw attempt 2 start."""
    view = StatusView(KAFKA)
    view.apply(ExecutionStatus(execution_id="e1", tenant_id="t", state="running", attempt=1))
    bridge = Bridge(KAFKA, view)
    log = zombie_log()
    for record in log[:6]:
        bridge._handle(record)
    current = view.get("e1")
    assert current is not None and not current.terminal
    for record in log[6:]:
        bridge._handle(record)
    current = view.get("e1")
    assert current is not None and current.state == "completed" and current.attempt == 2 and current.output == "new"
