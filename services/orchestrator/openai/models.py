"""``GET /v1/models``: the agents a tenant can run, as OpenAI models; and what a ``model`` names.

``model`` is an agent's name, or ``agent:model`` for one of the models the agent allows
(``AgentSpec.models``) instead of its own. Every agent of the catalog serves every tenant, as on
``/v1/executions``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from openai.types import Model
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from schemas.agents import AgentSpec
from services.common.errors import NotFound
from services.orchestrator.http import require_tenant, state_of
from services.orchestrator.openai.errors import invalid, openai_errors

_STARTED = int(time.time())  # "created" of every model: agents have no creation time of their own


@dataclass(frozen=True)
class Target:
    agent: str
    model: str | None  # None: the agent's own


def resolve(agents: dict[str, AgentSpec], name: object, *, param: str = "model") -> Target:
    """The agent (and model) a request's ``model`` names; 400 if absent, 404 if unknown."""
    if not isinstance(name, str) or not name:
        raise invalid("you must provide a model parameter: an agent's name", param=param)
    agent_name, _, model = name.partition(":")
    spec = agents.get(agent_name)
    if spec is None:
        raise NotFound(
            f"the model {name!r} does not exist: known agents are {sorted(agents)}", detail={"param": param, "code": "model_not_found"}
        )
    if model and model != spec.model and model not in spec.models:
        allowed = [f"{spec.name}:{m}" for m in (spec.model, *spec.models)]
        raise NotFound(
            f"agent {spec.name!r} does not allow model {model!r}; use one of {allowed}",
            detail={"param": param, "code": "model_not_found"},
        )
    return Target(agent=spec.name, model=model or None)


def _models(agents: dict[str, AgentSpec], created: int) -> list[Model]:
    out = []
    for spec in sorted(agents.values(), key=lambda s: s.name):
        out.append(Model(id=spec.name, object="model", created=created, owned_by="agentstream"))
        out += [Model(id=f"{spec.name}:{m}", object="model", created=created, owned_by="agentstream") for m in spec.models]
    return out


@openai_errors
async def list_models(request: Request) -> Response:
    """The tenant's agents as OpenAI models (``agent``, and ``agent:model`` for each model it allows)."""
    await require_tenant(request)
    state = state_of(request)
    data = [m.model_dump(mode="json") for m in _models(state.agents, _STARTED)]
    return JSONResponse({"object": "list", "data": data})


@openai_errors
async def get_model(request: Request) -> Response:
    """One agent (or ``agent:model``) as an OpenAI model."""
    await require_tenant(request)
    state = state_of(request)
    name = str(request.path_params["model"])
    resolve(state.agents, name)
    found = next(m for m in _models(state.agents, _STARTED) if m.id == name or m.id == name.partition(":")[0])
    return JSONResponse(found.model_copy(update={"id": name}).model_dump(mode="json"))
