"""Contiguous-watermark offset tracking: executions finish out of order, commits never skip one."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class PartitionWatermark:
    inflight: set[int] = field(default_factory=set)
    next_offset: int = 0
    committed: int = -1

    def begin(self, offset: int) -> None:
        self.inflight.add(offset)
        self.next_offset = max(self.next_offset, offset + 1)

    def finish(self, offset: int) -> int | None:
        """Mark an offset done; return the new offset to commit, if it moved."""
        self.inflight.discard(offset)
        target = min(self.inflight) if self.inflight else self.next_offset
        if target > self.committed:
            self.committed = target
            return target
        return None
