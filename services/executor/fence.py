"""Whether this executor may still write for an execution: its claim on the lane partition it runs from.

The group coordinator gives a partition to another member when this one has not heartbeated for
the session timeout, e.g. while the process was paused (SIGSTOP, a VM freeze, a blocked loop). On
waking, the paused member's executions would go on streaming their (now older) attempt next to the
new owner's. Each lane consumer has a ``Claim``: a lease renewed by a ticker while the event loop
runs. A gap longer than ``ttl_s`` (half the session timeout: the broker cannot have evicted us
before) puts the claim in doubt, and every write waits, before its record, until the doubt clears:

* the consumer's rebalance listener revokes partitions while in doubt: the member was evicted (or
  may have been), the claim's term ends, every run of it is fenced (``Fenced``) and dropped, and the
  records are delivered again to whoever owns them now, as the next attempt;
* no revocation within ``confirm_s`` (a heartbeat after waking would have been refused by then):
  the member is still in the group, the runs go on; a revocation that still comes within a session
  timeout after the stall ends the term all the same (the refusal was only slow).

The check on the token path is one clock read and two comparisons per record. Kafka's own
producer fencing (a transactional producer per input partition, whose ``init_transactions`` by
the new owner fences the old one) would also fence records already buffered, but costs a
transaction commit per flush and ``read_committed`` readers (latency of every token up to the
commit interval); see docs/architecture.md. What this does not catch: a member cut off from the
group coordinator while its loop runs and the partition leaders still answer (aiokafka does not
expose heartbeat outcomes); the bridge, the status view and the store fence that case.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from services.common.errors import AgentstreamError

log = logging.getLogger(__name__)


class Fenced(AgentstreamError):
    """This member lost (or may have lost) the partition of the execution it runs: it writes nothing more."""

    retriable = True


class Claim:
    """One lane consumer's claim on its partitions, as this process can tell it."""

    def __init__(self, name: str, *, ttl_s: float, confirm_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.name = name
        self.ttl_s = ttl_s
        self.confirm_s = confirm_s
        self._clock = clock
        self.term = 0
        self.renewed = clock()
        self.in_doubt = False
        self.stalled_at = float("-inf")  # when the last doubt began
        self._changed = asyncio.Event()
        self._confirm: asyncio.TimerHandle | None = None

    def writable(self, term: int) -> bool:
        return term == self.term and not self.in_doubt and self._clock() - self.renewed <= self.ttl_s

    def tick(self) -> None:
        """Renew while the loop runs on time; a late tick means we were stalled: doubt."""
        if self.in_doubt:
            return
        now = self._clock()
        if now - self.renewed > self.ttl_s:
            self._doubt(now)
        else:
            self.renewed = now

    async def settle(self, term: int) -> None:
        """Wait until a run of ``term`` may write again; raise Fenced if its term ended."""
        while True:
            if term != self.term:
                raise Fenced(f"{self.name}: this member lost the partition while it was stalled; a newer attempt runs elsewhere")
            if self.writable(term):
                return
            if not self.in_doubt:
                self._doubt(self._clock())
            changed = self._changed
            await changed.wait()

    def revoked(self) -> bool:
        """The consumer's partitions are revoked (a rebalance). True if the claim was in doubt (or its lease
        had run out): its term ends, as another member may have run its executions meanwhile."""
        now = self._clock()
        # Also shortly after a doubt that the confirm window cleared: a heartbeat refused late (a slow
        # coordinator) still means we were evicted. The window: a session timeout plus the confirm time.
        recent_stall = now - self.stalled_at < 2 * self.ttl_s + self.confirm_s
        stale = self.in_doubt or now - self.renewed > self.ttl_s or recent_stall
        if stale:
            self.term += 1
            log.warning("%s: partitions revoked after a stall of the event loop: runs of the old term are fenced", self.name)
            self._settle(renewed=False)
        return stale

    def assigned(self) -> None:
        """A rebalance completed: the group knows us, as of now."""
        self._settle(renewed=True)

    def _doubt(self, now: float) -> None:
        self.in_doubt = True
        self.stalled_at = now
        stalled = now - self.renewed
        log.warning("%s: the event loop stalled for %.1fs; writes wait until the group membership is confirmed", self.name, stalled)
        if self._confirm is not None:
            self._confirm.cancel()
        self._confirm = asyncio.get_running_loop().call_later(self.confirm_s, self._confirmed)

    def _confirmed(self) -> None:
        self._confirm = None
        if self.in_doubt:
            log.info("%s: no rebalance after the stall: still a member, writes go on", self.name)
            self._settle(renewed=True)

    def _settle(self, *, renewed: bool) -> None:
        if self._confirm is not None:
            self._confirm.cancel()
            self._confirm = None
        self.in_doubt = False
        if renewed:
            self.renewed = self._clock()
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()


class Tenure:
    """One execution run's right to write: its claim, in the term the run started in."""

    __slots__ = ("claim", "term")

    def __init__(self, claim: Claim) -> None:
        self.claim = claim
        self.term = claim.term

    def ok(self) -> bool:
        """The fast path, before every record: the claim holds, nothing to wait for."""
        return self.claim.writable(self.term)

    async def check(self) -> None:
        """Return once the run may write (at once while the claim holds); raise Fenced if it may not."""
        if not self.claim.writable(self.term):
            await self.claim.settle(self.term)
