"""The ``schedules`` topic, read and written by every orchestrator replica.

``ScheduleLog`` tails every partition from the beginning without a group (each replica needs every
schedule and every claim, in log order) into its ``Book``, and writes definitions, tombstones and
claims. A schedule's records all go to one partition (``crc32(id) % partitions``), so its
definition changes and its claims are ordered with each other: a claim read after a pause or a
delete never fires.

It knows when it has read what was on the topic at start (``caught_up``): the ticker claims only
after that, so a restarted replica does not bid for slots the others already fired (it would lose
them anyway; the log decides, not the bid).
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiokafka import AIOKafkaProducer, TopicPartition
from pydantic import ValidationError

from schemas.schedules import ScheduleClaim, ScheduleRecord
from services.common.errors import PoisonRecord
from services.common.kafka import encode, snapshot_headers
from services.common.reader import Reader
from services.common.settings import KafkaSettings
from services.common.sources import KafkaSource, Record, RecordSource, open_tail, reopen_tail
from services.orchestrator.schedules.book import Book

log = logging.getLogger(__name__)

CLAIM = ":claim:"
FUTURE_TOLERANCE_MS = 60_000  # clocks of replicas differ: a claim this far ahead of ours is no bid
OnWin = Callable[[ScheduleClaim], Awaitable[None] | None]


def claim_key(schedule_id: str, slot_ms: int) -> str:
    return f"{schedule_id}{CLAIM}{slot_ms}"


class ScheduleLog:
    def __init__(
        self,
        settings: KafkaSettings,
        *,
        producer: AIOKafkaProducer,
        replica: str,
        on_win: OnWin,
        name: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._clock = clock
        self._settings = settings
        self.topic = settings.topics.schedules
        self._producer = producer
        self.replica = replica
        self._on_win = on_win
        self._name = name
        self.book = Book()
        self.reader: Reader | None = None
        self.caught_up = asyncio.Event()
        self._ends: dict[TopicPartition, int] = {}
        self._handled: dict[TopicPartition, int] = {}
        self._partitions = 1

    async def start(self) -> None:
        source, start = await open_tail(self._settings, [self.topic], client_id=self._name, from_beginning=True)
        ends = await _end_offsets(source, list(start))
        self.start_on(source, start, ends, reopen=reopen_tail(self._settings, [self.topic], client_id=self._name, from_beginning=True))

    def start_on(
        self,
        source: RecordSource,
        start: dict[TopicPartition, int],
        ends: dict[TopicPartition, int],
        *,
        reopen: Callable[[], Awaitable[RecordSource]] | None = None,
    ) -> None:
        """Read ``source`` (every partition of the topic, from ``start``); caught up at ``ends``.
        ``start`` uses Kafka; tests hand an in-memory log (``sources.MemorySource``) here."""
        self._partitions = max(1, len(start))
        self._ends = dict(ends)
        self._handled = dict(start)
        self._check_caught_up()
        self.reader = Reader(
            self._name, source, self._handle, topics=self._settings.topics, dlq=self._producer, positions=start, reopen=reopen
        )
        self.reader.start()

    async def stop(self) -> None:
        reader, self.reader = self.reader, None
        if reader is not None:
            await reader.stop()

    # -- writes ---------------------------------------------------------------------------
    def partition_of(self, schedule_id: str) -> int:
        return zlib.crc32(schedule_id.encode()) % self._partitions

    async def define(self, record: ScheduleRecord) -> None:
        """Write a definition (acks=all); this replica's book has it when this returns."""
        await self._send(record.schedule_id, encode(record), record.schedule_id, record.tenant_id, "schedule.defined")
        self.book.define(record)

    async def delete(self, schedule_id: str, tenant_id: str) -> None:
        entry = self.book.entries.get(schedule_id)
        await self._send(schedule_id, None, schedule_id, tenant_id, "schedule.deleted")
        self.book.remove(schedule_id)
        # Its claims go too, so compaction can drop every record of it.
        for slot in sorted(entry.claim_slots) if entry is not None else ():
            await self._send(claim_key(schedule_id, slot), None, schedule_id, tenant_id, "schedule.claim.deleted")

    async def claim(self, claim: ScheduleClaim) -> None:
        await self._send(claim_key(claim.schedule_id, claim.slot_ms), encode(claim), claim.schedule_id, claim.tenant_id, "schedule.claimed")

    async def forget_claims(self, schedule_id: str, tenant_id: str, below_ms: int) -> None:
        """Tombstones of a schedule's claim keys below a won slot: the highest one stays, as its floor."""
        entry = self.book.entries.get(schedule_id)
        if entry is None:
            return
        old = sorted(s for s in entry.claim_slots if s < below_ms)
        for slot in old:
            await self._send(claim_key(schedule_id, slot), None, schedule_id, tenant_id, "schedule.claim.deleted")
        entry.claim_slots.difference_update(old)

    async def _send(self, key: str, value: bytes | None, schedule_id: str, tenant_id: str, kind: str) -> None:
        headers = snapshot_headers(kind, service="orchestrator", subject=key, time=datetime.now(UTC), tenant_id=tenant_id)
        await self._producer.send_and_wait(
            self.topic, value=value, key=key.encode(), partition=self.partition_of(schedule_id), headers=headers
        )

    # -- reads ----------------------------------------------------------------------------
    async def _handle(self, record: Record) -> None:
        try:
            await self._apply(record)
        finally:
            tp = TopicPartition(record.topic, record.partition)
            self._handled[tp] = max(self._handled.get(tp, 0), record.offset + 1)
            self._check_caught_up()

    async def _apply(self, record: Record) -> None:
        try:
            key = (record.key or b"").decode()
        except UnicodeDecodeError as exc:
            raise PoisonRecord("schedules: the key is not UTF-8") from exc
        if not key:
            raise PoisonRecord("schedules: a record without a key")
        schedule_id, is_claim, slot = key.partition(CLAIM)
        if record.value is None:
            if not is_claim:
                self.book.remove(schedule_id)
            elif slot.isdigit() and len(slot) < 20 and (entry := self.book.entries.get(schedule_id)) is not None:
                entry.claim_slots.discard(int(slot))  # tombstoned by a winner: the floor stays (claimed_ms)
            return
        try:
            if is_claim:
                claim = ScheduleClaim.model_validate_json(record.value)
            else:
                definition = ScheduleRecord.model_validate_json(record.value)
        except ValidationError as exc:
            raise PoisonRecord(f"schedules: invalid record under key {key[:200]!r}: {exc}") from exc
        if not is_claim:
            if definition.schedule_id != schedule_id:
                raise PoisonRecord(f"schedules: key {key[:200]!r} holds the definition of {definition.schedule_id!r}")
            self.book.define(definition)
            return
        if claim.schedule_id != schedule_id:
            raise PoisonRecord(f"schedules: key {key[:200]!r} holds a claim of {claim.schedule_id!r}")
        if claim.slot_ms > self._clock() * 1000 + FUTURE_TOLERANCE_MS:
            # No replica bids for a slot that has not come: one that did would stop the schedule until then.
            raise PoisonRecord(f"schedules: a claim of slot {claim.slot_ms}, which has not come yet")
        won = self.book.claim(claim)
        entry = self.book.entries.get(schedule_id)
        if entry is None:
            return
        if claim.replica == self.replica and entry.pending is not None and entry.pending[0] <= claim.slot_ms:
            entry.pending = None  # our bid is decided, won or lost
        if not won:
            return
        # A win read while catching up is history: its replica fired it (or died first: then the
        # ticker takes it over, within the misfire grace). Only a win seen live is fired here.
        entry.live = self.caught_up.is_set()
        if entry.live and claim.replica == self.replica:
            pending = self._on_win(claim)
            if pending is not None:
                await pending

    def _check_caught_up(self) -> None:
        if not self.caught_up.is_set() and all(self._handled.get(tp, 0) >= end for tp, end in self._ends.items()):
            self.caught_up.set()


async def _end_offsets(source: KafkaSource, tps: list[TopicPartition]) -> dict[TopicPartition, int]:
    ends: dict[TopicPartition, int] = await source.consumer.end_offsets(tps)
    return ends
