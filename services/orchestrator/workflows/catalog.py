"""The workflow catalog: a ``workflows:`` mapping in the agents file (beside the agents), or in a
file of its own (``AGENTSTREAM_WORKFLOWS_FILE``). Checked once at start: a step names a known agent,
needs only steps declared before it (so a definition has no cycle), and its templates and its
``when`` name only steps it (transitively) needs."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.workflows import WorkflowSpec
from services.common.errors import AgentstreamError
from services.orchestrator.workflows.templates import TemplateError, steps_named


class WorkflowCatalogError(AgentstreamError):
    retriable = False


def load_workflows(path: Path | None, *, agents: Iterable[str]) -> dict[str, WorkflowSpec]:
    if path is None:
        return {}
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise WorkflowCatalogError(f"cannot read workflows from {path}: {exc}") from exc
    entries = raw.get("workflows", {}) if isinstance(raw, dict) else None
    if not isinstance(entries, dict):
        raise WorkflowCatalogError(f"{path}: expected a mapping `workflows: {{name: {{steps: [...]}}}}`")
    known = frozenset(agents)
    out: dict[str, WorkflowSpec] = {}
    for name, body in entries.items():
        out[str(name)] = parse_workflow(str(name), body, agents=known, origin=str(path))
    return out


def parse_workflow(name: str, body: Any, *, agents: frozenset[str], origin: str = "workflow") -> WorkflowSpec:
    try:
        spec = WorkflowSpec.model_validate({"name": name, **(body or {})})
    except (ValidationError, TypeError) as exc:
        raise WorkflowCatalogError(f"{origin}: workflow {name!r} is invalid: {exc}") from exc
    problem = check(spec, agents)
    if problem is not None:
        raise WorkflowCatalogError(f"{origin}: workflow {name!r}: {problem}")
    return spec


def ancestors(spec: WorkflowSpec) -> dict[str, set[str]]:
    """Each step's transitive needs (only steps declared before it count: the caller checks that)."""
    out: dict[str, set[str]] = {}
    for step in spec.steps:
        found: set[str] = set()
        for need in step.needs:
            found |= {need, *out.get(need, set())}
        out[step.name] = found
    return out


def check(spec: WorkflowSpec, agents: frozenset[str]) -> str | None:
    seen: set[str] = set()
    for step in spec.steps:
        if step.name in seen:
            return f"two steps are named {step.name!r}"
        unknown = [n for n in step.needs if n not in seen]
        if unknown:
            return f"step {step.name!r} needs {unknown}, which are not steps declared before it"
        if step.agent is not None and step.agent not in agents:
            return f"step {step.name!r} runs unknown agent {step.agent!r}; known agents: {sorted(agents)}"
        seen.add(step.name)
    before = ancestors(spec)
    for step in spec.steps:
        try:
            named = steps_named(step.input) | _payload_steps(step.payload)
        except TemplateError as exc:
            return f"step {step.name!r}: {exc}"
        if step.when is not None:
            named.add(step.when.step)
        outside = sorted(named - before[step.name])
        if outside:
            return f"step {step.name!r} uses the output of {outside}: add them to its `needs`"
    if spec.output is not None:
        try:
            outside = sorted(steps_named(spec.output) - seen)
        except TemplateError as exc:
            return f"output: {exc}"
        if outside:
            return f"the output names unknown steps {outside}"
    return None


def _payload_steps(value: Any) -> set[str]:
    if isinstance(value, str):
        return steps_named(value)
    if isinstance(value, list):
        return set().union(*(_payload_steps(v) for v in value)) if value else set()
    if isinstance(value, dict):
        return set().union(*(_payload_steps(v) for v in value.values())) if value else set()
    return set()
