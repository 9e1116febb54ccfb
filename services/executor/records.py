"""``token.delta`` record values without a pydantic model per record.

A token record differs from the next of its execution only in ``event_id``, ``seq``, ``ts``,
``text`` and ``step``. ``TokenRecords`` has pydantic validate and serialize the envelope once per
execution attempt, as a template whose per-record fields hold sentinels, and cuts it at them; each
record is then the template's pieces joined with the new values (orjson for the text). The bytes
are what ``TokenDelta(...).model_dump_json()`` gives (tests/unit/test_records.py checks it), so
the contract stays the one in schemas/events.py: a field added there appears here by itself.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import orjson

from schemas.bounds import MAX_INT32
from schemas.events import TokenDelta
from services.common.ids import EventIds

__all__ = ["EventIds", "TokenRecords"]

# Sentinels: values no envelope field can produce, each serializing to bytes found once in the template.
_EVENT_ID = uuid.UUID("a0e1d2c3-b4a5-4968-8777-665544332211")
_SEQ = 1_987_654_321
_STEP = 1_876_543_219
_TS = datetime(1999, 12, 31, 23, 59, 58, 123457, tzinfo=UTC)
_TEXT = "\ue000\ue001"  # private-use characters: orjson and pydantic write them raw


class TokenRecords:
    """Encodes the ``token.delta`` values of one execution attempt (``envelope``: its fields)."""

    def __init__(self, envelope: dict[str, Any]) -> None:
        self._envelope = envelope
        template = TokenDelta(**envelope, event_id=_EVENT_ID, seq=_SEQ, ts=_TS, text=_TEXT, step=_STEP).model_dump_json().encode()
        marks = {
            "event_id": f'"{_EVENT_ID}"'.encode(),
            "seq": str(_SEQ).encode(),
            "ts": b'"' + _iso(_TS) + b'"',
            "text": orjson.dumps(_TEXT),
            "step": str(_STEP).encode(),
        }
        found = sorted((template.find(mark), name, mark) for name, mark in marks.items())
        if any(pos < 0 or template.count(mark) != 1 for pos, _, mark in found):  # pragma: no cover - a contract change
            raise RuntimeError("token.delta template: a per-record field is missing or not unique")
        self._order = tuple(name for _, name, _ in found)
        self._pieces: list[bytes] = []
        cursor = 0
        for pos, _, mark in found:
            self._pieces.append(template[cursor:pos])
            cursor = pos + len(mark)
        self._pieces.append(template[cursor:])

    def value(self, *, text: str, seq: int, step: int, event_id: uuid.UUID | str | None = None, ts: datetime | None = None) -> bytes:
        """The record value of one ``token.delta``, as pydantic would have serialized it (``event_id``
        and ``ts`` are the caller's when its headers carry them too: CloudEvents' id and time)."""
        event_id = event_id or uuid.uuid4()
        ts = ts or datetime.now(UTC)
        if not (0 <= seq <= MAX_INT32) or type(step) is not int or ts.tzinfo is not UTC:
            return self._validated(text=text, seq=seq, step=step, event_id=event_id, ts=ts)  # out of bounds: pydantic says why
        try:
            fields = {
                "event_id": b'"' + str(event_id).encode() + b'"',
                "seq": str(seq).encode(),
                "ts": b'"' + _iso(ts) + b'"',
                "text": orjson.dumps(text),
                "step": str(step).encode(),
            }
        except orjson.JSONEncodeError:  # e.g. a lone surrogate: the model decides, as before
            return self._validated(text=text, seq=seq, step=step, event_id=event_id, ts=ts)
        pieces = self._pieces
        out = [pieces[0]]
        for i, name in enumerate(self._order, start=1):
            out.append(fields[name])
            out.append(pieces[i])
        return b"".join(out)

    def _validated(self, *, text: str, seq: int, step: int, event_id: uuid.UUID | str, ts: datetime) -> bytes:
        event = TokenDelta(**self._envelope, event_id=uuid.UUID(str(event_id)), ts=ts, seq=seq, text=text, step=step)
        return event.model_dump_json().encode()


def _iso(ts: datetime) -> bytes:
    """A UTC datetime as pydantic writes it: ISO 8601, microseconds only when non-zero, ``Z``."""
    return ts.isoformat().removesuffix("+00:00").encode() + b"Z"
