"""``Cache-Control: no-cache`` on a request that starts an execution: its Query and Embedding jobs
skip the result cache (servicecache.py) and their fresh results replace the entries."""

from __future__ import annotations

from starlette.requests import HTTPConnection

_MAX_HEADER_CHARS = 1024  # longer is not a cache directive anyone sends; the rest is not read


def no_cache(request: HTTPConnection) -> bool:
    header = request.headers.get("cache-control", "")[:_MAX_HEADER_CHARS]
    return any(part.split("=", 1)[0].strip().lower() == "no-cache" for part in header.split(","))
