"""The one reader, on the in-memory source: totality, retries, restarts, bounded DLQ copies."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from aiokafka import TopicPartition
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.topics import Topics
from services.common import dlq
from services.common.errors import AgentstreamError, PoisonRecord
from services.common.kafka import header
from services.common.observability import metrics
from services.common.reader import Reader, Restart, Retry, readers_health
from services.common.sources import MemoryProducer, MemorySource, Record

TOPICS = Topics(prefix="unit.")
TOPIC = "unit.events"


class StoreDown(AgentstreamError):
    retriable = True


def _name() -> str:
    return f"reader-{uuid.uuid4().hex[:6]}"


@pytest.fixture
async def running() -> AsyncIterator[Callable[..., Reader]]:
    """``running(source, handle, **options)``: a started reader, stopped after the test."""
    readers: list[Reader] = []

    def make(
        source: MemorySource, handle: Callable[[Record], object], *, producer: MemoryProducer | None = None, **options: object
    ) -> Reader:
        options.setdefault("retry", Retry(attempts=3, first_s=0.001, max_s=0.002))
        options.setdefault("restart", Restart(first_s=0.05, max_s=0.1))
        reader = Reader(_name(), source, handle, topics=TOPICS, dlq=producer, fetch_timeout_ms=20, **options)  # type: ignore[arg-type]
        reader.start()
        readers.append(reader)
        return reader

    yield make
    for reader in readers:
        await reader.stop()


async def _until(predicate: Callable[[], bool], timeout: float = 3.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


def _reasons(producer: MemoryProducer) -> list[str]:
    return [header(headers, "dlq.reason") or "" for _, _, _, headers in producer.sent]


async def test_a_record_whose_handler_raises_is_parked_and_the_later_ones_are_handled_in_order(
    running: Callable[..., Reader],
) -> None:
    source, producer = MemorySource(), MemoryProducer()
    handled: list[bytes] = []

    def handle(record: Record) -> None:
        value = record.value or b""
        if value == b"overflow":
            raise OverflowError("Python int too large to convert to SQLite INTEGER")
        if value == b"abc":
            int(value)  # ValueError, as `int("abc")` deep in a handler
        if value == b"poison":
            raise PoisonRecord("not an event")
        handled.append(value)

    for value in (b"1", b"overflow", b"2", b"abc", b"3", b"poison", b"4"):
        source.append(TOPIC, value, key=b"k")
    reader = running(source, handle, producer=producer)
    await _until(lambda: len(handled) == 4)
    assert handled == [b"1", b"2", b"3", b"4"]
    assert [value for _, _, value, _ in producer.sent] == [b"overflow", b"abc", b"poison"]
    reasons = _reasons(producer)
    assert reasons[0].startswith("OverflowError: Python int too large")
    assert reasons[1].startswith("ValueError: invalid literal for int()")
    assert reasons[2] == "not an event"
    _, _, _, headers = producer.sent[0]
    assert header(headers, "dlq.consumer") == reader.name
    assert (header(headers, "dlq.topic"), header(headers, "dlq.partition"), header(headers, "dlq.offset")) == (TOPIC, "0", "1")
    assert reader.parked == 3 and reader.restarts == 0 and reader.running


async def test_a_transient_error_is_retried_then_parked_at_the_cap(running: Callable[..., Reader]) -> None:
    source, producer = MemorySource(), MemoryProducer()
    tries: dict[bytes, int] = {}
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        value = record.value or b""
        tries[value] = tries.get(value, 0) + 1
        if value == b"down":
            raise StoreDown("the state store is locked")
        if value == b"blip" and tries[value] == 1:
            raise ConnectionError("connection reset")
        handled.append(value)

    for value in (b"down", b"blip", b"after"):
        source.append(TOPIC, value)
    running(source, handle, producer=producer, retry=Retry(attempts=4, first_s=0.001, max_s=0.002))
    await _until(lambda: handled == [b"blip", b"after"])
    assert tries == {b"down": 4, b"blip": 2, b"after": 1}
    assert _reasons(producer) == ["StoreDown: the state store is locked (still failing after 4 tries)"]


async def test_a_reader_whose_loop_dies_is_restarted_counted_and_loses_nothing(running: Callable[..., Reader]) -> None:
    source = MemorySource()
    handled: list[bytes] = []
    calls = 0

    async def after_batch(batches: object) -> None:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("a bug after the first batch")

    source.append(TOPIC, b"1")
    reader = running(source, lambda r: handled.append(r.value or b""), after_batch=after_batch)
    before = metrics.sample(metrics.COMMON, "agentstream_reader_restarts_total", {"reader": reader.name})
    await _until(lambda: reader.restarts == 1)
    assert reader.state == "restarting" and "RuntimeError: a bug after the first batch" in (reader.last_error or "")
    ok, states = readers_health([reader])
    assert not ok and states == {reader.name: "restarting"}
    assert metrics.sample(metrics.COMMON, "agentstream_reader_up", {"reader": reader.name}) == 0
    await _until(lambda: reader.running)
    source.append(TOPIC, b"2")
    await _until(lambda: handled == [b"1", b"2"])  # nothing handled twice, nothing skipped

    # Fetches that die (not Kafka errors: a client in a bad state) restart it too, as does a cancelled loop.
    source.fail_fetch(AssertionError("fetcher in a bad state"))
    await _until(lambda: reader.restarts == 2 and reader.running)
    assert reader.task is not None
    reader.task.cancel()
    await _until(lambda: reader.restarts == 3 and reader.running)
    source.append(TOPIC, b"3")
    await _until(lambda: handled == [b"1", b"2", b"3"])
    after = metrics.sample(metrics.COMMON, "agentstream_reader_restarts_total", {"reader": reader.name})
    assert after - before == 3
    assert metrics.sample(metrics.COMMON, "agentstream_reader_up", {"reader": reader.name}) == 1
    assert readers_health([reader]) == (True, {reader.name: "running"})


async def test_records_fetched_but_not_handled_when_the_loop_died_are_read_again(running: Callable[..., Reader]) -> None:
    source = MemorySource()
    handled: list[bytes] = []
    entered = 0

    class Crashing:
        """A batch context (tracing spans) that dies on entering the first batch, before any record."""

        def __enter__(self) -> None:
            nonlocal entered
            entered += 1
            if entered == 1:
                raise RuntimeError("span start failed")

        def __exit__(self, *exc: object) -> None:
            pass

    def handle(record: Record) -> None:
        handled.append(record.value or b"")

    for value in (b"a", b"b", b"c"):
        source.append(TOPIC, value)
    reader = running(source, handle, max_records=2, around_batch=lambda records: Crashing())
    await _until(lambda: handled == [b"a", b"b", b"c"])
    assert reader.restarts == 1


async def test_a_batch_whose_group_commit_dies_is_read_again_and_committed_only_once_applied(
    running: Callable[..., Reader],
) -> None:
    """A handler that only collects (a projection) applies the batch in ``before_commit``: when that
    dies, the batch is not committed, and the restarted loop reads it again from its first record."""
    source = MemorySource()
    for value in (b"a", b"b", b"c"):
        source.append(TOPIC, value)
    collected: list[bytes] = []
    applied: list[list[bytes]] = []
    committed_when_applied: list[dict[TopicPartition, int]] = []

    async def apply(_batches: object) -> None:
        batch, collected[:] = list(collected), []
        if not applied and not committed_when_applied:
            committed_when_applied.append(dict(source.committed))
            raise RuntimeError("the store's transaction died")
        applied.append(batch)

    reader = running(source, lambda r: collected.append(r.value or b""), max_records=3, before_commit=apply)
    await _until(lambda: applied == [[b"a", b"b", b"c"]])
    await _until(lambda: source.committed == {TopicPartition(TOPIC, 0): 3})
    assert committed_when_applied == [{}] and reader.restarts == 1


async def test_a_group_reader_commits_what_it_handled(running: Callable[..., Reader]) -> None:
    source = MemorySource()
    for i in range(5):
        source.append(TOPIC, str(i).encode(), partition=i % 2)
    handled: list[bytes] = []
    running(source, lambda r: handled.append(r.value or b""))
    await _until(lambda: len(handled) == 5)
    await _until(lambda: source.committed == {TopicPartition(TOPIC, 0): 3, TopicPartition(TOPIC, 1): 2})


async def test_a_busy_group_reader_does_not_commit_after_every_batch(running: Callable[..., Reader]) -> None:
    """Fifty batches of one record: one commit when it begins, one when the source goes quiet."""
    source = MemorySource()
    for i in range(50):
        source.append(TOPIC, str(i).encode())
    handled: list[bytes] = []
    running(source, lambda r: handled.append(r.value or b""), max_records=1, commit_interval_s=3600)
    await _until(lambda: source.committed == {TopicPartition(TOPIC, 0): 50})
    assert len(handled) == 50 and source.commits == 2
    await asyncio.sleep(0.1)  # quiet: fetches that return nothing, and nothing more to commit
    assert source.commits == 2


async def test_stop_commits_what_was_handled_since_the_last_commit() -> None:
    source = MemorySource()
    source.append(TOPIC, b"first")
    handled: list[bytes] = []
    # A fetch that waits longer than the test: only stop() can commit the second record.
    reader = Reader(
        _name(), source, lambda r: handled.append(r.value or b""), topics=TOPICS, dlq=None, fetch_timeout_ms=60_000, commit_interval_s=3600
    )
    reader.start()
    await _until(lambda: handled == [b"first"])
    source.append(TOPIC, b"second")
    await _until(lambda: handled == [b"first", b"second"])
    await reader.stop()
    assert source.committed == {TopicPartition(TOPIC, 0): 2}


async def test_stop_is_idempotent_and_closes_the_source() -> None:
    source = MemorySource()
    reader = Reader(_name(), source, lambda r: None, topics=TOPICS, dlq=None, fetch_timeout_ms=20)
    reader.start()
    await _until(lambda: reader.running)
    await reader.stop()
    await reader.stop()
    assert source.closed and reader.state == "stopped"


def _record(value: bytes, *, key: bytes = b"k", headers: tuple[tuple[str, bytes], ...] = ()) -> Record:
    source = MemorySource()
    return source.append(TOPIC, value, key=key, headers=headers)


def test_the_dlq_copy_of_a_1_mb_value_is_bounded_and_keeps_origin_and_headers() -> None:
    value = b"{" + b"x" * (1024 * 1024 - 2) + b"}"
    record = _record(value, key=b"k" * 5000, headers=(("type", b"token.delta"), ("traceparent", b"00-abc")))
    key, copy, headers = dlq.dlq_copy(record, "r" * 10_000, consumer="bridge-tail")
    assert copy == value[: dlq.MAX_VALUE_BYTES] and len(copy) < len(value)
    assert key is not None and len(key) == dlq.MAX_KEY_BYTES
    assert header(headers, "dlq.value_size") == str(len(value)) and header(headers, "dlq.truncated") == "value"
    assert header(headers, "dlq.key_size") == "5000"
    assert header(headers, "type") == "token.delta" and header(headers, "traceparent") == "00-abc"
    assert header(headers, "dlq.consumer") == "bridge-tail" and header(headers, "dlq.topic") == TOPIC
    assert len(header(headers, "dlq.reason") or "") == dlq.MAX_REASON_BYTES
    size = len(copy) + len(key) + sum(len(n) + len(v) for n, v in headers)
    assert size < 512 * 1024, "a DLQ copy must fit well inside the producer's 1 MiB request"

    small = _record(b'{"a": 1}')
    key, copy, headers = dlq.dlq_copy(small, "why", consumer="c")
    assert (key, copy) == (b"k", b'{"a": 1}') and header(headers, "dlq.truncated") is None


async def test_park_never_raises() -> None:
    producer = MemoryProducer()
    producer.error = RuntimeError("producer closed")  # not a KafkaError: today's park let it through
    assert await dlq.park(producer, TOPICS, _record(b"{}"), "why", consumer="c") is False
    assert await dlq.park(None, TOPICS, _record(b"{}"), "why", consumer="c") is False
    producer.error = None
    assert await dlq.park(producer, TOPICS, _record(b"{}"), "why", consumer="c") is True
    assert producer.sent[0][0] == TOPICS.dlq


async def test_a_reader_whose_client_broke_gets_a_new_one_and_goes_on_where_it_was(running: Callable[..., Reader]) -> None:
    first = MemorySource()
    handled: list[bytes] = []
    opened: list[MemorySource] = []

    async def reopen() -> MemorySource:
        opened.append(first.reopened())
        return opened[-1]

    first.append(TOPIC, b"1")
    reader = running(first, lambda r: handled.append(r.value or b""), reopen=reopen)
    await _until(lambda: handled == [b"1"])
    await first.close()  # the consumer stopped under the reader: every fetch now raises
    await _until(lambda: reader.restarts == 1 and reader.running)
    assert reader.source is opened[0] and first.closed
    first.append(TOPIC, b"2")
    await _until(lambda: handled == [b"1", b"2"])  # from where it was, not from the new client's beginning


Outcome = str  # "ok" | "data" | "blip" (transient once) | "down" (transient every try) | "poison"


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["ok", "data", "blip", "down", "poison"]), min_size=1, max_size=30), st.integers(1, 7))
def test_every_record_is_handled_or_parked_once_in_order_whatever_the_handler_does(outcomes: list[Outcome], batch: int) -> None:
    async def run() -> tuple[list[int], list[int], int]:
        source, producer = MemorySource(), MemoryProducer()
        tries: dict[int, int] = {}
        handled: list[int] = []

        def handle(record: Record) -> None:
            i = record.offset
            tries[i] = tries.get(i, 0) + 1
            outcome = outcomes[i]
            if outcome == "data":
                raise TypeError("int() argument must be a string, not 'dict'")
            if outcome == "poison":
                raise PoisonRecord("bad")
            if outcome == "down" or (outcome == "blip" and tries[i] == 1):
                raise StoreDown("locked")
            handled.append(i)

        for i in range(len(outcomes)):
            source.append(TOPIC, str(i).encode())
        retry = Retry(attempts=2, first_s=0.0, max_s=0.0)
        reader = Reader(_name(), source, handle, topics=TOPICS, dlq=producer, retry=retry, max_records=batch, fetch_timeout_ms=5)
        reader.start()
        try:
            await _until(lambda: len(handled) + len(producer.sent) == len(outcomes))
        finally:
            await reader.stop()
        return handled, [int(value or b"") for _, _, value, _ in producer.sent], reader.restarts

    handled, parked, restarts = asyncio.run(run())
    assert handled == [i for i, o in enumerate(outcomes) if o in ("ok", "blip")]
    assert parked == [i for i, o in enumerate(outcomes) if o in ("data", "down", "poison")]
    assert restarts == 0
