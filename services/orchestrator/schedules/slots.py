"""When a schedule fires: its slots (cron in a time zone, through ``croniter``; or a fixed interval),
which slot is due now, and the checks a timing passes before it is accepted (``InvalidInput``: 422).

Slots are unix milliseconds. An interval's slots are ``anchor + k * interval`` (the anchor is the
schedule's creation), a cron's are the expression's matches in its zone (DST gaps and folds as
``croniter`` resolves them).
"""

from __future__ import annotations

import itertools
from datetime import datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import CroniterBadCronError, CroniterBadDateError, CroniterError, croniter

from schemas.schedules import CatchUp, ScheduleRecord
from services.common.errors import InvalidInput

_ALIASES = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly"})
_GAP_SAMPLES = 16  # slots looked at for a cron's shortest gap


def zone(name: str) -> ZoneInfo:
    """The IANA zone ``name``; ``InvalidInput`` for a name the zone database does not know."""
    if name.startswith(("/", ".")) or ".." in name:  # ZoneInfo reads files: no paths
        raise InvalidInput(f"unknown time zone {name!r}", detail={"timezone": name})
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise InvalidInput(f"unknown time zone {name!r}: use an IANA name such as UTC or Europe/Paris", detail={"timezone": name}) from exc


def check_timing(*, cron: str | None, interval_s: int | None, timezone: str, floor_s: float, now_ms: int) -> None:
    """A timing that fires, and not more often than every ``floor_s``; else ``InvalidInput`` with the reason."""
    tz = zone(timezone)
    if interval_s is not None:
        if interval_s < floor_s:
            raise InvalidInput(f"interval_s must be at least {floor_s:g} seconds", detail={"interval_s": interval_s})
        return
    assert cron is not None
    expr = cron.strip()
    if expr.lower() not in _ALIASES and len(expr.split()) != 5:
        raise InvalidInput(
            "cron must have five fields (minute hour day-of-month month day-of-week) or be an alias such as @hourly",
            detail={"cron": cron},
        )
    if not croniter.is_valid(expr):
        raise InvalidInput(f"cron expression {cron!r} is not valid", detail={"cron": cron})
    try:
        it = croniter(expr, datetime.fromtimestamp(now_ms / 1000, tz))
        slots = [it.get_next(float) for _ in range(_GAP_SAMPLES)]
    except CroniterBadDateError as exc:
        raise InvalidInput(f"cron expression {cron!r} never fires", detail={"cron": cron}) from exc
    except (CroniterBadCronError, CroniterError) as exc:
        raise InvalidInput(f"cron expression {cron!r} is not valid: {exc}", detail={"cron": cron}) from exc
    gap = min(b - a for a, b in itertools.pairwise(slots))
    if gap < floor_s:
        raise InvalidInput(f"cron expression {cron!r} fires every {gap:g} s, more often than every {floor_s:g} s", detail={"cron": cron})


def next_after(rec: ScheduleRecord, after_ms: int) -> int | None:
    """The first slot strictly after ``after_ms`` (None: the expression never fires again)."""
    if rec.interval_s is not None:
        step = rec.interval_s * 1000
        k = max(0, (after_ms - rec.created_ms) // step + 1)
        return rec.created_ms + k * step
    assert rec.cron is not None
    try:
        it = croniter(rec.cron.strip(), datetime.fromtimestamp(after_ms / 1000, ZoneInfo(rec.timezone)))
        following: float = it.get_next(float)
        return round(following * 1000)
    except (CroniterError, ZoneInfoNotFoundError, ValueError):
        return None


def latest_at(rec: ScheduleRecord, now_ms: int) -> int | None:
    """The last slot at or before ``now_ms``."""
    if rec.interval_s is not None:
        step = rec.interval_s * 1000
        if now_ms < rec.created_ms:
            return None
        return rec.created_ms + (now_ms - rec.created_ms) // step * step
    assert rec.cron is not None
    try:
        it = croniter(rec.cron.strip(), datetime.fromtimestamp((now_ms + 1) / 1000, ZoneInfo(rec.timezone)))
        previous: float = it.get_prev(float)
        return round(previous * 1000)
    except (CroniterError, ZoneInfoNotFoundError, ValueError):
        return None


def on_grid(rec: ScheduleRecord, slot_ms: int) -> bool:
    """Whether ``slot_ms`` is one of the schedule's slots (a claim of any other time is no bid)."""
    if rec.interval_s is not None:
        return slot_ms > rec.created_ms and (slot_ms - rec.created_ms) % (rec.interval_s * 1000) == 0
    return next_after(rec, slot_ms - 1) == slot_ms


def floor_of(rec: ScheduleRecord, last_slot_ms: int | None) -> int:
    """Slots at or before this never fire: the last one claimed, or the schedule's ``since``."""
    return max(rec.since_ms, last_slot_ms if last_slot_ms is not None else -1)


def due(rec: ScheduleRecord, last_slot_ms: int | None, now_ms: int, *, grace_ms: int) -> int | None:
    """The slot to claim now, or None. The next slot after the floor when it is due; if that one is
    older than ``grace_ms`` (missed while no replica ran), the schedule's ``catch_up`` decides:
    ``latest`` the newest due slot once, ``all`` each in turn, ``none`` only one still within the grace."""
    if rec.paused:
        return None
    candidate = next_after(rec, floor_of(rec, last_slot_ms))
    if candidate is None or candidate > now_ms:
        return None
    if candidate >= now_ms - grace_ms:
        return candidate
    policy: CatchUp = rec.catch_up
    if policy == "all":
        return candidate
    if policy == "latest":
        return latest_at(rec, now_ms)
    fresh = next_after(rec, now_ms - grace_ms - 1)
    return fresh if fresh is not None and fresh <= now_ms else None
