"""The A2A door: an agent card per agent, and A2A's JSON-RPC methods over executions and sessions.

``endpoint`` (authentication, bounds, the card, the SDK's JSON-RPC dispatcher), ``handler`` (the
SDK's ``RequestHandler`` over our state), ``calls`` (the call context, errors, positions), ``send``
(message checks and submission), ``tasks`` (tasks as executions, their streams), ``mapping`` (our
events -> A2A task events), ``card``.
See docs/protocols.md.
"""

from __future__ import annotations

from starlette.routing import BaseRoute, Route


def routes() -> list[BaseRoute]:
    from services.orchestrator.a2a import endpoint

    return [
        Route("/v1/a2a/{agent}/.well-known/agent-card.json", endpoint.get_card, methods=["GET"]),
        Route("/v1/a2a/{agent}", endpoint.rpc, methods=["POST"]),
    ]
