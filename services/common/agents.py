"""The agent catalog: a YAML file (embedded default) and, optionally, an agent-management service.

Sources are a small protocol (``async get(name)``); the catalog asks them in order. The HTTP source
caches what it fetched for ``ttl_s`` and serves a stale entry when the service is down, so a brief
outage does not fail executions of agents it already knows.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from pathlib import Path
from typing import Protocol

import httpx
import yaml
from pydantic import ValidationError

from schemas.agents import AgentSpec
from services.common.errors import AgentstreamError

DEFAULT_AGENTS: dict[str, AgentSpec] = {
    "default": AgentSpec(name="default"),
    # Answers from documents through the orchestrator's Query Service (examples/services in the demo).
    "docs": AgentSpec(
        name="docs",
        system_prompt="Answer questions about the documents with knowledge_search; cite the sources.",
        tools=("knowledge_search", "embed", "calculator"),
    ),
}


class AgentCatalogError(AgentstreamError):
    retriable = False


class AgentServiceUnavailable(AgentstreamError):
    retriable = True


def _check_providers(spec: AgentSpec, known: frozenset[str], origin: str) -> None:
    for entry in (spec.provider, *spec.fallback):
        name = entry.partition(":")[0]
        if name not in known:
            raise AgentCatalogError(f"{origin}: agent {spec.name!r} names unknown provider {name!r}; known providers: {sorted(known)}")


def load_agents(path: Path | None, *, providers: Iterable[str] | None = None) -> dict[str, AgentSpec]:
    """Read the agents file; with ``providers``, refuse agents naming any other provider."""
    if path is None:
        return dict(DEFAULT_AGENTS)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AgentCatalogError(f"cannot read agents file {path}: {exc}") from exc
    entries = raw.get("agents", raw) if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise AgentCatalogError(f"{path}: expected a mapping `agents: {{name: {{provider: ..., model: ...}}}}`")
    known = frozenset(providers) if providers is not None else None
    agents: dict[str, AgentSpec] = {}
    for name, body in entries.items():
        try:
            agents[name] = AgentSpec.model_validate({"name": name, **(body or {})})
        except (ValidationError, TypeError) as exc:
            raise AgentCatalogError(f"{path}: agent {name!r} is invalid: {exc}") from exc
        if known is not None:
            _check_providers(agents[name], known, str(path))
    return agents


class AgentSource(Protocol):
    async def get(self, name: str) -> AgentSpec | None: ...


class StaticAgents:
    def __init__(self, agents: dict[str, AgentSpec]) -> None:
        self.agents = agents

    async def get(self, name: str) -> AgentSpec | None:
        return self.agents.get(name)


class HttpAgents:
    """``GET {base_url}/agents/{name}`` -> an AgentSpec as JSON; 404 means no such agent."""

    def __init__(self, base_url: str, *, ttl_s: float = 30.0, timeout_s: float = 3.0, providers: Iterable[str] | None = None) -> None:
        self._base_url = base_url.rstrip("/")
        self._ttl = ttl_s
        self._known = frozenset(providers) if providers is not None else None
        self._client = httpx.AsyncClient(timeout=timeout_s)
        self._cache: dict[str, tuple[float, AgentSpec | None]] = {}

    async def aclose(self) -> None:
        await self._client.aclose()

    async def get(self, name: str) -> AgentSpec | None:
        cached = self._cache.get(name)
        if cached is not None and time.monotonic() - cached[0] < self._ttl:
            return cached[1]
        try:
            response = await self._client.get(f"{self._base_url}/agents/{name}")
        except httpx.HTTPError as exc:
            if cached is not None:
                return cached[1]  # stale beats failing while the service is down
            raise AgentServiceUnavailable(
                f"the agent service at {self._base_url} is unreachable ({type(exc).__name__}: {exc}); "
                "check AGENTSTREAM_EXECUTOR_AGENT_SERVICE_URL"
            ) from exc
        spec = self._parse(name, response)
        self._cache[name] = (time.monotonic(), spec)
        return spec

    def _parse(self, name: str, response: httpx.Response) -> AgentSpec | None:
        if response.status_code == 404:
            return None
        if response.status_code >= 400:
            raise AgentServiceUnavailable(f"the agent service at {self._base_url} answered HTTP {response.status_code} for {name!r}")
        try:
            spec = AgentSpec.model_validate_json(response.content)
        except ValidationError as exc:
            raise AgentCatalogError(f"the agent service sent an invalid agent {name!r}: {exc}") from exc
        if self._known is not None:
            _check_providers(spec, self._known, "agent service")
        stdio = [server.name for server in spec.mcp_servers if server.stdio]
        if stdio:  # a command run on the executor's host: only the operator's own agents file may name one
            raise AgentCatalogError(f"the agent service sent agent {name!r} with stdio MCP servers {stdio}; only the agents file may")
        return spec


class AgentCatalog:
    """Asks each source in order; the first that knows the name wins."""

    def __init__(self, *sources: AgentSource) -> None:
        self.sources = sources

    async def get(self, name: str) -> AgentSpec | None:
        for source in self.sources:
            spec = await source.get(name)
            if spec is not None:
                return spec
        return None
