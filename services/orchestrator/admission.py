"""Admission: a tenant's limits (requests and tokens per minute, concurrent executions) before any
work is recorded. Over a limit is ``RateLimited`` with the limiter's ``retry_after``."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from services.common.errors import RateLimited
from services.common.observability import metrics
from services.orchestrator.auth import TenantContext
from services.orchestrator.limits import RateLimiter

log = logging.getLogger(__name__)


async def admit(limiter: RateLimiter, ctx: TenantContext, execution_ids: Sequence[str], *, slots: bool, slot_ttl_s: float) -> None:
    """Count one request; check tokens; take a concurrency slot per execution (held ``slot_ttl_s`` at most)."""
    limits = ctx.limits
    retry = await limiter.hit_request(ctx.id, limits.requests_per_minute)
    if retry is not None:
        metrics.RATE_LIMITED.labels(tenant=ctx.id, limit="requests_per_minute").inc()
        raise RateLimited(f"rate limit: more than {limits.requests_per_minute} requests per minute", retry_after=retry)
    retry = await limiter.check_tokens(ctx.id, limits.tokens_per_minute)
    if retry is not None:
        metrics.RATE_LIMITED.labels(tenant=ctx.id, limit="tokens_per_minute").inc()
        raise RateLimited(f"rate limit: more than {limits.tokens_per_minute} tokens per minute used", retry_after=retry)
    if not slots:
        return
    taken: list[str] = []
    for execution_id in execution_ids:
        retry = await limiter.acquire_slot(ctx.id, execution_id, limits.concurrent, slot_ttl_s)
        if retry is not None:
            await release_slots(limiter, ctx.id, taken)
            metrics.RATE_LIMITED.labels(tenant=ctx.id, limit="concurrent").inc()
            raise RateLimited(f"concurrency limit: {limits.concurrent} executions already running", retry_after=retry)
        taken.append(execution_id)


async def release_slots(limiter: RateLimiter, tenant_id: str, execution_ids: Sequence[str]) -> None:
    for execution_id in execution_ids:
        try:
            await limiter.release_slot(tenant_id, execution_id)
        except Exception:  # the slot expires with its deadline anyway
            log.warning("could not release the concurrency slot of %s", execution_id, exc_info=True)
