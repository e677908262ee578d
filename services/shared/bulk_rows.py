"""Many rows in one statement: its columns defined once (name, Postgres type, where each value
comes from), so the SQL's column list and the arrays handed to it cannot fall out of order."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class Column(Generic[T]):
    name: str
    pg_type: str
    value: Callable[[T], object]


@dataclass(frozen=True)
class BulkRows(Generic[T]):
    table: str
    columns: tuple[Column[T], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(column.name for column in self.columns)

    def unnest(self) -> str:
        """`unnest($1::text[], $2::uuid[], ...)`, a parameter per column, in order."""
        arrays = ", ".join(f"${n}::{c.pg_type}[]" for n, c in enumerate(self.columns, start=1))
        return f"unnest({arrays})"

    def insert(
        self, then: str = "", *, alias: str | None = None, computed: Mapping[str, str] | None = None
    ) -> str:
        """`INSERT INTO table (columns) SELECT * FROM unnest(...) then`; `computed` adds
        columns whose values are SQL expressions (`{"synced_at": "now()"}`)."""
        computed = computed or {}
        names = ", ".join([*self.names, *computed])
        values = ", ".join(["*", *computed.values()])
        into = f"{self.table} AS {alias}" if alias else self.table
        # Identifiers and SQL of our own code only: every value travels as a parameter.
        return f"INSERT INTO {into} ({names}) SELECT {values} FROM {self.unnest()} {then}"  # noqa: S608

    def update(self, assignments: str, *, alias: str, where: str) -> str:
        """`UPDATE table AS alias SET assignments FROM unnest(...) AS v(columns) WHERE where`:
        the rows `where` matches set from the values of `v`, named by their columns."""
        source = f"{self.unnest()} AS v({', '.join(self.names)})"
        # As for `insert`: only our own identifiers and SQL; the values are parameters.
        return f"UPDATE {self.table} AS {alias} SET {assignments} FROM {source} WHERE {where}"  # noqa: S608

    def excluded(self, names: Iterable[str]) -> str:
        """`a = EXCLUDED.a, b = EXCLUDED.b`: an upsert taking these columns from the new row."""
        return ", ".join(f"{name} = EXCLUDED.{name}" for name in names)

    def arrays(self, rows: Sequence[T]) -> list[list[object]]:
        """The statement's parameters: one array per column, in the columns' order."""
        return [[column.value(row) for row in rows] for column in self.columns]
