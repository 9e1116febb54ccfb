"""``GET /v1/usage``: tokens recorded from ``execution.completed``, by tenant, agent or session."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.api import UsageGroup, UsageReport, UsageRow
from services.common.errors import InvalidInput
from services.orchestrator.http import HTTPError, iso, query_time, require_tenant, state_of
from services.orchestrator.store import records

_GROUPS: dict[str, UsageGroup] = {"tenant": "tenant", "agent": "agent", "session": "session"}


async def get_usage(request: Request) -> Response:
    ctx = await require_tenant(request)
    q = request.query_params
    unknown = set(q) - {"group_by", "since", "until", "agent", "session_id", "api_key"}
    if unknown:
        raise InvalidInput(f"unknown query parameters: {sorted(unknown)}")
    group_by = _GROUPS.get(q.get("group_by", "tenant"))
    if group_by is None:
        raise InvalidInput(f"group_by must be one of {list(records.USAGE_GROUPS)}")
    since, until = query_time(request, "since"), query_time(request, "until")
    for name in ("agent", "session_id"):
        if len(q.get(name, "")) > 128:
            raise HTTPError(400, f"query parameter {name!r} is longer than 128 characters")
    async with state_of(request).runtime.store.begin() as conn:
        rows = await records.usage_report(
            conn, ctx.id, group_by=group_by, since=since, until=until, agent_id=q.get("agent"), session_id=q.get("session_id")
        )
    report = UsageReport(group_by=group_by, since=iso(since), until=iso(until), rows=[UsageRow.model_validate(r) for r in rows])
    return JSONResponse(report.model_dump(mode="json", exclude_none=False))
