"""SSE lines cut from the model stream's bytes (providers/sse.py), whatever the chunking."""

from __future__ import annotations

import orjson

from services.executor.providers.sse import DONE, TurnAssembler, split_lines


def _lines(chunks: list[bytes]) -> list[bytes]:
    out: list[bytes] = []
    rest = b""
    for chunk in chunks:
        lines, rest = split_lines(rest, chunk)
        out.extend(lines)
    return out + ([rest] if rest else [])


def _event(text: str) -> bytes:
    return b"data: " + orjson.dumps({"choices": [{"delta": {"content": text}}]})


def test_lines_end_with_lf_crlf_or_cr_and_survive_any_cut() -> None:
    body = _event("héllo") + b"\r\n\r\n" + b": keep-alive\r" + _event("wörld") + b"\n\ndata: [DONE]"
    whole = [line for line in _lines([body]) if line]
    assert whole == [_event("héllo"), b": keep-alive", _event("wörld"), b"data: [DONE]"]
    for cut in range(1, len(body)):  # every cut, also inside a multi-byte character or a CRLF
        assert [line for line in _lines([body[:cut], body[cut:]]) if line] == whole, cut


def test_the_assembler_reads_bytes_lines() -> None:
    assembler = TurnAssembler()
    pieces = [assembler.feed(line) for line in _lines([_event("a") + b"\n\n" + _event("ü") + b"\r\n\r\ndata: [DONE]\n\n"])]
    assert [p for p in pieces if p is not None] == ["a", "ü", DONE]
