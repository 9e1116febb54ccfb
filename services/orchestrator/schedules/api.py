"""``/v1/schedules``: create, list, read, change (pause and resume too) and delete a tenant's schedules.

A change is a new definition on the log (``revision`` + 1), answered once the broker acknowledged it;
reads come from this replica's book (other replicas see a change as soon as they read it back).
"""

from __future__ import annotations

import asyncio
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.schedules import ExecutionTarget, ScheduleCreate, ScheduleList, SchedulePatch, ScheduleRecord, ScheduleView
from services.common.errors import Conflict, NotFound, Unavailable
from services.orchestrator.auth import TenantContext
from services.orchestrator.executions import checked_prompt, known_agent
from services.orchestrator.http import HTTPError, iso, json_body, parse_json, path_id, require_tenant, state_of, validate
from services.orchestrator.idempotency import idempotent
from services.orchestrator.ids import new_id
from services.orchestrator.schedules import slots
from services.orchestrator.schedules.book import Entry
from services.orchestrator.schedules.scheduler import Scheduler


async def _scheduler(request: Request) -> Scheduler:
    """The replica's scheduler once its book holds the topic (right after a start it may still be
    reading it: an answer then would miss schedules); 503 if that takes longer than a few seconds."""
    scheduler: Scheduler = state_of(request).runtime.scheduler
    if not scheduler.log.caught_up.is_set():
        try:
            await asyncio.wait_for(scheduler.log.caught_up.wait(), _CATCH_UP_WAIT_S)
        except TimeoutError as exc:
            raise Unavailable("schedules are still being read from the log; retry in a moment", retry_after=1) from exc
    return scheduler


_CATCH_UP_WAIT_S = 5.0


def view_of(entry: Entry) -> ScheduleView:
    rec = entry.record
    nxt = entry.next_slot()
    return ScheduleView(
        schedule_id=rec.schedule_id,
        name=rec.name,
        target=rec.target,
        cron=rec.cron,
        interval_s=rec.interval_s,
        timezone=rec.timezone,
        catch_up=rec.catch_up,
        paused=rec.paused,
        created_at=iso(rec.created_ms / 1000) or "",
        updated_at=iso(rec.updated_ms / 1000) or "",
        next_fire_at=iso(nxt / 1000) if nxt is not None else None,
        last_fired_at=iso(entry.fired_ms / 1000) if entry.fired_ms is not None else None,
        last_execution_id=entry.last_execution_id,
    )


def _check_target(request: Request, target: ExecutionTarget) -> None:
    state = state_of(request)
    known_agent(state.agents, target.agent)
    checked_prompt(state.agents, target.agent, dict(target.variables), target.input)


def _check_timing(request: Request, rec: ScheduleRecord) -> None:
    settings = state_of(request).settings
    slots.check_timing(
        cron=rec.cron, interval_s=rec.interval_s, timezone=rec.timezone, floor_s=settings.schedule_min_interval_s, now_ms=rec.updated_ms
    )


async def _entry(request: Request, ctx: TenantContext) -> Entry:
    schedule_id = path_id(request, "schedule_id", "schedule")
    entry = (await _scheduler(request)).log.book.entries.get(schedule_id)
    if entry is None or entry.record.tenant_id != ctx.id:
        raise NotFound("schedule not found")
    return entry


async def _create(request: Request, ctx: TenantContext, body: bytes) -> tuple[int, Any]:
    scheduler = await _scheduler(request)
    settings = state_of(request).settings
    req = validate(ScheduleCreate, parse_json(body), "schedule")
    _check_target(request, req.target)
    if len(scheduler.log.book.of_tenant(ctx.id)) >= settings.max_schedules_per_tenant:
        raise Conflict(f"this tenant has {settings.max_schedules_per_tenant} schedules, the most it may have: delete one first")
    now_ms = scheduler.now_ms()
    rec = ScheduleRecord(
        schedule_id="sch_" + new_id(),
        tenant_id=ctx.id,
        revision=0,
        name=req.name,
        target=req.target,
        cron=req.cron.strip() if req.cron is not None else None,
        interval_s=req.interval_s,
        timezone=req.timezone or "UTC",
        catch_up=req.catch_up or "latest",
        paused=req.paused,
        created_ms=now_ms,
        updated_ms=now_ms,
        since_ms=now_ms,
    )
    _check_timing(request, rec)
    await scheduler.log.define(rec)
    return 201, view_of(scheduler.log.book.entries[rec.schedule_id]).model_dump(mode="json")


create_schedule = idempotent(_create)


async def list_schedules(request: Request) -> Response:
    ctx = await require_tenant(request)
    entries = sorted((await _scheduler(request)).log.book.of_tenant(ctx.id), key=lambda e: (e.record.created_ms, e.record.schedule_id))
    return JSONResponse(ScheduleList(schedules=[view_of(e) for e in entries]).model_dump(mode="json"))


async def get_schedule(request: Request) -> Response:
    ctx = await require_tenant(request)
    return JSONResponse(view_of(await _entry(request, ctx)).model_dump(mode="json"))


async def patch_schedule(request: Request) -> Response:
    ctx = await require_tenant(request)
    entry = await _entry(request, ctx)
    raw = await json_body(request, state_of(request).settings.max_body_bytes)
    if not isinstance(raw, dict):
        raise HTTPError(422, "a schedule change is a JSON object")
    req = validate(SchedulePatch, raw, "schedule change")
    scheduler = await _scheduler(request)
    old = entry.record
    now_ms = scheduler.now_ms()
    changes: dict[str, Any] = {k: getattr(req, k) for k in req.model_fields_set if k not in ("cron", "interval_s")}
    if req.cron is not None:
        changes.update(cron=req.cron.strip(), interval_s=None)
    if req.interval_s is not None:
        changes.update(interval_s=req.interval_s, cron=None)
    if "timezone" in changes and changes["timezone"] is None:
        changes["timezone"] = "UTC"
    if "catch_up" in changes and changes["catch_up"] is None:
        changes["catch_up"] = "latest"
    if "paused" in changes and changes["paused"] is None:
        del changes["paused"]
    if "target" in changes:
        if changes["target"] is None:
            del changes["target"]
        else:
            _check_target(request, changes["target"])
    rec = old.model_copy(update={**changes, "revision": old.revision + 1, "updated_ms": now_ms})
    retimed = (rec.cron, rec.interval_s, rec.timezone) != (old.cron, old.interval_s, old.timezone)
    resumed = old.paused and not rec.paused
    if retimed or resumed:
        # A new timing or a resume counts from now: no slot from before it fires.
        rec = rec.model_copy(update={"since_ms": now_ms})
    rec = ScheduleRecord.model_validate(rec.model_dump())  # the record as the log will hold it: bounded again
    if retimed:
        _check_timing(request, rec)
    await scheduler.log.define(rec)
    return JSONResponse(view_of(scheduler.log.book.entries[rec.schedule_id]).model_dump(mode="json"))


async def delete_schedule(request: Request) -> Response:
    ctx = await require_tenant(request)
    entry = await _entry(request, ctx)
    await (await _scheduler(request)).log.delete(entry.record.schedule_id, ctx.id)
    return Response(status_code=204)
