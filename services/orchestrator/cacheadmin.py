"""``DELETE /v1/admin/tenants/{tenant_id}/cache``: drop one tenant's cached Query and Embedding
results (servicecache.py), behind the admin token. A store that fails answers 503, not 500."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from services.common.errors import NotFound
from services.orchestrator.admin import _require_admin
from services.orchestrator.http import path_id, state_of


async def invalidate_cache(request: Request) -> Response:
    _require_admin(request)
    tenant_id = path_id(request, "tenant_id", "tenant")
    coordinator = state_of(request).runtime.coordinator
    if coordinator.cache is None:
        raise NotFound("the result cache is off (AGENTSTREAM_RESULT_CACHE=off)")
    dropped = await coordinator.invalidate_tenant(tenant_id)  # Unavailable (503) if the store or Kafka does not answer
    return JSONResponse({"tenant_id": tenant_id, "invalidated": dropped})
