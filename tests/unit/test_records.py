"""Token record values built from a per-execution template (records.py) are the bytes pydantic writes."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from schemas.events import TokenDelta
from services.executor.records import EventIds, TokenRecords

TEXTS = [
    "hello",
    "",
    ' "quoted" \\ back\\slash / slash',
    "line\nbreak\ttab\r\x00\x01\x1f\x7f",
    "é ü 漢字 😀 \u2028 \u2029 \ue000",
    '{"json": [1, 2]}',
    "x" * 5000,
]

ENVELOPES: list[dict[str, Any]] = [
    {"tenant_id": "t", "execution_id": "e1", "session_id": None, "agent_id": "default", "attempt": 1},
    {"tenant_id": "tenant@x", "execution_id": "exec_2.x", "session_id": "s-1", "agent_id": "a:b", "attempt": 123456},
]


@pytest.mark.parametrize("envelope", ENVELOPES)
@pytest.mark.parametrize("text", TEXTS)
def test_a_token_value_is_what_the_model_would_serialize(envelope: dict[str, Any], text: str) -> None:
    value = TokenRecords(envelope).value(text=text, seq=42, step=3)
    event = TokenDelta.model_validate_json(value)
    assert (event.text, event.seq, event.step, event.type) == (text, 42, 3, "token.delta")
    assert event.model_dump(include=set(envelope)) == envelope
    # Byte for byte: the model built from these bytes writes them again (same event_id and ts).
    assert event.model_dump_json().encode() == value


def test_every_record_has_its_own_event_id_and_a_utc_timestamp() -> None:
    records = TokenRecords(ENVELOPES[0])
    first, second = (TokenDelta.model_validate_json(records.value(text="a", seq=n, step=0)) for n in (1, 2))
    assert first.event_id != second.event_id
    assert first.ts.utcoffset() is not None and first.ts.utcoffset().total_seconds() == 0  # type: ignore[union-attr]
    assert first.ts <= second.ts


def test_out_of_bounds_values_are_refused_as_the_model_refuses_them() -> None:
    records = TokenRecords(ENVELOPES[0])
    with pytest.raises(ValueError):
        records.value(text="a", seq=2**31, step=0)  # Seq is bounded (schemas/bounds.py)
    with pytest.raises(ValueError):
        records.value(text="\ud800", seq=1, step=0)  # a lone surrogate cannot be UTF-8


def test_an_invalid_envelope_is_refused_once_per_execution() -> None:
    with pytest.raises(ValueError):
        TokenRecords({**ENVELOPES[0], "execution_id": ""})


def test_event_ids_are_distinct_version_4_uuids_and_serialize_as_pydantic_would() -> None:
    ids = EventIds()
    drawn = [ids.next() for _ in range(10_000)]
    assert len(set(drawn)) == len(drawn)
    parsed = [uuid.UUID(i) for i in drawn[:100]]
    assert all(u.version == 4 and u.variant == uuid.RFC_4122 and str(u) == i for u, i in zip(parsed, drawn, strict=False))
    assert EventIds().next()[:-8] != drawn[0][:-8]  # another emitter, another random base
    value = TokenRecords(ENVELOPES[0]).value(text="a", seq=1, step=0, event_id=drawn[0])
    event = TokenDelta.model_validate_json(value)
    assert str(event.event_id) == drawn[0] and event.model_dump_json().encode() == value
