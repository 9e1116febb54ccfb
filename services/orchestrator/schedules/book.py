"""Every replica's projection of the ``schedules`` topic: definitions, and per schedule the highest
slot claimed. Applying the topic's records in log order is the whole algorithm of "once per slot":

* a claim **wins** when its schedule is known, of the same tenant, not paused, and its slot is later
  than the floor (the schedule's ``since`` and every slot claimed before it in the log): the first
  claim of a slot wins, a second one of the same slot, or one of an older slot, loses;
* every replica reads the same order, so all agree on the winner; only the winner fires;
* a winner that dies between its win and its submit: after ``schedule_takeover_s`` without the
  slot's execution, replicas bid again for the same slot in the next round; the first bid of the
  round wins it (and the slot's execution id is the same, so a slow winner and a taker do not run
  it twice);
* a claim read before its schedule's definition (compaction keeps only the latest definition, which
  may sit after older claims) still raises the floor: a slot claimed once never fires again.

Pure state, no I/O: the reader (``log.py``) feeds it, the ticker (``ticker.py``) asks it.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from schemas.schedules import ScheduleClaim, ScheduleRecord
from services.orchestrator.schedules import slots

MAX_ORPHANS = 100_000  # schedules known only by their claims (compaction's order at start); past it, ignored
_IDS = uuid.UUID("0b7f6a4e-2f43-4c4e-9a53-5c8d2f6e1a77")  # namespace of execution ids derived from (schedule, slot)


def execution_id_for(tenant_id: str, schedule_id: str, slot_ms: int) -> str:
    """The execution of one slot: the same on every replica and every replay, so firing is idempotent."""
    return uuid.uuid5(_IDS, f"{tenant_id}\n{schedule_id}\n{slot_ms}").hex


@dataclass
class Entry:
    record: ScheduleRecord
    claimed_ms: int | None = None  # the highest slot claimed in the log (won, or lost to a pause)
    fired_ms: int | None = None  # the last slot whose claim won
    claim_slots: set[int] = field(default_factory=set)  # claim keys seen, for their tombstones
    winner: ScheduleClaim | None = None  # the claim that won ``fired_ms`` (its latest round)
    live: bool = False  # that win was read live (not while catching up at start)
    settled_ms: int | None = None  # a won slot its winner settled without an execution (refused): no takeover
    takeover: tuple[int, float] | None = None  # this replica's takeover bid in flight: (round, monotonic time sent)
    _next_key: tuple[int, int | None] | None = field(default=None, repr=False)
    _next: int | None = field(default=None, repr=False)
    pending: tuple[int, float] | None = None  # this replica's claim in flight: (slot, monotonic time sent)

    @property
    def last_execution_id(self) -> str | None:
        if self.fired_ms is None:
            return None
        return execution_id_for(self.record.tenant_id, self.record.schedule_id, self.fired_ms)

    def next_slot(self) -> int | None:
        """The next slot after the floor (None while paused), computed once per definition and floor:
        a cron's is ~0.4 ms, and every tick asks every schedule."""
        key = (id(self.record), self.claimed_ms)
        if key != self._next_key:
            self._next_key = key
            self._next = None if self.record.paused else slots.next_after(self.record, slots.floor_of(self.record, self.claimed_ms))
        return self._next


@dataclass
class Book:
    entries: dict[str, Entry] = field(default_factory=dict)
    # Claims of schedules not (yet) defined in what was read: the floor they set when it comes.
    orphans: dict[str, tuple[int, set[int]]] = field(default_factory=dict)

    def define(self, record: ScheduleRecord) -> None:
        """A definition; an older revision than the one held (read back after a local apply) is ignored."""
        entry = self.entries.get(record.schedule_id)
        if entry is None:
            claimed, keys = self.orphans.pop(record.schedule_id, (None, set()))
            # Compaction left the claims before the definition: take their highest as the last firing.
            self.entries[record.schedule_id] = Entry(record, claimed_ms=claimed, fired_ms=claimed, claim_slots=keys)
        elif record.revision >= entry.record.revision:
            entry.record = record

    def remove(self, schedule_id: str) -> Entry | None:
        return self.entries.pop(schedule_id, None)

    def claim(self, claim: ScheduleClaim) -> bool:
        """Apply a claim in log order; True if it wins its slot (its replica fires it)."""
        entry = self.entries.get(claim.schedule_id)
        if entry is None:
            if claim.schedule_id not in self.orphans and len(self.orphans) >= MAX_ORPHANS:
                return False
            top, keys = self.orphans.get(claim.schedule_id, (-1, set()))
            keys.add(claim.slot_ms)
            self.orphans[claim.schedule_id] = (max(top, claim.slot_ms), keys)
            return False
        if entry.record.tenant_id != claim.tenant_id:
            return False
        if not slots.on_grid(entry.record, claim.slot_ms):
            return False  # no slot of this schedule's: it must not move the floor
        entry.claim_slots.add(claim.slot_ms)
        won = entry.winner
        if claim.settled:
            # Compaction may keep only this record of its slot (same key as the win): it is a floor too.
            entry.claimed_ms = max(entry.claimed_ms if entry.claimed_ms is not None else -1, claim.slot_ms)
            if won is None or claim.slot_ms >= won.slot_ms:
                entry.settled_ms = claim.slot_ms
            return False
        if claim.round > 0:
            # A takeover: only of the slot last won, only the next round, only the first bid of it.
            if won is None or claim.slot_ms != won.slot_ms or claim.round != won.round + 1 or entry.record.paused:
                return False
            entry.winner = claim
            return True
        floor = slots.floor_of(entry.record, entry.claimed_ms)
        if claim.slot_ms <= floor:
            return False
        entry.claimed_ms = claim.slot_ms
        if entry.record.paused:
            return False
        entry.fired_ms = claim.slot_ms
        entry.winner = claim
        return True

    def of_tenant(self, tenant_id: str) -> list[Entry]:
        return [e for e in self.entries.values() if e.record.tenant_id == tenant_id]
