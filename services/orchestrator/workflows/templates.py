"""A step's input from the run's input and earlier steps' outputs: ``{{ input }}``,
``{{ steps.NAME.output }}``, ``{{ steps.NAME.result.FIELD.0 }}``. Substitution only (a path into
data, never an expression), so a template cannot run code; a value that is not text is its JSON."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from services.common.errors import InvalidInput

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}\s]*)\s*\}\}")


class TemplateError(InvalidInput):
    """A template that names something that is not there, or renders too long."""


def references(template: str) -> Iterator[tuple[str, ...]]:
    """Every placeholder's path (``("steps", "a", "output")``); a malformed one raises."""
    for match in _PLACEHOLDER.finditer(template):
        path = tuple(match.group(1).split("."))
        if path == ("input",):
            yield path
        elif len(path) >= 3 and path[0] == "steps" and ((path[2] == "output" and len(path) == 3) or path[2] == "result"):
            yield path
        else:
            raise TemplateError(
                f"template placeholder {{{{ {match.group(1)[:100]} }}}}: use input, steps.NAME.output or steps.NAME.result.FIELD"
            )


def steps_named(template: str) -> set[str]:
    return {path[1] for path in references(template) if path[0] == "steps"}


def render(template: str, *, input: str, steps: Mapping[str, Mapping[str, Any]], max_chars: int) -> str:
    """``steps``: name -> {"output": text or None, "result": data}. A step that was skipped renders as ""."""

    def value(match: re.Match[str]) -> str:
        path = match.group(1).split(".")
        if path == ["input"]:
            return input
        step = steps.get(path[1])
        if step is None:
            raise TemplateError(f"template names step {path[1]!r}, which has no output")
        current: Any = step.get(path[2])
        for part in path[3:]:
            if isinstance(current, Mapping) and part in current:
                current = current[part]
            elif isinstance(current, list) and part.isdigit() and int(part) < len(current):
                current = current[int(part)]
            else:
                raise TemplateError(f"template path {'.'.join(path)!r} is not in the step's result")
        if current is None:
            return ""
        return current if isinstance(current, str) else orjson.dumps(current).decode()

    list(references(template))  # malformed placeholders fail before any substitution
    out = _PLACEHOLDER.sub(value, template)
    if len(out) > max_chars:
        raise TemplateError(f"the rendered template has {len(out)} characters; at most {max_chars}")
    return out


def render_value(value: Any, **kwargs: Any) -> Any:
    """A job's payload: every string in it (at any depth) is a template."""
    if isinstance(value, str):
        return render(value, **kwargs)
    if isinstance(value, list):
        return [render_value(v, **kwargs) for v in value]
    if isinstance(value, dict):
        return {k: render_value(v, **kwargs) for k, v in value.items()}
    return value
