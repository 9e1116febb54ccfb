"""The agent card of one agent: where its JSON-RPC endpoint is, what it can do, how to authenticate.

Served to a tenant's key only (``GET /v1/a2a/{agent}/.well-known/agent-card.json``): the catalog is
the tenant's view, like ``/v1/models``. The endpoint URL is built from the URL the caller used.
"""

from __future__ import annotations

from a2a.types import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    HTTPAuthSecurityScheme,
    SecurityRequirement,
    SecurityScheme,
)
from a2a.utils.constants import PROTOCOL_VERSION_1_0

from schemas.agents import AgentSpec

SCHEME = "agentstreamApiKey"


def agent_card(spec: AgentSpec, base_url: str) -> AgentCard:
    url = f"{base_url.rstrip('/')}/v1/a2a/{spec.name}"
    about = f"agentstream agent {spec.name!r}: {spec.system_prompt[:200]}"
    card = AgentCard(
        name=spec.name,
        description=about,
        version="1.0.0",
        supported_interfaces=[AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version=PROTOCOL_VERSION_1_0)],
        provider=AgentProvider(organization="agentstream", url=base_url),
        capabilities=AgentCapabilities(streaming=True, push_notifications=False, extended_agent_card=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain", "application/json"],
        skills=[
            AgentSkill(
                id=spec.name,
                name=spec.name,
                description=f"Runs the agent (tools: {', '.join(spec.tools) or 'none'}) over the message and its context's history.",
                tags=["agentstream", *spec.tools],
            )
        ],
    )
    card.security_schemes[SCHEME].CopyFrom(
        SecurityScheme(
            http_auth_security_scheme=HTTPAuthSecurityScheme(
                scheme="bearer", bearer_format="agentstream API key", description="Authorization: Bearer <API key of the tenant>"
            )
        )
    )
    requirement = SecurityRequirement()
    requirement.schemes[SCHEME].SetInParent()
    card.security_requirements.append(requirement)
    return card
