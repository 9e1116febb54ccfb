"""``GET /v1/agents``: the agents a tenant can run, with what a request must give each of them."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.agents import AgentSpec
from schemas.api import AgentInfo, AgentList
from services.common.prompts import template_variables
from services.orchestrator.http import require_tenant, state_of


def agent_info(spec: AgentSpec) -> AgentInfo:
    # Not the prompt itself: it is the operator's configuration, which a tenant may not be meant to read.
    return AgentInfo(
        name=spec.name,
        provider=spec.provider,
        model=spec.model,
        tools=list(spec.tools),
        fallback=list(spec.fallback),
        models=list(spec.models),
        variables=list(template_variables(spec.system_prompt)),
        max_steps=spec.max_steps,
        structured_output=spec.output_schema is not None,
        handoffs=list(spec.handoffs),
    )


async def list_agents(request: Request) -> Response:
    """The agents of the orchestrator's catalog (``AGENTSTREAM_AGENTS_FILE``), by name."""
    await require_tenant(request)
    agents = state_of(request).agents
    return JSONResponse(AgentList(agents=[agent_info(agents[name]) for name in sorted(agents)]).model_dump(mode="json"))
