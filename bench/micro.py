"""``python -m bench.micro``: per-record costs of the token path's pure-Python steps, no broker.

Prints microseconds per record for building the token.delta event, encoding it, and building its
headers: the headers as they were before CloudEvents (type, tenant_id, attempt, traceparent) and as
they are now (``record_headers`` over the execution's ``shared_headers``). Compare figures of one run
only: the machine is shared.
"""

from __future__ import annotations

import timeit
from collections.abc import Callable

from schemas.events import TokenDelta
from services.common.kafka import Headers, encode, record_headers, shared_headers

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
ENVELOPE = {"tenant_id": "tenant-a", "execution_id": "0123456789abcdef0123456789abcdef", "agent_id": "default", "attempt": 1}


def _before(type_: str, tenant_id: str, attempt: int, traceparent: str) -> Headers:
    """What event_headers built per record before CloudEvents headers (kept here as the baseline)."""
    headers: Headers = [("type", type_.encode()), ("tenant_id", tenant_id.encode()), ("attempt", str(attempt).encode())]
    headers.append(("traceparent", traceparent.encode()))
    return headers


def _per_record_us(fn: Callable[[], object], number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6


def main(number: int = 50_000) -> dict[str, float]:
    event = TokenDelta(**ENVELOPE, seq=1, text="hello world, ")
    shared = shared_headers(service="executor", subject=ENVELOPE["execution_id"], tenant_id="tenant-a", attempt=1, traceparent=TRACEPARENT)
    figures = {
        "event (TokenDelta(...))": _per_record_us(lambda: TokenDelta(**ENVELOPE, seq=1, text="hello world, "), number),
        "encode (model_dump_json)": _per_record_us(lambda: encode(event), number),
        "headers before (4 headers)": _per_record_us(lambda: _before("token.delta", "tenant-a", 1, TRACEPARENT), number),
        "headers now (4 + 7 CloudEvents)": _per_record_us(lambda: record_headers("token.delta", event.event_id, event.ts, shared), number),
    }
    for name, us in figures.items():
        print(f"{name:34s} {us:6.2f} us/record")
    extra = figures["headers now (4 + 7 CloudEvents)"] - figures["headers before (4 headers)"]
    print(f"{'CloudEvents headers add':34s} {extra:6.2f} us/record")
    size = sum(len(k) + len(v) for k, v in record_headers("token.delta", event.event_id, event.ts, shared))
    before = sum(len(k) + len(v) for k, v in _before("token.delta", "tenant-a", 1, TRACEPARENT))
    print(f"{'header bytes before / now':34s} {before} / {size} per record")
    return figures


if __name__ == "__main__":
    main()
