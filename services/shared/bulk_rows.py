"""Many rows in one statement: its columns defined once (name, Postgres type, where each value
comes from), so the SQL's column list and the arrays (or COPY records) handed to it cannot fall
out of order.

Numbers travel as text, cast back to `numeric` in the statement: asyncpg's binary encoding of a
Decimal (through its digit tuple) costs several times `str` and Postgres's own parsing of it
together, and a batch sends six per fill and eight per journal row."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from services.shared.database import Connection

T = TypeVar("T")


@dataclass(frozen=True)
class Column(Generic[T]):
    name: str
    pg_type: str
    value: Callable[[T], object]

    @property
    def as_text(self) -> bool:
        """Whether the value is sent as text and cast back in SQL (see above)."""
        return self.pg_type == "numeric"

    @property
    def sent_type(self) -> str:
        return "text" if self.as_text else self.pg_type

    def sent(self) -> Callable[[T], object]:
        """The value as sent: a number as its text (None stays None)."""
        if not self.as_text:
            return self.value
        value = self.value

        def text(row: T) -> object:
            number = value(row)
            return None if number is None else str(number)

        return text

    def read(self, source: str) -> str:
        """The SQL reading this column of a source that holds it as sent, as its own type."""
        return f"{source}::{self.pg_type}" if self.as_text else source


@dataclass(frozen=True)
class BulkRows(Generic[T]):
    table: str
    columns: tuple[Column[T], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def unnest(self) -> str:
        """`unnest($1::text[], $2::uuid[], ...)`, a parameter per column, in order."""
        arrays = ", ".join(
            f"${n}::{c.sent_type}[]" + (f"::{c.pg_type}[]" if c.as_text else "")
            for n, c in enumerate(self.columns, start=1)
        )
        return f"unnest({arrays})"

    @property
    def staging_table(self) -> str:
        """The session's temporary table that `stage` copies rows into."""
        return f"staged_{self.table}"

    def create_staging(self) -> str:
        """`CREATE TEMP TABLE IF NOT EXISTS` the staging table: the columns, emptied at every
        commit (and gone with a rolled-back transaction's rows), so each transaction sees only
        the rows it staged."""
        columns = ", ".join(f"{c.name} {c.sent_type}" for c in self.columns)
        return (
            f"CREATE TEMP TABLE IF NOT EXISTS {self.staging_table} ({columns})"
            " ON COMMIT DELETE ROWS"
        )

    def insert(
        self,
        then: str = "",
        *,
        alias: str | None = None,
        computed: Mapping[str, str] | None = None,
        staged: bool = False,
    ) -> str:
        """`INSERT INTO table (columns) SELECT * FROM unnest(...) then`, or from the staging
        table when `staged` (its rows copied in by `stage`, no parameters); `computed` adds
        columns whose values are SQL expressions (`{"synced_at": "now()"}`)."""
        computed = computed or {}
        names = ", ".join([*self.names, *computed])
        staged_values = [c.read(c.name) for c in self.columns] if staged else ["*"]
        values = ", ".join([*staged_values, *computed.values()])
        into = f"{self.table} AS {alias}" if alias else self.table
        source = self.staging_table if staged else self.unnest()
        # Identifiers and SQL of our own code only: every value travels as a parameter.
        return f"INSERT INTO {into} ({names}) SELECT {values} FROM {source} {then}"  # noqa: S608

    def update(self, assignments: str, *, alias: str, where: str) -> str:
        """`UPDATE table AS alias SET assignments FROM unnest(...) AS v(columns) WHERE where`:
        the rows `where` matches set from the values of `v`, named by their columns."""
        source = f"{self.unnest()} AS v({', '.join(self.names)})"
        # As for `insert`: only our own identifiers and SQL; the values are parameters.
        return f"UPDATE {self.table} AS {alias} SET {assignments} FROM {source} WHERE {where}"  # noqa: S608

    def excluded(self, names: Iterable[str]) -> str:
        """`a = EXCLUDED.a, b = EXCLUDED.b`: an upsert taking these columns from the new row."""
        return ", ".join(f"{name} = EXCLUDED.{name}" for name in names)

    def records(self, rows: Iterable[T]) -> list[tuple[Any, ...]]:
        """The rows as COPY takes them: one tuple per row, in the columns' order."""
        values = [column.sent() for column in self.columns]
        return [tuple([value(row) for value in values]) for row in rows]  # a list: no generator

    async def stage(self, conn: Connection, rows: Iterable[T]) -> None:
        """COPY the rows into the staging table (created by `create_staging` in this session)."""
        await conn.copy_records_to_table(
            self.staging_table, records=self.records(rows), columns=self.names
        )

    def arrays(self, rows: Sequence[T]) -> list[list[object]]:
        """The statement's parameters: one array per column, in the columns' order."""
        return [[value(row) for row in rows] for value in (c.sent() for c in self.columns)]
