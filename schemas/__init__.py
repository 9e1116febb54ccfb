"""The agentstream contract: event and API models, topic names. Imports nothing of ours."""

from schemas.events import (
    SCHEMA_VERSION,
    TERMINAL_TYPES,
    Event,
    EventAdapter,
    ExecutionCancelled,
    ExecutionCancelRequested,
    ExecutionCompleted,
    ExecutionFailed,
    ExecutionRequested,
    ExecutionRestarted,
    ExecutionStarted,
    JobCompleted,
    TokenDelta,
    ToolCallCompleted,
    ToolCallStarted,
    Usage,
)
from schemas.topics import Topics

__all__ = [
    "SCHEMA_VERSION",
    "TERMINAL_TYPES",
    "Event",
    "EventAdapter",
    "ExecutionCancelRequested",
    "ExecutionCancelled",
    "ExecutionCompleted",
    "ExecutionFailed",
    "ExecutionRequested",
    "ExecutionRestarted",
    "ExecutionStarted",
    "JobCompleted",
    "TokenDelta",
    "ToolCallCompleted",
    "ToolCallStarted",
    "Topics",
    "Usage",
]
