"""Staging one entity's sync: each batch of records as Arrow into `raw._stage_<table>`, each
record that failed validation into the quarantine, `raw._rejected_records`."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any

import duckdb
import pyarrow as pa

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

#: Connection-local name under which an Arrow batch is inserted.
_BATCH = "_nexudus_batch"


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

    def __init__(self, entity: Entity, run_id: str) -> None:
        self.entity = entity
        self.run_id = run_id
        self.table = f"{SCHEMA}._stage_{entity.table}"
        self._columns = data_columns(entity)
        self._column_list = ", ".join(quote(c.name) for c in self._columns)

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
        batch, unstorable = self._storable(records)
        rejected = [*rejected, *unstorable]
        with transaction(conn):
            if batch.num_rows:
                (first_seq,) = one_row(conn, f"SELECT coalesce(max(_seq) + 1, 0) FROM {self.table}")
                seq = pa.array(range(first_seq, first_seq + batch.num_rows), pa.int64())
                casts = ", ".join(f"CAST({quote(c.name)} AS {c.duckdb_type})" for c in self._columns)
                insert_batch(
                    conn,
                    batch.append_column("_seq", seq),
                    f"INSERT INTO {self.table} ({self._column_list}, _seq) SELECT {casts}, _seq FROM {_BATCH}",
                )
            if rejected:
                insert_batch(
                    conn,
                    _rejected_table(rejected),
                    f"""INSERT INTO {REJECTED_RECORDS} (entity, record_id, reason, raw_json, rejected_at, run_id)
                        SELECT $1, record_id, reason, CAST(raw_json AS JSON), $2, $3 FROM {_BATCH}""",
                    [self.entity.table, now, self.run_id],
                )

    def drop(self, conn: duckdb.DuckDBPyConnection) -> None:
        conn.execute(f"DROP TABLE {self.table}")

    def _storable(self, records: Sequence[NexudusRecord]) -> tuple[pa.Table, list[RejectedRecord]]:
        """The batch as Arrow, minus records a column cannot hold (e.g. a price beyond DECIMAL(18,4))."""
        try:
            return self._arrow(records), []
        except (ValueError, ArithmeticError):
            # One out-of-range value must not sink the batch, nor every later sync: find it.
            storable, unstorable = [], []
            for record in records:
                try:
                    self._arrow([record])
                except (ValueError, ArithmeticError) as error:
                    raw = record.model_dump(mode="json", by_alias=True)
                    unstorable.append(RejectedRecord(record.id, f"cannot be stored: {error}", raw))
                else:
                    storable.append(record)
            return self._arrow(storable), unstorable

    def _arrow(self, records: Sequence[NexudusRecord]) -> pa.Table:
        # One C-level call per record reads every field; zip turns the rows into columns.
        kinds = field_kinds(self.entity.model)
        read = attrgetter(*[name for name, _ in kinds if name != "_extra"])
        rows = [(*read(record), record.model_extra or None) for record in records]
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in kinds]
        arrays = []
        for (_, kind), values in zip(kinds, columns, strict=True):
            if kind.to_arrow is not None:
                convert = kind.to_arrow
                values = tuple(None if value is None else convert(value) for value in values)
            arrays.append(pa.array(values, kind.arrow_type))
        return pa.Table.from_arrays(arrays, names=[name for name, _ in kinds])


def insert_batch(conn: duckdb.DuckDBPyConnection, batch: pa.Table, sql: str, params: list[Any] | None = None) -> None:
    """Run an `INSERT ... SELECT ... FROM _BATCH` over an Arrow table: bulk, never row by row."""
    conn.register(_BATCH, batch)
    try:
        conn.execute(sql, params)
    finally:
        conn.unregister(_BATCH)


def _rejected_table(rejected: Sequence[RejectedRecord]) -> pa.Table:
    return pa.table(
        {
            "record_id": pa.array([r.record_id for r in rejected], pa.int64()),
            "reason": pa.array([r.reason for r in rejected], pa.string()),
            "raw_json": pa.array([to_json(r.raw) for r in rejected], pa.string()),
        }
    )
