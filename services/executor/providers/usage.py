"""Token counts as a model endpoint reports them, made into a valid ``Usage`` (schemas/bounds.py).

A model's usage is the endpoint's claim, not ours to refuse: an execution must not fail, and the
executor must never emit an event the schema (and so the orchestrator) refuses, because an endpoint
sent an odd number. So each count is taken as far as it is meaningful:

* a count above ``MAX_TOKENS`` is clamped to it (the call did use a lot: rate limits still see it);
* a count that is not a non-negative whole number (``"abc"``, ``-5``, ``1.5``, ``true``, NaN) is
  dropped, i.e. 0 (there is no amount to keep), and logged;
* a ``total_tokens`` that is missing or dropped is the sum of the other two.
"""

from __future__ import annotations

import logging
import math
from typing import Any

from schemas.bounds import MAX_TOKENS
from schemas.events import Usage

log = logging.getLogger(__name__)

_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _count(name: str, value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        log.warning("the model reported %s=%r: not a token count, dropped", name, str(value)[:100])
        return None
    if value > MAX_TOKENS:
        log.warning("the model reported %s=%s: above %s, clamped", name, value, MAX_TOKENS)
        return MAX_TOKENS
    return value


def reported_usage(raw: Any) -> Usage:
    """The ``usage`` object of a model's response, bounded as above; anything but an object is no usage."""
    if not isinstance(raw, dict):
        return Usage()
    prompt, completion, total = (_count(name, raw.get(name)) for name in _FIELDS)
    if total is None:
        total = min((prompt or 0) + (completion or 0), MAX_TOKENS)
    return Usage(prompt_tokens=prompt or 0, completion_tokens=completion or 0, total_tokens=total)
