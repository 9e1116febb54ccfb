"""The one reader every consumer goes through, with or without a group.

A ``Reader`` fetches batches from a ``RecordSource`` and hands each record to a handler, in order.
Handling is total: whatever one record raises, the reader decides, by the error's kind, between

* **retrying it** (transient infrastructure trouble: Kafka, a store that is down or locked; our own
  errors say so with ``retriable``), with exponential backoff up to ``Retry.attempts`` tries, and
* **parking it** in the DLQ with the reason, at once for anything else (a data error: a value out
  of range, a wrong type, a record that does not validate; ``PoisonRecord`` carries its reason),
  or when the retries are used up,

and then goes on with the next record. No record stops a reader or holds back the ones behind it
for longer than the retry cap. Group readers commit what they handled: after a batch when their last
commit is ``commit_interval_s`` old, else when the source next goes quiet (a fetch that returns
nothing) or the reader stops, so a busy reader commits a few times a second, not once per batch, and
an idle one not at all. A record handled but not yet committed is handled again after a crash or a
rebalance, as one handled in the batch a commit failed for always could be (effects are idempotent).
A reader whose handler only collects (a projection's group commit) applies the batch in
``before_commit``, which runs after the batch's records and before its offsets can be committed;
if it raises, the batch is read again from its first record.

The fetch loop runs in a task under a supervisor: when it dies (a bug, a broken client) it is
restarted with backoff (on a new source when ``reopen`` is given: the old client may be what
broke), from the first record it had not handled, counted in
``agentstream_reader_restarts_total{reader}``; ``agentstream_reader_up{reader}`` and ``state`` show
it, and the services' ``/health/ready`` answer 503 naming a reader that is not running.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Literal

from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from schemas.topics import Topics
from services.common.dlq import Publisher, park
from services.common.errors import AgentstreamError, PoisonRecord
from services.common.observability import metrics
from services.common.settings import KafkaSettings
from services.common.sources import Batches, Record, RecordSource, open_tail, reopen_tail

log = logging.getLogger(__name__)

Handler = Callable[[Record], Awaitable[None] | None]
State = Literal["starting", "running", "restarting", "stopped"]

_TRANSIENT: tuple[type[BaseException], ...] = (KafkaError, ConnectionError, TimeoutError)


def transient(exc: BaseException) -> bool:
    """Whether handling a record may succeed if tried again: our errors say so (``retriable``);
    Kafka errors and lost connections are; anything else (a data error) is not."""
    if isinstance(exc, AgentstreamError):
        return exc.retriable
    return isinstance(exc, _TRANSIENT)


@dataclass(frozen=True)
class Retry:
    """Tries of one record that fails transiently (about 16 s with the defaults), then it is parked."""

    attempts: int = 8
    first_s: float = 0.2
    max_s: float = 5.0


@dataclass(frozen=True)
class Restart:
    """Backoff between restarts of a dead fetch loop; reset once it has run ``healthy_s``."""

    first_s: float = 1.0
    max_s: float = 30.0
    healthy_s: float = 60.0


def _reason(exc: BaseException) -> str:
    if isinstance(exc, PoisonRecord):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


LAST_COMMIT_S = 2.0  # the commit a stopping group reader makes of what it handled
_YIELD_EVERY = 64  # records handled between two turns of the event loop for everything else


class Reader:
    def __init__(
        self,
        name: str,
        source: RecordSource,
        handle: Handler,
        *,
        topics: Topics,
        dlq: Publisher | None,
        transient: Callable[[BaseException], bool] = transient,
        retry: Retry = Retry(),
        restart: Restart = Restart(),
        max_records: int = 500,
        fetch_timeout_ms: int = 1000,
        around_batch: Callable[[list[Record]], AbstractContextManager[None]] | None = None,
        after_batch: Callable[[Batches], Awaitable[None]] | None = None,
        before_commit: Callable[[Batches], Awaitable[None]] | None = None,
        positions: dict[TopicPartition, int] | None = None,
        reopen: Callable[[], Awaitable[RecordSource]] | None = None,
        commit_after_batch: bool = True,
        commit_interval_s: float = 0.5,
    ) -> None:
        self.name = name
        self.source = source
        self._handle = handle
        self._topics = topics
        self._dlq = dlq
        self._transient = transient
        self._retry = retry
        self._restart = restart
        self._max_records = max_records
        self._fetch_timeout_ms = fetch_timeout_ms
        self._around = around_batch
        self._after = after_batch
        self._before_commit = before_commit
        self.state: State = "starting"
        self.restarts = 0
        self.last_error: str | None = None
        self.parked = 0
        # First offset not handled yet, per partition (a tail's start positions until it reads).
        self._next: dict[TopicPartition, int] = dict(positions or {})
        self._reopen = reopen
        self._commits = commit_after_batch  # False: the handler commits (e.g. a watermark of finished work)
        self._commit_interval = commit_interval_s
        self._uncommitted: dict[TopicPartition, int] = {}
        self._committed_at = float("-inf")
        self._supervisor: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None  # the fetch loop now running

    # -- lifecycle ------------------------------------------------------------------------
    def start(self) -> None:
        metrics.READER_UP.add(self, lambda: [((self.name,), 1.0 if self.state == "running" else 0.0)])
        self._supervisor = asyncio.create_task(self._supervise(), name=f"reader-{self.name}")

    async def stop(self) -> None:
        """Stop fetching and close the source. Idempotent."""
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None:
            supervisor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await supervisor
        if self.state != "stopped" and self._uncommitted:
            # Best effort, bounded: what is not committed is read again. aiokafka retries a commit
            # for as long as the coordinator answers with a retriable error.
            with contextlib.suppress(Exception):
                async with asyncio.timeout(LAST_COMMIT_S):
                    await self._commit_pending()
        if self.state != "stopped":
            self.state = "stopped"
            metrics.READER_UP.remove(self)
            await self.source.close()

    @property
    def running(self) -> bool:
        return self.state == "running"

    async def position(self, tp: TopicPartition) -> int:
        return await self.source.position(tp)

    async def park(self, record: Record, reason: str) -> None:
        self.parked += 1
        await park(self._dlq, self._topics, record, reason, consumer=self.name)

    # -- supervision ----------------------------------------------------------------------
    async def _supervise(self) -> None:
        delay = self._restart.first_s
        while True:
            began = time.monotonic()
            task = self.task = asyncio.create_task(self._run(), name=f"reader-{self.name}-loop")
            try:
                await asyncio.wait({task})
            except asyncio.CancelledError:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
                raise
            # The loop never returns on its own: it died, or something cancelled it.
            error = None if task.cancelled() else task.exception()
            self.last_error = "cancelled" if error is None else _reason(error)
            self.state = "restarting"
            self.restarts += 1
            metrics.READER_RESTARTS.labels(reader=self.name).inc()
            if time.monotonic() - began >= self._restart.healthy_s:
                delay = self._restart.first_s
            log.error("reader %s died (%s); restarting in %.1fs", self.name, self.last_error, delay, exc_info=error)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._restart.max_s)
            while self._reopen is not None and not await self._reopened():
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._restart.max_s)
            for tp, offset in self._next.items():  # records fetched but not handled are read again
                self.source.seek(tp, offset)

    async def _reopened(self) -> bool:
        """Replace the source with a new one (the old client may be what broke); False if that failed."""
        assert self._reopen is not None
        with contextlib.suppress(Exception):
            await self.source.close()
        try:
            self.source = await self._reopen()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.last_error = f"reopening failed: {_reason(exc)}"
            log.error("reader %s: %s", self.name, self.last_error)
            return False
        return True

    async def _run(self) -> None:
        while True:
            try:
                batches = await self.source.fetch(max_records=self._max_records, timeout_ms=self._fetch_timeout_ms)
            except KafkaError as exc:
                log.warning("reader %s: %s; fetching again", self.name, exc)
                await asyncio.sleep(1)
                continue
            self.state = "running"
            for tp, records in batches.items():
                self._next.setdefault(tp, records[0].offset)  # so a restart reads this batch again if it dies before any
                if self._around is None:
                    await self._handle_all(tp, records)
                else:
                    with self._around(records):
                        await self._handle_all(tp, records)
            if batches and self._before_commit is not None:
                await self._settle(batches)
            if batches and self._commits:
                self._uncommitted.update({tp: self._next[tp] for tp in batches if tp in self._next})
            if self._uncommitted and (not batches or time.monotonic() - self._committed_at >= self._commit_interval):
                await self._commit_pending()
            if batches and self._after is not None:
                await self._after(batches)

    async def _settle(self, batches: Batches) -> None:
        # A handler that only collects (a projection's group commit) applies the batch here, before
        # its offsets can be committed; if that dies, the batch is read again, not skipped.
        assert self._before_commit is not None
        firsts = {tp: records[0].offset for tp, records in batches.items()}
        try:
            await self._before_commit(batches)
        except BaseException:
            self._next.update(firsts)
            raise

    async def _handle_all(self, tp: TopicPartition, records: list[Record]) -> None:
        handled = -1
        try:
            for i, record in enumerate(records, 1):
                await self._handle_one(record)
                handled = record.offset
                if i % _YIELD_EVERY == 0:
                    # A handler that never waits (a status snapshot's decode) would hold the event loop
                    # for the whole batch: the HTTP requests sharing it waited tens of ms (intake p99).
                    await asyncio.sleep(0)
        finally:
            if handled >= 0:
                self._next[tp] = handled + 1

    async def _handle_one(self, record: Record) -> None:
        delay = self._retry.first_s
        attempt = 0
        while True:
            attempt += 1
            try:
                pending = self._handle(record)
                if pending is not None:
                    await pending
                return
            except Exception as exc:
                if not self._transient(exc):
                    await self.park(record, _reason(exc))
                    return
                if attempt >= self._retry.attempts:
                    await self.park(record, f"{_reason(exc)} (still failing after {attempt} tries)")
                    return
                log.warning(
                    "reader %s: %s:%s@%s failed (%s); try %d of %d in %.1fs",
                    self.name,
                    record.topic,
                    record.partition,
                    record.offset,
                    _reason(exc),
                    attempt + 1,
                    self._retry.attempts,
                    delay,
                )
                await asyncio.sleep(delay)
                delay = min(delay * 2, self._retry.max_s)

    async def _commit_pending(self) -> None:
        pending, self._uncommitted = self._uncommitted, {}
        self._committed_at = time.monotonic()
        assigned = self.source.assignment()
        offsets = {tp: offset for tp, offset in pending.items() if tp in assigned}  # not a partition a rebalance took
        try:
            await self.source.commit(offsets)
        except KafkaError as exc:  # a rebalance took the partition: its new owner reads it again (effects are idempotent)
            log.info("reader %s: commit skipped: %s", self.name, exc)


def readers_health(readers: Iterable[Reader]) -> tuple[bool, dict[str, str]]:
    """(all running, each reader's state): what ``/health/ready`` reports."""
    states: dict[str, str] = {reader.name: reader.state for reader in readers}
    return all(state == "running" for state in states.values()), states


async def start_tail_reader(
    settings: KafkaSettings,
    topics: Sequence[str],
    handle: Handler,
    *,
    name: str,
    dlq: Publisher | None,
    from_beginning: bool = False,
    **options: Any,
) -> Reader:
    """A started ``Reader`` of every partition of ``topics`` without a group (from their beginning or
    end), that reopens its consumer at the same place when its loop dies; ``options`` go to ``Reader``."""
    source, start = await open_tail(settings, topics, client_id=name, from_beginning=from_beginning)
    reader = Reader(
        name,
        source,
        handle,
        topics=settings.topics,
        dlq=dlq,
        positions=start,
        reopen=reopen_tail(settings, topics, client_id=name, from_beginning=from_beginning),
        **options,
    )
    reader.start()
    return reader
