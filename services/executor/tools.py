"""Tools an agent may call: a protocol, a dict registry, and the built-ins (calculator, clock)."""

from __future__ import annotations

import ast
import json
import operator
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

import jsonschema

from services.common.errors import AgentstreamError
from services.executor.emitter import EventEmitter
from services.executor.providers.base import ToolSpec


class ToolError(AgentstreamError):
    """A tool failed; the message goes back to the model as the tool's error result."""

    def __init__(self, message: str, *, retriable: bool = False) -> None:
        super().__init__(message)
        self.retriable = retriable


class ToolDefinitionError(AgentstreamError):
    """A tool cannot be registered (bad schema, refused URL); raised at load time, not per call."""

    retriable = False


class Tool(Protocol):
    spec: ToolSpec

    async def __call__(self, arguments: dict[str, Any]) -> Any: ...


def check_schema(name: str, parameters: Any) -> dict[str, Any]:
    """The tool's parameters must be a JSON Schema (2020-12) describing an object."""
    if not isinstance(parameters, dict):
        raise ToolDefinitionError(f"tool {name!r}: parameters must be a JSON Schema object, got {type(parameters).__name__}")
    try:
        jsonschema.Draft202012Validator.check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise ToolDefinitionError(f"tool {name!r}: parameters are not a valid JSON Schema: {exc.message}") from exc
    if parameters.get("type", "object") != "object":
        raise ToolDefinitionError(f"tool {name!r}: parameters must describe an object (type: object)")
    return parameters


def parse_arguments(tool: Tool, raw: str) -> dict[str, Any]:
    """Decode and validate the model's arguments against the tool's JSON Schema."""
    try:
        args = json.loads(raw or "{}")
    except json.JSONDecodeError as exc:
        raise ToolError(f"arguments are not valid JSON: {exc.msg} at position {exc.pos}") from exc
    if not isinstance(args, dict):
        raise ToolError("arguments must be a JSON object")
    try:
        jsonschema.Draft202012Validator(tool.spec.parameters).validate(args)
    except jsonschema.ValidationError as exc:
        raise ToolError(f"arguments do not match the schema: {exc.message}") from exc
    return args


_OPS: dict[type, Callable[..., Any]] = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
    ast.USub: operator.neg,
    ast.UAdd: operator.pos,
}


def _eval(node: ast.AST) -> float | int:
    if isinstance(node, ast.Expression):
        return _eval(node.body)
    if isinstance(node, ast.Constant) and isinstance(node.value, int | float) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _eval(node.left), _eval(node.right)
        if isinstance(node.op, ast.Pow) and abs(right) > 100:
            raise ToolError("exponent too large")
        return _OPS[type(node.op)](left, right)  # type: ignore[no-any-return]  # operator.* return Any in typeshed
    if isinstance(node, ast.UnaryOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_eval(node.operand))  # type: ignore[no-any-return]  # operator.* return Any in typeshed
    raise ToolError(f"unsupported expression element: {type(node).__name__}")


class Calculator:
    spec = ToolSpec(
        name="calculator",
        description="Evaluate an arithmetic expression (+ - * / // % ** and parentheses).",
        parameters={
            "type": "object",
            "properties": {"expression": {"type": "string", "maxLength": 200}},
            "required": ["expression"],
            "additionalProperties": False,
        },
    )

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        try:
            tree = ast.parse(arguments["expression"], mode="eval")
        except SyntaxError as exc:
            raise ToolError(f"not an arithmetic expression: {exc.msg}") from exc
        try:
            value = _eval(tree)
        except ZeroDivisionError as exc:
            raise ToolError("division by zero") from exc
        return int(value) if isinstance(value, float) and value.is_integer() else value


class Clock:
    spec = ToolSpec(
        name="clock",
        description="The current date and time in UTC (ISO 8601).",
        parameters={"type": "object", "properties": {}, "additionalProperties": False},
    )

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        return datetime.now(UTC).isoformat()


class AskUser:
    """Ask the user and wait for the reply (issue 16): the loop parks the run on it (approvals.py),
    durably, like a call waiting for approval; the reply posted to the orchestrator is its result."""

    spec = ToolSpec(
        name="ask_user",
        description="Ask the user a question and wait for the answer (it may take hours).",
        parameters={
            "type": "object",
            "properties": {"question": {"type": "string", "maxLength": 4096}},
            "required": ["question"],
            "additionalProperties": False,
        },
    )

    async def __call__(self, arguments: dict[str, Any]) -> Any:
        raise ToolError("ask_user is answered by the user, not run")  # the loop never calls it


@dataclass(frozen=True)
class ToolContext:
    """The tool call being run, for tools that report progress or act for the execution (jobtools.py)."""

    emitter: EventEmitter
    call_id: str
    tool: str
    step: int
    idempotency_key: str = ""  # execution id + call id: stable across attempts (HTTP tools send it)


# Set by the agent loop around each tool call; each call runs in its own task, so calls never mix.
current_tool_call: ContextVar[ToolContext | None] = ContextVar("current_tool_call", default=None)


def builtin_tools() -> dict[str, Tool]:
    tools: list[Tool] = [Calculator(), Clock(), AskUser()]
    return {t.spec.name: t for t in tools}
