"""What a failed write means for the event: retry it, dead-letter it, or stop the writer.

Decided by SQLSTATE class rather than a list of exception types: only the event's own data may
dead-letter it; a fault of the database or of our configuration must never dead-letter valid events.
"""

from __future__ import annotations

import enum

import asyncpg

from services.shared.errors import PipelineError


class Disposition(enum.Enum):
    RETRY = "retry"  # the database is briefly unable: back off, commit nothing
    DEAD_LETTER = "dead_letter"  # this event's data is refused: set it aside, move on
    STOP = "stop"  # every event would fail alike until someone fixes the setup: exit


class StopWriting(PipelineError):
    """Every write would fail until someone acts (a missing table or privilege, bad credentials,
    a failure never seen before): stop without committing or dead-lettering, so nothing is lost.

    Neither transient (the consume loop would retry forever, quietly) nor permanent (the writer
    would dead-letter every event): it propagates out of the consume loop and ends the service.
    """

    def __init__(self, sqlstate: str | None, detail: str) -> None:
        super().__init__(f"writer stopped (SQLSTATE {sqlstate}): {detail}")
        self.sqlstate = sqlstate


# SQLSTATE classes (the first two characters) and full codes, as PostgreSQL documents them.
_RETRY_CLASSES = frozenset(
    {
        "08",  # connection exception
        "40",  # transaction rollback: serialization failure, deadlock
        "53",  # insufficient resources: disk full, out of memory, too many connections
        "57",  # operator intervention: admin shutdown, query canceled, cannot connect now
        "58",  # system error: I/O error
    }
)
_RETRY_CODES = frozenset(
    {
        "55P03",  # lock not available
        "25006",  # read-only transaction: a standby, e.g. just after a failover
    }
)
_DEAD_LETTER_CLASSES = frozenset(
    {
        "21",  # cardinality violation: the same key twice in one event's rows
        "22",  # data exception: a value out of range, malformed, too long
        "23",  # integrity constraint violation: unknown connection, check failed
        "54",  # program limit exceeded: a value too large to index
    }
)


def classify_database_failure(exc: BaseException) -> Disposition:
    """Retry, dead-letter or stop, for an exception raised while applying events.

    A database error is judged by its SQLSTATE: the classes above retry or dead-letter, and every
    other one stops the writer: above all 42 (a missing table or privilege) and 28 (bad
    credentials), which no retry or dead letter can fix. So does anything not recognised at all:
    stopping loses nothing, while a wrong guess would retry unnoticed or dead-letter valid events.
    """
    if isinstance(exc, asyncpg.exceptions.InvalidCachedStatementError):
        # The schema changed under a running writer (0A000): asyncpg has dropped the stale plan.
        return Disposition.RETRY
    if isinstance(exc, asyncpg.PostgresError):
        # Set from the server's message; a parameter asyncpg cannot encode arrives as 22000.
        sqlstate: str | None = getattr(exc, "sqlstate", None)
        return _by_sqlstate(sqlstate)
    if isinstance(exc, asyncpg.exceptions.ClientConfigurationError):
        return Disposition.STOP
    if isinstance(
        exc,
        OSError
        | TimeoutError
        | asyncpg.InterfaceError
        | asyncpg.exceptions.OutdatedSchemaCacheError,
    ):
        # The connection itself: refused, reset, timed out, closed under us; or a type changed
        # under a cached statement. (TimeoutError is an OSError, named for asyncio's timeouts.)
        return Disposition.RETRY
    return Disposition.STOP


def _by_sqlstate(sqlstate: str | None) -> Disposition:
    if sqlstate is None:
        return Disposition.STOP
    if sqlstate in _RETRY_CODES or sqlstate[:2] in _RETRY_CLASSES:
        return Disposition.RETRY
    if sqlstate[:2] in _DEAD_LETTER_CLASSES:
        return Disposition.DEAD_LETTER
    return Disposition.STOP
