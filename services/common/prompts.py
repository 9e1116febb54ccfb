"""An agent's system prompt: a sandboxed Jinja template over the request's variables.

One environment for both sides: the orchestrator renders it at submit, so a request that lacks a
variable is refused there (a 422 naming it) instead of failing in the executor after a 202; the
executor renders it again for the model. ``input`` and ``agent`` are always given by us.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, meta
from jinja2.sandbox import SandboxedEnvironment

from schemas.agents import AgentSpec
from services.common.errors import AgentstreamError

PROVIDED = frozenset({"input", "agent"})

_templates = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False)


class PromptError(AgentstreamError):
    """The agent's prompt cannot be rendered with these variables (``missing``: the undefined name, if one)."""

    retriable = False

    def __init__(self, message: str, *, missing: str | None = None) -> None:
        super().__init__(message)
        self.missing = missing


@functools.lru_cache(maxsize=256)
def _compiled(source: str) -> Template:
    return _templates.from_string(source)


@functools.lru_cache(maxsize=256)
def template_variables(source: str) -> tuple[str, ...]:
    """The variables a prompt template reads that a request must give (all but ``input`` and ``agent``).

    Jinja's own analysis: a name read only under ``{% if name is defined %}`` is listed too (it is
    read), though such a template renders without it; submission renders, so it is not refused."""
    try:
        names = meta.find_undeclared_variables(_templates.parse(source))
    except TemplateError:
        return ()
    return tuple(sorted(names - PROVIDED))


def render_prompt(spec: AgentSpec, variables: Mapping[str, Any], input: str) -> str:
    # A variable named like ours does not replace it (it used to be a TypeError: two values for `input`).
    try:
        return _compiled(spec.system_prompt).render({**variables, "input": input, "agent": spec.name})
    except UndefinedError as exc:
        missing = _undefined_name(exc.message)
        known = missing is not None and missing in template_variables(spec.system_prompt)
        raise PromptError(f"prompt template of agent {spec.name!r}: {exc.message}", missing=missing if known else None) from exc
    except TemplateError as exc:
        raise PromptError(f"prompt template of agent {spec.name!r} cannot be rendered: {exc}") from exc


def _undefined_name(message: str | None) -> str | None:
    # StrictUndefined says "'customer' is undefined" for a missing top-level name.
    if message and message.endswith(" is undefined") and message.startswith("'"):
        name = message[1 : -len(" is undefined") - 1]
        return name if name.isidentifier() else None
    return None
