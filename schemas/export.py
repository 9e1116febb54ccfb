"""JSON Schema of the event contract, for producers and consumers in other languages."""

from __future__ import annotations

from typing import Any

from schemas.events import EventAdapter


def events_json_schema() -> dict[str, Any]:
    schema = EventAdapter.json_schema(mode="serialization")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["title"] = "agentstream event"
    return schema
