"""How the writer treats a failed write: retry (infrastructure), stop (configuration), or
dead-letter the event that provoked it (anything else)."""

from __future__ import annotations

import decimal

import asyncpg
import pytest
from asyncpg import exceptions as pg

from services.shared.errors import PermanentError, PipelineError, TransientError
from services.writer.failures import Disposition, StopWriting, classify_database_failure


def _from_server(sqlstate: str) -> asyncpg.PostgresError:
    """An error as asyncpg builds it from the server's message, for any SQLSTATE."""
    return asyncpg.PostgresError.new({"S": "ERROR", "C": sqlstate, "M": "from the server"})


@pytest.mark.parametrize(
    "error",
    [
        pg.ConnectionDoesNotExistError("connection was closed in the middle of operation"),
        pg.ConnectionFailureError("connection failure"),
        pg.PostgresConnectionError("connection exception"),
        pg.SerializationError("could not serialize access"),
        pg.DeadlockDetectedError("deadlock detected"),
        pg.DiskFullError("could not extend file: No space left on device"),
        pg.OutOfMemoryError("out of memory"),
        pg.TooManyConnectionsError("sorry, too many clients already"),
        pg.LockNotAvailableError("could not obtain lock on row"),
        pg.AdminShutdownError("terminating connection due to administrator command"),
        pg.QueryCanceledError("canceling statement due to statement timeout"),
        pg.CannotConnectNowError("the database system is starting up"),
        pg.CrashShutdownError("terminating connection because of crash of another process"),
        pg.IdleSessionTimeoutError("terminating connection due to idle-session timeout"),
        pg.ReadOnlySQLTransactionError("cannot execute INSERT in a read-only transaction"),
        pg.ObjectInUseError("database is being accessed by other users"),
        pg.InvalidCachedStatementError("cached statement plan is invalid"),
        _from_server("58030"),  # io_error
        _from_server("08Z99"),  # a connection exception this asyncpg does not know yet
    ],
    ids=lambda error: f"{type(error).__name__}-{error.sqlstate}",
)
def test_a_database_that_is_briefly_unable_is_retried(error: asyncpg.PostgresError) -> None:
    assert classify_database_failure(error) is Disposition.RETRY


@pytest.mark.parametrize(
    "error",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(104, "Connection reset by peer"),
        OSError(113, "No route to host"),
        TimeoutError(),
        asyncpg.InterfaceError("pool is closing"),
        pg.OutdatedSchemaCacheError("cached statement plan is invalid due to a schema change"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_connection_that_fails_under_the_writer_is_retried(error: Exception) -> None:
    assert classify_database_failure(error) is Disposition.RETRY


@pytest.mark.parametrize(
    "error",
    [
        pg.UndefinedTableError('relation "broker_fills" does not exist'),
        pg.UndefinedColumnError('column "fill_key" does not exist'),
        pg.UndefinedFunctionError("function hashtextextended(text, integer) does not exist"),
        pg.InsufficientPrivilegeError("permission denied for table broker_fills"),
        pg.PostgresSyntaxError('syntax error at or near "INSERT"'),
        pg.InvalidPasswordError('password authentication failed for user "poscal"'),
        pg.InvalidAuthorizationSpecificationError('role "poscal" does not exist'),
        pg.InvalidCatalogNameError('database "poscal" does not exist'),
        pg.InvalidSchemaNameError('schema "public" does not exist'),
        pg.ClientConfigurationError("invalid connection option"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_missing_table_privilege_or_login_stops_the_writer(error: Exception) -> None:
    assert classify_database_failure(error) is Disposition.STOP


@pytest.mark.parametrize(
    "error",
    [
        pg.InternalServerError("unexpected internal error"),
        pg.DataCorruptedError("invalid page in block 7"),
        pg.IndexCorruptedError("index contains unexpected zero page"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_a_database_that_reports_itself_broken_stops_the_writer(error: Exception) -> None:
    assert classify_database_failure(error) is Disposition.STOP


@pytest.mark.parametrize(
    "error",
    [
        pg.FeatureNotSupportedError("not supported"),
        pg.InFailedSQLTransactionError("current transaction is aborted"),
        pg.RaiseError("raised by a trigger"),
        _from_server("ZZ000"),  # a class no PostgreSQL documents
        pg.ProtocolError("unexpected message"),
        ValueError("something in an event our code cannot handle"),
        decimal.Overflow("an amount beyond the decimal context"),
        KeyError("a field an event lacks"),
        RecursionError("nested too deeply"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_anything_else_an_event_provokes_dead_letters_it_rather_than_stopping_everyone(
    error: Exception,
) -> None:
    assert classify_database_failure(error) is Disposition.DEAD_LETTER


@pytest.mark.parametrize(
    "error",
    [
        pg.NumericValueOutOfRangeError("numeric field overflow"),
        pg.InvalidTextRepresentationError('invalid input syntax for type numeric: "lots"'),
        pg.StringDataRightTruncationError("value too long for type character varying(32)"),
        pg.DatetimeFieldOverflowError("date/time field value out of range"),
        pg.DataError("invalid input for query argument $1: 'lots' (a number is required)"),
        pg.UniqueViolationError("duplicate key value violates unique constraint"),
        pg.ForeignKeyViolationError("insert or update violates foreign key constraint"),
        pg.NotNullViolationError('null value in column "symbol" violates not-null constraint'),
        pg.CheckViolationError('new row violates check constraint "volume_positive"'),
        pg.ExclusionViolationError("conflicting key value violates exclusion constraint"),
        pg.CardinalityViolationError("ON CONFLICT DO UPDATE command cannot affect row twice"),
        pg.ProgramLimitExceededError("index row size exceeds btree maximum"),
    ],
    ids=lambda error: type(error).__name__,
)
def test_only_data_the_database_refuses_dead_letters_the_event(
    error: asyncpg.PostgresError,
) -> None:
    assert classify_database_failure(error) is Disposition.DEAD_LETTER


def test_stopping_is_neither_a_retry_nor_a_dead_letter() -> None:
    stop = StopWriting("42501", "InsufficientPrivilegeError: permission denied")
    assert isinstance(stop, PipelineError)
    assert not isinstance(stop, TransientError | PermanentError)
    assert stop.sqlstate == "42501"
    assert "42501" in str(stop)
