"""What a model provider is: something that streams one turn of a chat as text and tool calls."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol

from schemas.events import Usage
from services.common.errors import AgentstreamError


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str  # JSON text as the model produced it; validated by the tool layer


@dataclass(frozen=True, slots=True)
class ToolSpec:
    name: str
    description: str
    parameters: dict[str, Any]


@dataclass(frozen=True, slots=True)
class TextDelta:
    text: str


@dataclass(frozen=True, slots=True)
class TurnEnd:
    tool_calls: tuple[ToolCall, ...] = ()
    usage: Usage = field(default_factory=Usage)


Chunk = TextDelta | TurnEnd


@dataclass(frozen=True, slots=True)
class ModelRequest:
    model: str
    messages: tuple[dict[str, Any], ...]
    tools: tuple[ToolSpec, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)


class ProviderError(AgentstreamError):
    """A model call failed. ``retry_after`` is the server's own hint (Retry-After), in seconds."""

    def __init__(self, message: str, *, retriable: bool, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retriable = retriable
        self.retry_after = retry_after


class Provider(Protocol):
    name: str
    default_model: str

    def stream(self, request: ModelRequest) -> AsyncIterator[Chunk]:
        """Yield text deltas as they come, then exactly one TurnEnd."""
        ...
