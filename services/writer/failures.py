"""What a failed write means for the events: retry them, dead-letter the one causing it, or stop."""

from __future__ import annotations

import enum

import asyncpg

from services.shared.errors import PipelineError


class Disposition(enum.Enum):
    RETRY = "retry"  # the database is briefly unable: back off, commit nothing
    DEAD_LETTER = "dead_letter"  # an event's content provokes it: find that event, set it aside
    STOP = "stop"  # every event would fail alike until someone fixes the setup: exit


class StopWriting(PipelineError):
    """Every write would fail until someone acts (a missing table or privilege, bad credentials,
    a corrupted database): stop without committing or dead-lettering, so nothing is lost.

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
        "55006",  # object in use: maintenance holds what the write needs
        "25006",  # read-only transaction: a standby, e.g. just after a failover
    }
)
_STOP_CLASSES = frozenset(
    {
        "28",  # invalid authorization: bad credentials, unknown role
        "3D",  # invalid catalog name: no such database
        "3F",  # invalid schema name
        "42",  # syntax error or access rule violation: a missing table, column or privilege
        "F0",  # configuration file error
        "XX",  # internal error: data or index corrupted, the database needs a person
    }
)


def classify_database_failure(exc: BaseException) -> Disposition:
    """Retry, dead-letter or stop, for an exception raised while applying events.

    Only infrastructure failures are retried (the database unreachable, failing over, out of
    room, a lock timeout) and only configuration failures stop the writer (a missing table or
    privilege, bad credentials, or a database that reports itself broken): a database error is
    judged by its SQLSTATE, a failure to reach the database retries, a client misconfiguration
    stops. Anything else an event provokes, whatever the exception (a value the database
    refuses, a check, an arithmetic error in our own code on some content), is that event's
    problem: the writer isolates the event and dead-letters it, and the dead-letter budget stops
    a writer that fails on everything.
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
    return Disposition.DEAD_LETTER


def _by_sqlstate(sqlstate: str | None) -> Disposition:
    if sqlstate is None:
        return Disposition.DEAD_LETTER
    if sqlstate in _RETRY_CODES or sqlstate[:2] in _RETRY_CLASSES:
        return Disposition.RETRY
    if sqlstate[:2] in _STOP_CLASSES:
        return Disposition.STOP
    return Disposition.DEAD_LETTER
