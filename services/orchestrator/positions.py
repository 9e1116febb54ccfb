"""A client's position in a stream of protocol events made from ours (AG-UI, A2A): one event of
ours may become several of theirs, so ``N`` is after every event that our event N (its cursor)
became, and ``N:k`` after the k-th of them: a stream cut inside such a group resumes exactly."""

from __future__ import annotations

from schemas.bounds import parse_cursor

ALL = 1 << 30  # "every event of the group"
START = (-1, ALL)  # before the first event


def group_position(raw: str) -> tuple[int, int]:
    """``N`` or ``N:k`` (a ``Last-Event-ID``); ValueError says what is wrong with it."""
    cursor, _, index = raw.strip().partition(":")
    if index and (not index.isdigit() or len(index) > 4):
        raise ValueError("the part after ':' is the index of an event within its group, 0-9999")
    return parse_cursor(cursor), int(index) if index else ALL
