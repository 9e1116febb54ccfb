"""The bridge's memory of recent records (``RecentRecords``), with records built by hand: it stays
within its byte bound, and it only claims to cover a range it holds whole, so a catch-up that it
cannot serve goes to Kafka instead of serving a gap."""

from __future__ import annotations

import random

from aiokafka import ConsumerRecord, TopicPartition

from services.orchestrator.bridge import RecentRecords, Record

TP = TopicPartition("events", 0)


def record(execution_id: str, offset: int, *, type_: str = "token.delta", size: int = 100, partition: int = 0) -> Record:
    value = b'{"t":"' + b"x" * max(0, size - 8) + b'"}'
    headers = [("type", type_.encode()), ("attempt", b"1")]
    return ConsumerRecord("events", partition, offset, 0, 0, execution_id.encode(), value, None, len(execution_id), len(value), headers)


def offsets(records: list[Record] | None) -> list[int] | None:
    return None if records is None else [r.offset for r in records]


def test_an_execution_held_whole_covers_any_start_from_its_first_record() -> None:
    recent = RecentRecords(ttl_s=60, max_bytes=1 << 20)
    for offset in range(10, 20):
        recent.add("a", record("a", offset), terminal=False)
    assert offsets(recent.covering("a", TP, 10)) == list(range(10, 20))
    assert offsets(recent.covering("a", TP, 15)) == list(range(10, 20))  # the subscription skips what is before its cursor
    assert recent.covering("a", TP, 9) is None  # the tail started after offset 9: memory cannot say what was there
    assert recent.covering("a", TopicPartition("events", 1), 10) is None
    assert recent.covering("b", TP, 0) is None


def test_a_running_execution_dropped_by_the_byte_bound_is_never_served_as_complete() -> None:
    """The finding: a running execution dropped whole came back as a fresh list of later records only,
    which catch-up served as if it were everything since the execution's first event."""
    recent = RecentRecords(ttl_s=60, max_bytes=4000)
    for offset in range(0, 5):
        recent.add("early", record("early", offset, size=400), terminal=False)
    for offset in range(5, 10):
        recent.add("other", record("other", offset, size=400), terminal=False)  # over the bound: "early" goes
    assert recent.covering("early", TP, 0) is None
    recent.add("early", record("early", 10, size=400), terminal=False)
    recent.add("early", record("early", 11, size=400), terminal=True)
    assert recent.covering("early", TP, 0) is None  # from its first event: records 0-4 are only in Kafka
    assert offsets(recent.covering("early", TP, 10)) == [10, 11]  # a cursor past the gap is served from memory
    assert recent.bytes <= 4000


def test_ended_executions_go_first_and_the_bound_holds_after_every_add() -> None:
    recent = RecentRecords(ttl_s=60, max_bytes=2000)  # each record ~600 bytes held: the fourth is over
    recent.add("running", record("running", 0, size=500), terminal=False)
    recent.add("ended", record("ended", 1, size=500), terminal=True)
    recent.add("running", record("running", 2, size=500), terminal=False)
    recent.add("new", record("new", 3, size=500), terminal=False)
    assert recent.covering("ended", TP, 1) is None  # over the bound: the ended one went, though the running one is older
    assert offsets(recent.covering("running", TP, 0)) == [0, 2]
    assert recent.bytes <= 2000 and recent.dropped == 1


def test_memory_holds_compact_records_sharing_their_headers_and_values() -> None:
    """What memory keeps of a record is its offset, the tail's own value bytes and one shared tuple
    of the two headers delivery reads: not a ConsumerRecord with its own headers (~39 allocations)."""
    recent = RecentRecords(ttl_s=60, max_bytes=1 << 20)
    originals = [record("a", offset) for offset in range(3)]
    for r in originals:
        recent.add("a", r, terminal=False)
    held = recent.covering("a", TP, 0)
    assert held is not None and [h.offset for h in held] == [0, 1, 2]
    assert all(h.value is r.value for h, r in zip(held, originals, strict=True))
    assert held[0].headers == (("type", b"token.delta"), ("attempt", b"1"))
    assert held[0].headers is held[1].headers is held[2].headers
    assert not hasattr(held[0], "__dict__")


def test_ttl_drops_ended_executions_only() -> None:
    recent = RecentRecords(ttl_s=0, max_bytes=1 << 20)
    recent.add("ended", record("ended", 0, type_="execution.completed"), terminal=True)
    recent.add("running", record("running", 1), terminal=False)
    before = recent.bytes
    recent.evict()
    assert recent.covering("ended", TP, 0) is None
    assert offsets(recent.covering("running", TP, 1)) == [1]
    assert 0 < recent.bytes < before


def test_random_interleavings_never_cover_a_gap() -> None:
    rng = random.Random(12)
    for _ in range(50):
        cap = rng.randint(500, 6000)
        recent = RecentRecords(ttl_s=60, max_bytes=cap)
        seen: dict[str, list[int]] = {}
        for offset in range(400):
            execution_id = f"e{rng.randint(0, 7)}"
            recent.add(execution_id, record(execution_id, offset, size=rng.randint(10, 700)), terminal=rng.random() < 0.05)
            seen.setdefault(execution_id, []).append(offset)
            assert recent.bytes <= cap
            probe = f"e{rng.randint(0, 7)}"
            if probe not in seen:
                continue
            start = rng.choice(seen[probe])
            held = offsets(recent.covering(probe, TP, start))
            if held is not None:
                wanted = [o for o in seen[probe] if o >= start]
                assert [o for o in held if o >= start] == wanted, (probe, start, held, wanted)


def test_forgetting_a_partition_drops_what_is_held_there_only() -> None:
    recent = RecentRecords(ttl_s=60, max_bytes=1 << 20)
    recent.add("p0", record("p0", 0), terminal=False)
    recent.add("p1", record("p1", 0, partition=1), terminal=False)
    recent.forget([TP])  # e.g. the tail was restarted at the end of partition 0
    assert recent.covering("p0", TP, 0) is None
    assert offsets(recent.covering("p1", TopicPartition("events", 1), 0)) == [0]
