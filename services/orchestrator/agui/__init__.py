"""The AG-UI door: run an agent from a ``RunAgentInput`` and stream AG-UI events over SSE.

``run`` (the endpoint: input checks, thread = session, run = idempotent submission, resumable
stream) and ``mapping`` (our events -> AG-UI events). See docs/protocols.md.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route


def routes() -> list[BaseRoute]:
    from services.orchestrator.agui import run

    return [Route("/v1/agui/{agent}", run.run_agent, methods=["POST"])]
