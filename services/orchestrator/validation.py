"""How a pydantic error is named in a one-line reason (a DLQ record, a job's failure)."""

from __future__ import annotations

from pydantic import ValidationError


def first_error(exc: ValidationError) -> str:
    e = exc.errors(include_url=False, include_input=False)[0]
    return f"{'.'.join(str(p) for p in e['loc']) or 'result'}: {e['msg']}"
