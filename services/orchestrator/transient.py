"""Which errors of the orchestrator's libraries are transient: what its readers retry (with backoff
and a cap) instead of parking the record at once.

A store that is down, locked or lost its connection, and Redis out of reach, may answer the next
try; a data error (``OverflowError`` for a number SQLite cannot hold, ``DataError`` /
``IntegrityError``, a ``ValueError`` or ``TypeError`` from a field of the wrong kind) never will.
"""

from __future__ import annotations

from redis import exceptions as redis_errors
from sqlalchemy import exc as sa

from services.common import reader

_TRANSIENT: tuple[type[BaseException], ...] = (
    sa.OperationalError,  # connection refused or lost, "database is locked", server shutting down
    sa.InterfaceError,  # asyncpg: connection closed under us
    sa.DisconnectionError,
    sa.TimeoutError,  # no connection free in the pool within its timeout
    redis_errors.ConnectionError,
    redis_errors.TimeoutError,
)


def transient(exc: BaseException) -> bool:
    if isinstance(exc, sa.DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, _TRANSIENT) or reader.transient(exc)
