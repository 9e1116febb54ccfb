"""Schedules without a broker: slots (cron in a zone, intervals, what is due, catch-up after a gap),
the checks a timing passes, and the book's rule that the first claim of a slot in log order wins."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from zoneinfo import ZoneInfo

import pytest
from aiokafka import TopicPartition

from schemas.schedules import ExecutionTarget, ScheduleClaim, ScheduleRecord
from schemas.topics import Topics
from services.common.errors import InvalidInput
from services.common.settings import KafkaSettings
from services.common.sources import MemorySource
from services.orchestrator.schedules import slots
from services.orchestrator.schedules.book import Book, execution_id_for
from services.orchestrator.schedules.log import ScheduleLog

T0 = 1_780_000_000_000  # ms, a whole second
TARGET = ExecutionTarget(input="hello")


def rec(**changes: object) -> ScheduleRecord:
    base: dict[str, object] = dict(
        schedule_id="sch_1", tenant_id="t", revision=0, target=TARGET, interval_s=10, created_ms=T0, updated_ms=T0, since_ms=T0
    )
    return ScheduleRecord.model_validate(base | changes)


def claim(slot_ms: int, replica: str = "r1", **changes: object) -> ScheduleClaim:
    base: dict[str, object] = dict(schedule_id="sch_1", tenant_id="t", revision=0, slot_ms=slot_ms, replica=replica, claimed_ms=slot_ms)
    return ScheduleClaim.model_validate(base | changes)


# -- checks ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("cron", "interval_s", "timezone", "reason"),
    [
        ("0 0 30 2 *", None, "UTC", "never fires"),
        ("61 * * * *", None, "UTC", "not valid"),
        ("* * * * * *", None, "UTC", "five fields"),
        ("@reboot", None, "UTC", "five fields"),
        (None, 5, "UTC", "at least 60"),
        ("*/5 * * * *", None, "Mars/Olympus", "unknown time zone"),
        ("*/5 * * * *", None, "../../etc/passwd", "unknown time zone"),
        ("* * * * *", None, "UTC", None),  # every minute: at the 60 s floor
        (None, 60, "Europe/Paris", None),
        ("@hourly", None, "America/New_York", None),
    ],
)
def test_a_timing_that_never_fires_fires_too_often_or_names_no_zone_is_refused_with_the_reason(
    cron: str | None, interval_s: int | None, timezone: str, reason: str | None
) -> None:
    if reason is None:
        slots.check_timing(cron=cron, interval_s=interval_s, timezone=timezone, floor_s=60, now_ms=T0)
        return
    with pytest.raises(InvalidInput) as caught:
        slots.check_timing(cron=cron, interval_s=interval_s, timezone=timezone, floor_s=60, now_ms=T0)
    assert reason in str(caught.value)


def test_a_cron_whose_shortest_gap_is_under_the_floor_is_refused() -> None:
    with pytest.raises(InvalidInput, match="more often than every 300"):
        slots.check_timing(cron="0,1 * * * *", interval_s=None, timezone="UTC", floor_s=300, now_ms=T0)


# -- slots ----------------------------------------------------------------------------------
def test_interval_slots_count_from_creation() -> None:
    r = rec(interval_s=10)
    assert slots.next_after(r, T0) == T0 + 10_000
    assert slots.next_after(r, T0 + 10_000) == T0 + 20_000
    assert slots.next_after(r, T0 + 10_001) == T0 + 20_000
    assert slots.latest_at(r, T0 + 25_000) == T0 + 20_000


def test_cron_slots_are_in_the_schedules_time_zone_across_a_dst_change() -> None:
    paris = ZoneInfo("Europe/Paris")
    start = round(datetime(2026, 3, 28, 12, 0, tzinfo=paris).timestamp() * 1000)
    r = rec(interval_s=None, cron="30 9 * * *", timezone="Europe/Paris", created_ms=start, since_ms=start)
    first = slots.next_after(r, start)
    assert first is not None
    second = slots.next_after(r, first)
    assert second is not None
    assert datetime.fromtimestamp(first / 1000, paris).isoformat() == "2026-03-29T09:30:00+02:00"  # the day DST starts
    assert datetime.fromtimestamp(second / 1000, paris).isoformat() == "2026-03-30T09:30:00+02:00"
    assert datetime.fromtimestamp(first / 1000, UTC).hour == 7


def test_the_next_slot_is_due_once_its_time_has_come_and_not_while_paused() -> None:
    r = rec()
    assert slots.due(r, None, T0 + 9_999, grace_ms=60_000) is None
    assert slots.due(r, None, T0 + 10_000, grace_ms=60_000) == T0 + 10_000
    assert slots.due(r, T0 + 10_000, T0 + 15_000, grace_ms=60_000) is None  # claimed already
    assert slots.due(r.model_copy(update={"paused": True}), None, T0 + 10_000, grace_ms=60_000) is None
    late = r.model_copy(update={"since_ms": T0 + 30_000})  # resumed at +30 s: nothing from before fires
    assert slots.due(late, None, T0 + 35_000, grace_ms=60_000) is None
    assert slots.due(late, None, T0 + 40_000, grace_ms=60_000) == T0 + 40_000


def test_a_late_tick_within_the_grace_still_fires_every_slot_in_turn() -> None:
    r = rec(catch_up="latest")
    assert slots.due(r, T0 + 10_000, T0 + 45_000, grace_ms=60_000) == T0 + 20_000


@pytest.mark.parametrize(("policy", "expected"), [("latest", T0 + 200_000), ("all", T0 + 10_000), ("none", None)])
def test_slots_missed_while_no_replica_ran_follow_catch_up(policy: str, expected: int | None) -> None:
    r = rec(catch_up=policy)
    # Down from the start to +206 s: twenty slots older than a 5 s grace.
    assert slots.due(r, None, T0 + 206_000, grace_ms=5_000) == expected


def test_catch_up_none_still_fires_a_slot_within_the_grace() -> None:
    r = rec(catch_up="none")
    assert slots.due(r, None, T0 + 201_000, grace_ms=5_000) == T0 + 200_000


# -- the book: who wins a slot --------------------------------------------------------------
def test_the_first_claim_of_a_slot_wins_and_a_second_or_an_older_one_loses() -> None:
    book = Book()
    book.define(rec())
    assert book.claim(claim(T0 + 10_000, "a")) is True
    assert book.claim(claim(T0 + 10_000, "b")) is False  # the other replica's bid for the same slot
    assert book.claim(claim(T0 + 20_000, "b")) is True
    assert book.claim(claim(T0 + 10_000, "c")) is False  # a lagging replica's bid for a slot already past
    entry = book.entries["sch_1"]
    assert entry.fired_ms == T0 + 20_000
    assert entry.last_execution_id == execution_id_for("t", "sch_1", T0 + 20_000)


def test_a_claim_after_a_pause_or_of_another_tenant_does_not_fire() -> None:
    book = Book()
    book.define(rec())
    assert book.claim(claim(T0 + 10_000, tenant_id="other")) is False
    book.define(rec(revision=1, paused=True))
    assert book.claim(claim(T0 + 10_000)) is False
    assert book.entries["sch_1"].fired_ms is None


def test_claims_read_before_their_definition_still_set_the_floor() -> None:
    # Compaction keeps only the latest definition, which may come after the claims of older revisions.
    book = Book()
    assert book.claim(claim(T0 + 10_000)) is False
    assert book.claim(claim(T0 + 20_000)) is False
    book.define(rec(revision=3, name="renamed"))
    assert book.claim(claim(T0 + 20_000, "b")) is False  # fired before the restart: not again
    assert book.claim(claim(T0 + 30_000, "b")) is True
    assert book.entries["sch_1"].claim_slots == {T0 + 10_000, T0 + 20_000, T0 + 30_000}


def test_an_older_revision_read_after_a_local_apply_is_ignored() -> None:
    book = Book()
    book.define(rec(revision=2, paused=True))
    book.define(rec(revision=1))
    assert book.entries["sch_1"].record.paused is True


def test_execution_ids_differ_per_slot_schedule_and_tenant() -> None:
    ids = {execution_id_for(t, s, slot) for t in ("a", "b") for s in ("s1", "s2") for slot in (1, 2)}
    assert len(ids) == 8
    assert execution_id_for("a", "s1", 1) == execution_id_for("a", "s1", 1)


def test_a_slot_whose_winner_died_is_taken_over_by_the_first_bid_of_the_next_round_only() -> None:
    book = Book()
    book.define(rec())
    assert book.claim(claim(T0 + 10_000, "ghost")) is True
    assert book.claim(claim(T0 + 10_000, "a", round=2)) is False  # not the next round
    assert book.claim(claim(T0 + 20_000, "a", round=1)) is False  # not the slot last won
    assert book.claim(claim(T0 + 10_000, "a", round=1)) is True
    assert book.claim(claim(T0 + 10_000, "b", round=1)) is False  # the round is taken
    entry = book.entries["sch_1"]
    assert entry.winner is not None and entry.winner.replica == "a" and entry.fired_ms == T0 + 10_000
    assert book.claim(claim(T0 + 20_000, "b")) is True  # the next slot as usual


# -- the log: two replicas over one in-memory topic -----------------------------------------
class Loopback:
    """A producer that appends to an in-memory topic, waking every replica's consumer of it."""

    def __init__(self, *sources: MemorySource) -> None:
        self.sources = sources
        self.dlq: list[tuple[str, bytes | None]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        *,
        partition: int = 0,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        if topic.endswith("dlq"):
            self.dlq.append((dict(headers or []).get("dlq.reason", b"").decode(), key))
            return
        self.sources[0].append(topic, value, key=key, partition=partition, headers=headers or ())
        for other in self.sources[1:]:
            other._arrived.set()  # the same log: tell the other consumers it grew


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not condition():
            await asyncio.sleep(0.01)


async def test_two_replicas_agree_on_every_slots_winner_and_park_what_is_no_bid() -> None:
    topics = Topics("x.")
    settings = KafkaSettings(topic_prefix="x.")
    first = MemorySource({TopicPartition(topics.schedules, 0): []})
    second = first.reopened()
    producer = Loopback(first, second)
    now = [(T0 + 10_000) / 1000]
    wins: dict[str, list[int]] = {"a": [], "b": [], "c": []}

    def on_win(c: ScheduleClaim) -> None:
        wins[c.replica].append(c.slot_ms)

    logs = [ScheduleLog(settings, producer=producer, replica=name, on_win=on_win, name=name, clock=lambda: now[0]) for name in ("a", "b")]
    tp = TopicPartition(topics.schedules, 0)
    for log, source in zip(logs, (first, second), strict=True):
        log.start_on(source, {tp: 0}, {tp: 0})
    try:
        await logs[0].define(rec())
        await _until(lambda: "sch_1" in logs[1].book.entries)
        # Both bid for the same slot; then b for the next, a (lagging) for the first again.
        for log in logs:
            await log.claim(claim(T0 + 10_000, log.replica))
        now[0] = (T0 + 20_000) / 1000
        await logs[1].claim(claim(T0 + 20_000, "b"))
        await logs[0].claim(claim(T0 + 10_000, "a"))
        await logs[0].claim(claim(T0 + 15_000, "a"))  # no slot of an interval of 10 s
        await logs[0].claim(claim(T0 + 10_000_000, "a"))  # a slot that has not come
        first.append(topics.schedules, b"\xff", key=b"sch_1:claim:1")
        await _until(lambda: len(producer.dlq) == 4)  # each replica's reader parks its own copy
        await _until(lambda: all(log.book.entries["sch_1"].claimed_ms == T0 + 20_000 for log in logs))
        assert wins == {"a": [T0 + 10_000], "b": [T0 + 20_000], "c": []}  # the first bid of each slot, once
        assert all(log.book.entries["sch_1"].claim_slots == {T0 + 10_000, T0 + 20_000} for log in logs)
        reasons = sorted(reason.split(":")[1].strip()[:20] for reason, _ in producer.dlq)
        assert reasons == ["a claim of slot 1780"] * 2 + ["invalid record under"] * 2
        # The winner of the last slot tombstones the older claim keys (compaction then drops them).
        await logs[1].forget_claims("sch_1", "t", T0 + 20_000)
        await _until(lambda: all(log.book.entries["sch_1"].claim_slots == {T0 + 20_000} for log in logs))
        # A restart reads it all back: the floor is the last slot, nothing is won again.
        third = first.reopened()
        again = ScheduleLog(
            settings, producer=producer, replica="c", on_win=lambda c: wins.setdefault("c", []).append(1), name="c", clock=lambda: now[0]
        )
        again.start_on(third, {tp: 0}, {tp: len(first.log[tp])})
        try:
            await again.caught_up.wait()
            assert again.book.entries["sch_1"].claimed_ms == T0 + 20_000 and wins["c"] == []
            assert again.book.entries["sch_1"].claim_slots == {T0 + 20_000}
        finally:
            await again.stop()
    finally:
        for log in logs:
            await log.stop()


def test_a_slot_its_winner_settled_is_not_taken_over_and_stays_a_floor_after_compaction() -> None:
    book = Book()
    book.define(rec())
    assert book.claim(claim(T0 + 10_000, "a")) is True
    assert book.claim(claim(T0 + 10_000, "a", settled=True)) is False
    assert book.entries["sch_1"].settled_ms == T0 + 10_000
    # After compaction only the settled record of the slot may be left: it still sets the floor.
    compacted = Book()
    compacted.define(rec())
    assert compacted.claim(claim(T0 + 10_000, "a", settled=True)) is False
    assert compacted.claim(claim(T0 + 10_000, "b")) is False
    assert compacted.entries["sch_1"].claimed_ms == T0 + 10_000
