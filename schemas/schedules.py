"""Schedules (issue 20): the API models and the records of the compacted ``schedules`` topic.

The topic is the system of record. Per schedule (one partition: the orchestrator picks it from the
schedule id) it holds, under key ``<schedule_id>``, the latest ``ScheduleRecord`` (a tombstone when
deleted) and, under key ``<schedule_id>:claim:<slot_ms>``, the ``ScheduleClaim``s that replicas write
for a due slot. In log order the first claim of a slot later than the last claimed one wins and
fires; every replica reads the same order, so each slot fires once whichever replicas run.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_validator

from schemas.bounds import MAX_INT64, Id, JsonObject
from schemas.events import MAX_INPUT_CHARS
from schemas.topics import Priority

CatchUp = Literal["latest", "all", "none"]
MAX_CRON_CHARS = 128
MAX_TIMEZONE_CHARS = 64
MAX_INTERVAL_S = 366 * 24 * 3600  # a year and a day: a longer one is a cron expression's job
MAX_NAME_CHARS = 200
SlotMs = StrictInt  # a slot: the scheduled time, unix milliseconds


class ExecutionTarget(BaseModel):
    """What a firing runs: an ordinary execution. ``kind`` tags the union other targets join (a workflow run)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["execution"] = "execution"
    agent: str = Field(default="default", min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.\-]+$")
    input: str = Field(min_length=1, max_length=MAX_INPUT_CHARS)
    session_id: Id | None = None
    variables: JsonObject = Field(default_factory=dict)
    priority: Priority = "standard"


class _Timing(BaseModel):
    cron: str | None = Field(default=None, min_length=1, max_length=MAX_CRON_CHARS, description="Five-field cron expression, in `timezone`")
    interval_s: StrictInt | None = Field(default=None, ge=1, le=MAX_INTERVAL_S, description="Every N seconds (at least the floor)")
    timezone: str | None = Field(default=None, min_length=1, max_length=MAX_TIMEZONE_CHARS, description="IANA zone, e.g. Europe/Paris")
    catch_up: CatchUp | None = Field(
        default=None,
        description="Slots missed while no replica ran (older than the misfire grace): fire the latest once, all, or none",
    )


class ScheduleCreate(_Timing):
    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    target: ExecutionTarget
    paused: bool = False

    @model_validator(mode="after")
    def _one_timing(self) -> ScheduleCreate:
        if (self.cron is None) == (self.interval_s is None):
            raise ValueError("give exactly one of `cron` and `interval_s`")
        return self


class SchedulePatch(_Timing):
    """What changes; absent fields stay. ``cron`` replaces an interval and ``interval_s`` a cron."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    target: ExecutionTarget | None = None
    paused: bool | None = None

    @model_validator(mode="after")
    def _one_timing(self) -> SchedulePatch:
        if self.cron is not None and self.interval_s is not None:
            raise ValueError("give at most one of `cron` and `interval_s`")
        return self


class ScheduleRecord(BaseModel):
    """A schedule's definition on the log (key: its id). ``revision`` grows with every change;
    ``since_ms``: slots at or before it never fire (creation, a resume, a new timing)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["schedule.defined"] = "schedule.defined"
    schema_version: int = 1
    schedule_id: Id
    tenant_id: Id
    revision: StrictInt = Field(ge=0, le=MAX_INT64)
    name: str | None = Field(default=None, max_length=MAX_NAME_CHARS)
    target: ExecutionTarget
    cron: str | None = Field(default=None, max_length=MAX_CRON_CHARS)
    interval_s: StrictInt | None = Field(default=None, ge=1, le=MAX_INTERVAL_S)
    timezone: str = Field(default="UTC", max_length=MAX_TIMEZONE_CHARS)
    catch_up: CatchUp = "latest"
    paused: bool = False
    created_ms: SlotMs = Field(ge=0, le=MAX_INT64)
    updated_ms: SlotMs = Field(ge=0, le=MAX_INT64)
    since_ms: SlotMs = Field(ge=0, le=MAX_INT64)


class ScheduleClaim(BaseModel):
    """A replica's bid to fire ``slot_ms`` of a schedule (key ``<schedule_id>:claim:<slot_ms>``)."""

    model_config = ConfigDict(frozen=True, extra="ignore")

    type: Literal["schedule.claimed"] = "schedule.claimed"
    schema_version: int = 1
    schedule_id: Id
    tenant_id: Id
    revision: StrictInt = Field(ge=0, le=MAX_INT64)
    slot_ms: SlotMs = Field(ge=0, le=MAX_INT64)
    replica: Id
    claimed_ms: SlotMs = Field(ge=0, le=MAX_INT64)
    # 0: a bid for a due slot. n > 0: a bid to take over a slot won in round n - 1 whose execution
    # never appeared (its replica died between its win and its submit); the first of round n wins it.
    round: StrictInt = Field(default=0, ge=0, le=1000)
    # The winner's note that its slot is decided without an execution (the tenant's limits refused it):
    # nobody takes it over.
    settled: bool = False


class ScheduleView(BaseModel):
    schedule_id: str
    name: str | None = None
    target: ExecutionTarget
    cron: str | None = None
    interval_s: int | None = None
    timezone: str
    catch_up: CatchUp
    paused: bool
    created_at: str
    updated_at: str
    next_fire_at: str | None = Field(default=None, description="The next slot (null while paused)")
    last_fired_at: str | None = Field(default=None, description="The last slot that fired")
    last_execution_id: str | None = Field(default=None, description="The execution of the last slot that fired")


class ScheduleList(BaseModel):
    schedules: list[ScheduleView]
