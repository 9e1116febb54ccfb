"""Bounds on every value that enters from outside: the one validation both services apply.

The orchestrator's API models (``schemas/api.py``) and the Kafka records the executor and the
orchestrator validate (``schemas/events.py``, ``schemas/jobs.py``) use these same types, so an HTTP
request that passes its model yields a record that passes the executor's, and a value that a store,
a serializer or a Kafka client cannot take is refused where it enters, with the field named.

Why these numbers:

* Token counts: integers in ``[0, 2**31 - 1]``. No model call uses two billion tokens; a tenant's
  sum over 2**32 such records still fits a signed 64-bit column (SQLite, PostgreSQL ``BIGINT``) and
  a JavaScript number.
* Cursors (Kafka offsets): ``-1 <= n < 2**63``; -1 is "before the first event" (offsets start at 0).
  Kafka offsets are signed 64-bit, and so are the JSON integers ``orjson`` writes.
* Free-form JSON (variables, params, metadata, tool arguments, job results): at most 32 levels of
  nesting, 200,000 values and 2,000,000 characters of strings; integers signed 64-bit, floats
  finite, keys strings. pydantic's JSON parser stops at 200 levels for a whole record (the executor
  would refuse it) and its serializer at 255 (a 500); 32 leaves the envelope plenty of room.
* Ids (tenant, execution, session, agent, job) and Kafka keys: 1 to 128 characters of
  ``[A-Za-z0-9_.:@-]``: printable, no separators a log line, a header or a URL would need to escape.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, Field, StrictInt, StringConstraints

MAX_TOKENS = 2**31 - 1  # also what a PostgreSQL INTEGER column holds
MAX_CURSOR = 2**63 - 1
MAX_INT64 = 2**63 - 1
MAX_INT32 = 2**31 - 1  # the state store's INTEGER columns (PostgreSQL: 32-bit): attempts, seqs, message seqs
MIN_INT64 = -(2**63)

MAX_JSON_DEPTH = 32
MAX_JSON_VALUES = 200_000
MAX_JSON_CHARS = 2_000_000

ID_PATTERN = r"^[A-Za-z0-9_.:@\-]+$"
MAX_ID_LENGTH = 128
TOPIC_PATTERN = r"^[A-Za-z0-9._\-]+$"  # Kafka's own rule for topic names, at most 249 characters

# Handoffs (issue 20): the agents one agent may hand the conversation to, how many handoffs one
# execution may make (a chain A -> B -> A ... ends there, with a tool error for the model), and the
# reason the model gives (it is shown to clients and kept in the log).
MAX_HANDOFF_TARGETS = 16
MAX_HANDOFFS_PER_EXECUTION = 4
MAX_HANDOFF_REASON_CHARS = 1000
AGENT_NAME_PATTERN = r"^[A-Za-z0-9_.\-]{1,128}$"  # an agent's name (schemas/agents.py); also an Id

_DECIMAL = re.compile(r"-?[0-9]{1,20}")

TokenCount = Annotated[StrictInt, Field(ge=0, le=MAX_TOKENS)]
Cursor = Annotated[StrictInt, Field(ge=-1, le=MAX_CURSOR)]
Attempt = Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]
Seq = Annotated[StrictInt, Field(ge=0, le=MAX_INT32)]
Id = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=ID_PATTERN)]
TopicName = Annotated[str, StringConstraints(min_length=1, max_length=249, pattern=TOPIC_PATTERN)]
AgentName = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH, pattern=AGENT_NAME_PATTERN)]


def json_problem(value: Any) -> str | None:
    """Why ``value`` is not a bounded JSON value, or None.

    Iterative (a deep value cannot blow the stack), stops at the first problem, and checks scalars
    where their container is walked: a flat list of 200,000 numbers costs ~20 ms, small variables ~1 us.
    """
    if not isinstance(value, dict | list | tuple):
        return _scalar_problem(value)
    stack: list[tuple[Any, int]] = [(value, 1)]
    values = chars = 0
    while stack:
        item, depth = stack.pop()
        if depth > MAX_JSON_DEPTH:
            return f"nested deeper than {MAX_JSON_DEPTH} levels"
        values += len(item)
        if values > MAX_JSON_VALUES:
            return f"more than {MAX_JSON_VALUES} values"
        if isinstance(item, dict):
            for key in item:
                if type(key) is not str:
                    return f"an object key is a {type(key).__name__}, not a string"
                chars += len(key)
            children: Any = item.values()
        else:
            children = item
        for child in children:
            kind = type(child)
            if kind is str:
                chars += len(child)
            elif kind is int:
                if not MIN_INT64 <= child <= MAX_INT64:
                    return "an integer is outside the signed 64-bit range"  # not the value: str() of a huge int raises
            elif kind is float:
                if child - child != 0.0:  # inf - inf and nan - nan are nan; a finite number minus itself is 0
                    return f"number {child} is not finite"
            elif kind is dict or kind is list or kind is tuple or isinstance(child, dict | list | tuple):
                stack.append((child, depth + 1))
            elif child is not None and kind is not bool:
                problem = _scalar_problem(child)
                if problem is not None:
                    return problem
        if chars > MAX_JSON_CHARS:
            return f"more than {MAX_JSON_CHARS} characters of strings"
    return None


def _scalar_problem(value: Any) -> str | None:
    if value is None or isinstance(value, bool):
        return None
    if isinstance(value, str):
        return f"more than {MAX_JSON_CHARS} characters of strings" if len(value) > MAX_JSON_CHARS else None
    if isinstance(value, int):
        return None if MIN_INT64 <= value <= MAX_INT64 else "an integer is outside the signed 64-bit range"
    if isinstance(value, float):
        return None if math.isfinite(value) else f"number {value} is not finite"
    return f"{type(value).__name__} is not a JSON value"


def _bounded(value: Any) -> Any:
    problem = json_problem(value)
    if problem is not None:
        raise ValueError(f"JSON value {problem}")
    return value


JsonValue = Annotated[Any, AfterValidator(_bounded)]
JsonObject = Annotated[dict[str, Any], AfterValidator(_bounded)]


def parse_cursor(raw: object) -> int:
    """A client's cursor (an integer, or its decimal text): ``-1 <= n < 2**63``, else ValueError with the reason."""
    if isinstance(raw, str):
        if _DECIMAL.fullmatch(raw.strip()) is None:
            raise ValueError(f"cursor must be an integer from -1 to {MAX_CURSOR}")
        raw = int(raw)
    if not isinstance(raw, int) or isinstance(raw, bool):
        raise ValueError("cursor must be an integer")
    if not -1 <= raw <= MAX_CURSOR:
        raise ValueError(f"cursor must be an integer from -1 to {MAX_CURSOR}")
    return raw
