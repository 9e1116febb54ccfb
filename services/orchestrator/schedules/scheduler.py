"""A replica's scheduler: every ``tick_s`` it bids (a claim on the log) for each schedule's due slot;
when the log says its bid won (``log.py``, ``book.py``), it fires the slot as an ordinary execution.

Firing is idempotent: the execution id derives from (schedule, slot), and a slot whose execution the
status view already knows is not submitted again. A firing the tenant's limits refuse is logged and
counted (``agentstream_schedule_firings_total{outcome}``), not retried: the next slot comes.
The clock is injectable (``clock``: unix seconds) so tests need no real minutes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from aiokafka.errors import KafkaError
from prometheus_client import Counter

from schemas.schedules import ScheduleClaim, ScheduleRecord
from services.common.errors import DomainError, Unavailable
from services.common.observability import metrics
from services.common.taskset import TaskSet
from services.orchestrator.auth import Authenticator
from services.orchestrator.executions import checked_prompt, known_agent
from services.orchestrator.ids import new_id, new_traceparent
from services.orchestrator.lifecycle import Lifecycle
from services.orchestrator.schedules import slots
from services.orchestrator.schedules.book import Entry, execution_id_for
from services.orchestrator.schedules.log import ScheduleLog
from services.orchestrator.submission import Submission

log = logging.getLogger(__name__)

FIRINGS = Counter("agentstream_schedule_firings", "Slots this replica fired, by outcome", ["outcome"], registry=metrics.ORCHESTRATOR)

_RESEND_S = 10.0  # a bid not read back by then (lost on the way) is sent again
_FIRE_TRIES = 5
_MAX_ROUNDS = 3  # takeovers of one slot: a firing every replica's limits refuse is not bid for forever


class Scheduler:
    def __init__(
        self,
        lifecycle: Lifecycle,
        auth: Authenticator,
        *,
        clock: Callable[[], float] = time.time,
        replica: str | None = None,
    ) -> None:
        settings = lifecycle.settings
        self._lifecycle = lifecycle
        self._auth = auth
        self._clock = clock
        self.replica = replica or new_id()
        self.tick_s = settings.schedule_tick_s
        self.grace_ms = int(settings.schedule_misfire_grace_s * 1000)
        self.takeover_ms = int(settings.schedule_takeover_s * 1000)
        self.log = ScheduleLog(
            settings.kafka,
            producer=lifecycle.producer,
            replica=self.replica,
            on_win=self._won,
            name="orchestrator-schedules",
            clock=clock,
        )
        self._fires = TaskSet("schedules", log=log)
        self._ticker: asyncio.Task[None] | None = None

    def now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def start(self) -> None:
        await self.log.start()
        self._ticker = asyncio.create_task(self._tick_forever(), name="schedule-ticker")

    async def stop(self) -> None:
        ticker, self._ticker = self._ticker, None
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
        await self.log.stop()
        await self._fires.stop(grace_s=5)

    # -- bidding --------------------------------------------------------------------------
    async def _tick_forever(self) -> None:
        settings = self._lifecycle.settings
        try:
            await asyncio.wait_for(self.log.caught_up.wait(), settings.schedule_catch_up_wait_s)
        except TimeoutError:
            log.warning("schedules: not caught up with the topic after %.0fs; bidding anyway", settings.schedule_catch_up_wait_s)
            self.log.caught_up.set()
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("schedule tick failed")
            await asyncio.sleep(self.tick_s)

    async def tick(self) -> int:
        """Bid for every due slot; returns how many bids were sent."""
        now_ms = self.now_ms()
        mono = time.monotonic()
        bids: list[ScheduleClaim] = []
        for i, entry in enumerate(list(self.log.book.entries.values()), 1):
            if i % 64 == 0:
                await asyncio.sleep(0)  # a cron's first next slot costs ~0.4 ms: let HTTP requests in between
            takeover = self._takeover_bid(entry, now_ms, mono)
            if takeover is not None:
                bids.append(takeover)
            upcoming = entry.next_slot()
            if upcoming is None or upcoming > now_ms:
                continue  # the common case, without a cron evaluation
            slot = slots.due(entry.record, entry.claimed_ms, now_ms, grace_ms=self.grace_ms)
            if slot is None:
                continue
            if entry.pending is not None and entry.pending[0] == slot and mono - entry.pending[1] < _RESEND_S:
                continue
            entry.pending = (slot, mono)
            rec = entry.record
            bids.append(
                ScheduleClaim(
                    schedule_id=rec.schedule_id,
                    tenant_id=rec.tenant_id,
                    revision=rec.revision,
                    slot_ms=slot,
                    replica=self.replica,
                    claimed_ms=now_ms,
                )
            )
        results = await asyncio.gather(*(self.log.claim(bid) for bid in bids), return_exceptions=True)
        for bid, result in zip(bids, results, strict=True):
            if isinstance(result, BaseException):
                log.warning("schedule %s: bid for slot %d not sent: %s", bid.schedule_id, bid.slot_ms, result)
                bidder = self.log.book.entries.get(bid.schedule_id)
                if bidder is not None:
                    bidder.pending = None
        return len(bids)

    def _takeover_bid(self, entry: Entry, now_ms: int, mono: float) -> ScheduleClaim | None:
        """A bid for the next round of the slot last won, when its execution has not appeared
        ``takeover_s`` after the win (the winner died before its submit); None otherwise."""
        won = entry.winner
        # Wins read while catching up count too: the status view read its topic before this ticks
        # (StatusView.start), so an execution it does not know was never submitted.
        if won is None or entry.record.paused or won.round + 1 > _MAX_ROUNDS or entry.settled_ms == won.slot_ms:
            return None
        if now_ms < max(won.claimed_ms, won.slot_ms) + self.takeover_ms or now_ms - won.slot_ms > self.grace_ms:
            return None
        if execution_id_for(won.tenant_id, won.schedule_id, won.slot_ms) in self._lifecycle.status:
            return None
        if entry.takeover is not None and entry.takeover[0] == won.round + 1 and mono - entry.takeover[1] < _RESEND_S:
            return None
        entry.takeover = (won.round + 1, mono)
        return won.model_copy(update={"replica": self.replica, "claimed_ms": now_ms, "round": won.round + 1})

    # -- firing ---------------------------------------------------------------------------
    def _won(self, claim: ScheduleClaim) -> None:
        entry = self.log.book.entries.get(claim.schedule_id)
        if entry is not None:
            self._fires.spawn(self._fire(entry.record, claim))

    async def _fire(self, rec: ScheduleRecord, claim: ScheduleClaim) -> None:
        slot_ms = claim.slot_ms
        outcome = await self.fire(rec, slot_ms)
        FIRINGS.labels(outcome=outcome).inc()
        with contextlib.suppress(KafkaError):  # best effort: without it, replicas take the slot over and decide again
            if outcome == "refused":  # decided: no replica is to take it over
                await self.log.claim(claim.model_copy(update={"settled": True, "claimed_ms": self.now_ms()}))
            if outcome in ("submitted", "duplicate"):  # housekeeping: the highest claim is the floor either way
                await self.log.forget_claims(rec.schedule_id, rec.tenant_id, slot_ms)

    async def fire(self, rec: ScheduleRecord, slot_ms: int) -> str:
        """Submit the slot's execution; returns the outcome (submitted, duplicate, refused, unavailable)."""
        lifecycle = self._lifecycle
        execution_id = execution_id_for(rec.tenant_id, rec.schedule_id, slot_ms)
        if execution_id in lifecycle.status:
            return "duplicate"
        target = rec.target
        sub = Submission(
            tenant_id=rec.tenant_id,
            agent_id=target.agent,
            input=target.input,
            priority=target.priority,
            variables=dict(target.variables),
            session_id=target.session_id,
            origin="schedule",
            custom_id=rec.schedule_id,  # the task registry's row names its schedule
            execution_id=execution_id,
            traceparent=new_traceparent(),
        )
        delay = 0.5
        for attempt in range(1, _FIRE_TRIES + 1):
            try:
                known_agent(lifecycle.agents, target.agent)
                checked_prompt(lifecycle.agents, target.agent, sub.variables, sub.input)
                ctx = await self._auth.tenant_context(rec.tenant_id)
                await lifecycle.accept(ctx, [sub])
                log.info("schedule %s fired slot %d as execution %s", rec.schedule_id, slot_ms, execution_id)
                return "submitted"
            except Unavailable as exc:
                log.warning("schedule %s slot %d: %s (try %d of %d)", rec.schedule_id, slot_ms, exc, attempt, _FIRE_TRIES)
            except DomainError as exc:  # the tenant's limits, an agent that is gone: this slot does not run
                log.warning("schedule %s slot %d not fired: %s", rec.schedule_id, slot_ms, exc)
                return "refused"
            await asyncio.sleep(delay)
            delay *= 2
        return "unavailable"
