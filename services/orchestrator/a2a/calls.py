"""One A2A call: the authenticated request, its tenant and agent, carried in the SDK's call context;
our errors as A2A errors; the position a resubscribe names (``Last-Event-ID``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from a2a.server.context import ServerCallContext
from a2a.server.routes.common import DefaultServerCallContextBuilder
from a2a.utils.errors import InvalidParamsError, TaskNotFoundError
from starlette.exceptions import HTTPException
from starlette.requests import Request

from services.common.errors import DomainError
from services.orchestrator.auth import TenantContext
from services.orchestrator.positions import START, group_position
from services.orchestrator.problems import problem

CALL = "agentstream.a2a"  # the key of the call in the request's scope and the SDK's call context


@dataclass(frozen=True)
class Call:
    request: Request
    tenant: TenantContext
    agent: str


class ContextBuilder(DefaultServerCallContextBuilder):
    """The SDK's call context, with our call (authenticated request, tenant, agent) in its state."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[CALL] = request.scope[CALL]
        return context


def call_of(context: ServerCallContext, tenant: str = "") -> Call:
    call = context.state[CALL]
    assert isinstance(call, Call)
    if tenant and tenant != call.tenant.id:  # the tenant is the API key's, never the request's
        raise InvalidParamsError(f"tenant {tenant!r} is not the API key's: leave it empty")
    return call


def translated(exc: DomainError) -> Exception:
    """Our refusals as A2A errors; limits and outages stay HTTP statuses (429/503 + Retry-After)."""
    p = problem(exc)
    if p.status in (413, 429, 503):
        return HTTPException(p.status, p.error, headers=p.headers)
    if p.status == 404:
        return TaskNotFoundError(p.error)
    return InvalidParamsError(p.error)


@contextlib.contextmanager
def a2a_errors() -> Iterator[None]:
    try:
        yield
    except DomainError as exc:
        raise translated(exc) from None


def position(request: Request) -> tuple[int, int]:
    raw = request.headers.get("last-event-id")
    if raw is None:
        return START
    try:
        return group_position(raw)
    except ValueError as exc:
        raise InvalidParamsError(f"Last-Event-ID: {exc}") from None
