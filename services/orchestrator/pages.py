"""Keyset pagination of the history lists (``GET /v1/executions``, ``GET /v1/sessions``).

Rows come newest first, ordered by ``(created_at, id)`` descending; a page's ``next_cursor`` is the
last row's key, opaque to clients (base64url of ``created_at|id``) and bounded: a cursor that is not
one we made is a 400, never a query. Keyset rather than offsets: a page stays right while new runs
arrive at the top, and costs an index seek however deep.
"""

from __future__ import annotations

import base64
import binascii
import math
import re
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from schemas.bounds import ID_PATTERN, MAX_ID_LENGTH
from services.orchestrator.http import HTTPError, query_int

MAX_CURSOR_CHARS = 256
DEFAULT_LIMIT, MAX_LIMIT = 50, 200
_ID = re.compile(ID_PATTERN)


@dataclass(frozen=True)
class Key:
    """Where a page ends: the newest-first order's last ``(created_at, id)``."""

    created_at: float
    id: str


def encode_cursor(key: Key) -> str:
    return base64.urlsafe_b64encode(f"{key.created_at!r}|{key.id}".encode()).decode().rstrip("=")


def decode_cursor(raw: str) -> Key:
    """HTTPError 400 unless ``raw`` is a cursor ``encode_cursor`` could have made."""
    invalid = HTTPError(400, "query parameter 'cursor' is not a cursor of this list: pass the `next_cursor` of the page before")
    if len(raw) > MAX_CURSOR_CHARS:
        raise invalid
    try:
        text = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4)).decode()
        created, _, key_id = text.partition("|")
        created_at = float(created)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise invalid from None
    if not math.isfinite(created_at) or len(key_id) > MAX_ID_LENGTH or _ID.fullmatch(key_id) is None:
        raise invalid
    return Key(created_at, key_id)


@dataclass(frozen=True)
class PageRequest:
    limit: int
    after: Key | None  # the previous page's last key; None: the first page

    @property
    def after_key(self) -> tuple[float, str] | None:
        return None if self.after is None else (self.after.created_at, self.after.id)


def page_request(conn: HTTPConnection) -> PageRequest:
    limit = query_int(conn, "limit", DEFAULT_LIMIT, low=1, high=MAX_LIMIT)
    raw = conn.query_params.get("cursor")
    return PageRequest(limit, decode_cursor(raw) if raw else None)


def next_cursor(keys: list[Key], limit: int) -> str | None:
    """The cursor of the page after one fetched with ``limit + 1`` rows: None when nothing is left."""
    return encode_cursor(keys[limit - 1]) if len(keys) > limit else None


def query_id(conn: HTTPConnection, name: str) -> str | None:
    """An id filter: one that no id could be is a 400 naming the parameter (it would match nothing)."""
    raw = conn.query_params.get(name)
    if raw is None:
        return None
    if len(raw) > MAX_ID_LENGTH or _ID.fullmatch(raw) is None:
        raise HTTPError(400, f"query parameter {name!r} must be an id (1-128 of A-Z a-z 0-9 _ . : @ -)", detail={name: raw[:100]})
    return raw
