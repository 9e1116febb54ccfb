"""When a poll of the store is next worth its round trip (issue 14, the idle stack).

The sweeper (deadlines) and the callback dispatcher (due deliveries) used to query the store every
second and every half second, with nothing due: on an idle stack, the orchestrator's largest cost.
Now each keeps the earliest time something it looks for falls due: read from the store by its last
poll, lowered by hints from this process (a new execution's deadline, an enqueued delivery), and
re-read at least every ``refresh_s`` for what other replicas write into a shared store.
"""

from __future__ import annotations

import math


class NextDue:
    def __init__(self, refresh_s: float) -> None:
        self.refresh_s = refresh_s
        self._at = -math.inf  # unknown: poll at once
        self._read_at = -math.inf
        self._hinted = math.inf  # the earliest hint since the poll in flight began

    def hint(self, at: float) -> None:
        """Something falls due at ``at`` (a timestamp; now or earlier: at once)."""
        self._at = min(self._at, at)
        self._hinted = min(self._hinted, at)

    def due(self, now: float) -> bool:
        return now >= self._at or now - self._read_at >= self.refresh_s

    def wait_s(self, now: float) -> float:
        """How long from ``now`` until the next poll is due (0: now)."""
        return max(0.0, min(self._at, self._read_at + self.refresh_s) - now)

    def polling(self) -> None:
        """A poll begins: hints from now on are not covered by what it reads."""
        self._hinted = math.inf

    def polled(self, now: float, next_at: float | None) -> None:
        """A poll read the store at ``now``: the earliest pending item is at ``next_at`` (None: none),
        unless a hint during the poll said earlier."""
        self._read_at = now
        self._at = min(next_at if next_at is not None else math.inf, self._hinted)
        self._hinted = math.inf
