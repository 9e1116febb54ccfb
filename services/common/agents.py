"""The agent catalog: a YAML file (embedded default) mapping names to AgentSpec."""

from __future__ import annotations

from pathlib import Path

import yaml
from pydantic import ValidationError

from schemas.agents import AgentSpec

DEFAULT_AGENTS: dict[str, AgentSpec] = {
    "default": AgentSpec(name="default"),
}


class AgentCatalogError(Exception):
    retriable = False


def load_agents(path: Path | None) -> dict[str, AgentSpec]:
    if path is None:
        return dict(DEFAULT_AGENTS)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise AgentCatalogError(f"cannot read agents file {path}: {exc}") from exc
    entries = raw.get("agents", raw) if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise AgentCatalogError(f"{path}: expected a mapping `agents: {{name: {{provider: ..., model: ...}}}}`")
    agents: dict[str, AgentSpec] = {}
    for name, body in entries.items():
        try:
            agents[name] = AgentSpec.model_validate({"name": name, **(body or {})})
        except ValidationError as exc:
            raise AgentCatalogError(f"{path}: agent {name!r} is invalid: {exc}") from exc
    return agents
