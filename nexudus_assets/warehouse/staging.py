"""Staging one entity's sync: each batch of records into `raw._stage_<table>`, each record that
failed validation into the quarantine, `raw._rejected_records`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import duckdb

from nexudus_assets.nexudus.entities import Entity
from nexudus_assets.nexudus.errors import RecordValidationError
from nexudus_assets.nexudus.models import NexudusRecord, valid_id
from nexudus_assets.warehouse.schema import (
    REJECTED_RECORDS,
    SCHEMA,
    column_ddl,
    data_columns,
    field_kinds,
    one_row,
    quote,
    to_json,
    transaction,
)

#: Connection-local name under which a batch is inserted.
_BATCH = "_nexudus_batch"
#: Until a sync has staged this many rows its batches reach DuckDB as query parameters, from then
#: on as Arrow. Arrow converts a row about 10 us faster, but importing pyarrow and its first
#: conversion in a process (which imports pandas) take half a second: only a sync of tens of
#: thousands of rows wins it back, never the 1% an hourly sync of a large account brings.
ARROW_MIN_ROWS = 50_000
#: What converting a value no column can hold raises: Arrow's errors, and DuckDB's for parameters.
_UNSTORABLE = (ValueError, ArithmeticError, duckdb.DataError, duckdb.InvalidInputException)


@dataclass(frozen=True)
class RejectedRecord:
    """A record that failed validation. `raw` is the JSON value as received."""

    record_id: int | None
    reason: str
    raw: Any

    @classmethod
    def from_error(cls, error: RecordValidationError) -> RejectedRecord:
        # Only a documented Id links the quarantine to a row: `true`, "12" or 2**70 is no record's,
        # and stays visible in the reason and the raw JSON.
        return cls(valid_id(error.record_id), str(error), error.raw)


class Staging:
    """The staging table of one entity's sync and the quarantine rows of its run."""

    def __init__(self, entity: Entity, run_id: str, *, arrow_from_rows: int = ARROW_MIN_ROWS) -> None:
        self.entity = entity
        self.run_id = run_id
        self._arrow_from_rows = arrow_from_rows
        self.table = f"{SCHEMA}._stage_{entity.table}"
        self._columns = data_columns(entity)
        self._column_list = ", ".join(quote(c.name) for c in self._columns)
        self._kinds = field_kinds(entity.model)
        self._read = attrgetter(*[name for name, _ in self._kinds if name != "_extra"])

    def create(self, conn: duckdb.DuckDBPyConnection) -> None:
        """An empty staging table, replacing a killed run's, and no quarantine rows of this run yet."""
        with transaction(conn):
            # `_seq` orders staged rows so that the last one staged for an id wins.
            conn.execute(f"CREATE OR REPLACE TABLE {self.table} ({column_ddl(self._columns)}, _seq BIGINT NOT NULL)")
            # A retried step keeps its run id; its earlier attempt's rejections are fetched again.
            conn.execute(
                f"DELETE FROM {REJECTED_RECORDS} WHERE entity = ? AND run_id = ?", [self.entity.table, self.run_id]
            )

    def add(
        self,
        conn: duckdb.DuckDBPyConnection,
        records: Sequence[NexudusRecord],
        rejected: Sequence[RejectedRecord],
        now: dt.datetime,
    ) -> None:
        """One batch into staging and its rejections into the quarantine, in one transaction."""
        (first_seq,) = one_row(conn, f"SELECT coalesce(max(_seq) + 1, 0) FROM {self.table}")
        with self._loaded(conn, records, first_seq) as unstorable:
            rejected = [*rejected, *unstorable]
            with transaction(conn):
                conn.execute(f"INSERT INTO {self.table} ({self._column_list}, _seq) SELECT * FROM {_BATCH}")
                if rejected:
                    conn.execute(
                        f"""INSERT INTO {REJECTED_RECORDS} (entity, record_id, reason, raw_json, rejected_at, run_id)
                            SELECT $1, unnest($2::BIGINT[]), unnest($3::VARCHAR[]), unnest($4::JSON[]), $5, $6""",
                        [
                            self.entity.table,
                            [r.record_id for r in rejected],
                            [r.reason for r in rejected],
                            [to_json(r.raw) for r in rejected],
                            now,
                            self.run_id,
                        ],
                    )

    def drop(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(f"DROP TABLE {self.table}")

    @contextmanager
    def _loaded(
        self, conn: duckdb.DuckDBPyConnection, records: Sequence[NexudusRecord], first_seq: int
    ) -> Iterator[list[RejectedRecord]]:
        """The batch readable as `_BATCH`, typed as staging; yields the records a column cannot hold.

        Every value is converted before the transaction that inserts the batch starts: a value
        out of a column's range (a price beyond DECIMAL(18,4), an integer beyond BIGINT) must not
        sink the batch, nor every later sync, so the batch is split to find it.
        """
        try:
            release = self._load(conn, records, first_seq)
            unstorable: list[RejectedRecord] = []
        except _UNSTORABLE:
            storable = []
            unstorable = []
            for record in records:
                try:
                    self._load(conn, [record], first_seq)()
                except _UNSTORABLE as error:
                    raw = record.model_dump(mode="json", by_alias=True)
                    unstorable.append(RejectedRecord(record.id, f"cannot be stored: {error}", raw))
                else:
                    storable.append(record)
            release = self._load(conn, storable, first_seq)
        try:
            yield unstorable
        finally:
            release()

    def _load(
        self, conn: duckdb.DuckDBPyConnection, records: Sequence[NexudusRecord], first_seq: int
    ) -> Callable[[], None]:
        """Load the batch as `_BATCH` and return what releases it."""
        columns = [*self._values(records), list(range(first_seq, first_seq + len(records)))]
        if first_seq + len(records) < self._arrow_from_rows:  # `_seq` counts the rows staged before
            return self._load_as_parameters(conn, columns)
        return self._load_as_arrow(conn, columns)

    def _load_as_parameters(self, conn: duckdb.DuckDBPyConnection, columns: list[list[Any]]) -> Callable[[], None]:
        typed = [*((quote(c.name), c.duckdb_type) for c in self._columns), ("_seq", "BIGINT")]
        selected = ", ".join(f"unnest(${number}::{kind}[]) AS {name}" for number, (name, kind) in enumerate(typed, 1))
        conn.execute(f"CREATE OR REPLACE TEMP TABLE {_BATCH} AS SELECT {selected}", columns)

        def drop() -> None:
            conn.execute(f"DROP TABLE temp.{_BATCH}")

        return drop

    def _load_as_arrow(self, conn: duckdb.DuckDBPyConnection, columns: list[list[Any]]) -> Callable[[], None]:
        # Imported here, on the first large batch: an hourly sync's small batches never need it.
        import pyarrow as pa

        arrow_types = {
            "BOOLEAN": pa.bool_(),
            "BIGINT": pa.int64(),
            "INTEGER": pa.int32(),
            "DECIMAL(18,4)": pa.decimal128(18, 4),
            "TIMESTAMP": pa.timestamp("us"),
            # Text, cast by the view below: Arrow has no UUID or JSON type DuckDB reads natively.
            "UUID": pa.string(),
            "JSON": pa.string(),
            "VARCHAR": pa.string(),
        }
        types = [*(arrow_types[c.duckdb_type] for c in self._columns), pa.int64()]
        names = [*(c.name for c in self._columns), "_seq"]
        batch = pa.Table.from_arrays(
            [pa.array(values, kind) for values, kind in zip(columns, types, strict=True)], names=names
        )
        casts = ", ".join(f"CAST({quote(c.name)} AS {c.duckdb_type})" for c in self._columns)
        arrow_name = f"{_BATCH}_arrow"
        conn.register(arrow_name, batch)
        try:
            conn.execute(f"CREATE OR REPLACE TEMP VIEW {_BATCH} AS SELECT {casts}, _seq FROM {arrow_name}")
        except BaseException:
            conn.unregister(arrow_name)
            raise

        def release() -> None:
            conn.execute(f"DROP VIEW temp.{_BATCH}")
            conn.unregister(arrow_name)

        return release

    def _values(self, records: Sequence[NexudusRecord]) -> list[list[Any]]:
        """Each column's values, converted to what the column takes."""
        # One C-level call per record reads every field; zip turns the rows into columns.
        read = self._read
        rows = [(*read(record), record.model_extra or None) for record in records]
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in self._kinds]
        converted = []
        for (_, kind), values in zip(self._kinds, columns, strict=True):
            convert = kind.convert
            converted.append(
                [None if value is None else convert(value) for value in values] if convert else list(values)
            )
        return converted
