"""Writing one entity's sync: stage batches as pages arrive, then publish in one transaction.

Only `publish` touches the live table and its history, and it also advances the cursor and
writes the sync log, so a run killed at any point leaves the previous state intact and the
high-water mark never runs ahead of the rows it covers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from operator import attrgetter
from typing import Any, Literal

import duckdb
import pyarrow as pa

from nexudus_assets.nexudus.entities import Entity
from nexudus_assets.nexudus.errors import RecordValidationError
from nexudus_assets.nexudus.models import NexudusRecord, valid_id
from nexudus_assets.warehouse.schema import (
    REJECTED_RECORDS,
    SCHEMA,
    SYNC_LOG,
    SYNC_STATE,
    column_ddl,
    data_columns,
    ensure_schema,
    field_kinds,
    history_table,
    qualified,
    quote,
    to_json,
    transaction,
)

Mode = Literal["incremental", "full"]

#: Below this many live rows the deletion guard stays out of the way (a tiny table can empty out).
_GUARD_MIN_LIVE_ROWS = 10

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


@dataclass(frozen=True)
class SyncResult:
    """What one published sync did; the same numbers go to `_sync_log`."""

    inserted: int
    updated: int
    unchanged: int
    deleted: int
    rejected: int
    live_rows: int
    #: Records received: staged rows (duplicates included) plus rejected ones.
    fetched: int
    high_water_mark: dt.datetime | None


class DeletionGuardError(RuntimeError):
    """A full sync would soft-delete too much of the table; nothing was written."""


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


def read_high_water_mark(conn: duckdb.DuckDBPyConnection, entity: Entity) -> dt.datetime | None:
    """The entity's published cursor; None before its first sync."""
    (exists,) = _one_row(
        conn,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [SCHEMA, SYNC_STATE.removeprefix(f"{SCHEMA}.")],
    )
    if not exists:
        return None
    rows = conn.execute(f"SELECT high_water_mark FROM {SYNC_STATE} WHERE entity = ?", [entity.table]).fetchall()
    return rows[0][0] if rows else None


class EntitySync:
    """One sync of one entity: `begin`, `stage` per batch, (`missing_ids` in full mode), `publish`.

    Every call takes the caller's connection and runs as one transaction of its own, so the
    calls may use different (short-lived) connections to the same database file.
    """

    def __init__(self, entity: Entity, *, run_id: str, mode: Mode, now: dt.datetime | None = None) -> None:
        if mode not in ("incremental", "full"):
            raise ValueError(f"mode must be 'incremental' or 'full', not {mode!r}")
        self.entity = entity
        self.run_id = run_id
        self.mode = mode
        self._now = _utc_naive(now) if now is not None else None
        self._table = qualified(entity)
        self._history = history_table(entity)
        self._staging = f"{SCHEMA}._stage_{entity.table}"
        #: The staged rows classified against the live table; lives only inside `publish`.
        self._changes = f"{SCHEMA}._changes_{entity.table}"
        self._data_columns = data_columns(entity)
        self._columns = [quote(c.name) for c in self._data_columns]
        self._column_list = ", ".join(self._columns)
        self._value_columns = [c for c in self._columns if c != quote("id")]
        self._started_at: dt.datetime | None = None

    def _clock(self) -> dt.datetime:
        return self._now or dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def _require_begun(self) -> dt.datetime:
        if self._started_at is None:
            raise RuntimeError(f"{self.entity.table}: call begin() before staging or publishing")
        return self._started_at

    def begin(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Ensure the schema and start an empty staging table, discarding a killed run's leftovers."""
        ensure_schema(conn)
        with transaction(conn):
            # `_seq` orders staged rows so that the last one staged for an id wins.
            conn.execute(
                f"CREATE OR REPLACE TABLE {self._staging}"
                f" ({column_ddl(self._data_columns)}, _seq BIGINT NOT NULL)"
            )
            # A retried step keeps its run id; its earlier attempt's rejections are fetched again.
            conn.execute(
                f"DELETE FROM {REJECTED_RECORDS} WHERE entity = ? AND run_id = ?",
                [self.entity.table, self.run_id],
            )
        self._started_at = self._clock()

    def stage(
        self,
        conn: duckdb.DuckDBPyConnection,
        records: Sequence[NexudusRecord],
        rejected: Sequence[RejectedRecord] = (),
    ) -> None:
        """Add one batch to staging and its rejections to the quarantine, in one transaction."""
        self._require_begun()
        batch, unstorable = self._storable(records)
        rejected = [*rejected, *unstorable]
        with transaction(conn):
            if batch.num_rows:
                (first_seq,) = _one_row(conn, f"SELECT coalesce(max(_seq) + 1, 0) FROM {self._staging}")
                seq = pa.array(range(first_seq, first_seq + batch.num_rows), pa.int64())
                casts = ", ".join(f"CAST({quote(c.name)} AS {c.duckdb_type})" for c in self._data_columns)
                _insert(
                    conn,
                    batch.append_column("_seq", seq),
                    f"INSERT INTO {self._staging} ({self._column_list}, _seq) SELECT {casts}, _seq FROM {_BATCH}",
                )
            if rejected:
                _insert(
                    conn,
                    _rejected_table(rejected),
                    f"""INSERT INTO {REJECTED_RECORDS} (entity, record_id, reason, raw_json, rejected_at, run_id)
                        SELECT $1, record_id, reason, CAST(raw_json AS JSON), $2, $3 FROM {_BATCH}""",
                    [self.entity.table, self._clock(), self.run_id],
                )

    def missing_ids(self, conn: duckdb.DuckDBPyConnection) -> list[int]:
        """Full mode: live ids absent from staging (and not rejected this run), to confirm upstream."""
        if self.mode != "full":
            raise RuntimeError("missing_ids() belongs to a full sync: an incremental one sees only changes")
        self._require_begun()
        rows = conn.execute(f"{self._missing_sql()} ORDER BY t.id", self._missing_params()).fetchall()
        return [record_id for (record_id,) in rows]

    def publish(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        requests: int = 0,
        throttled: int = 0,
        max_delete_fraction: float = 0.5,
        complete: bool = True,
    ) -> SyncResult:
        """Apply staging to the live table and its history, advance the cursor and log the sync, in one transaction.

        Full mode soft-deletes live rows missing from staging; raises DeletionGuardError (and
        writes nothing) when that would hit more than `max_delete_fraction` of the live rows.
        `complete=False` (the list ended before the count it announced) keeps the cursor where
        it was: the records not read may be older than the ones that were.
        """
        started_at = self._require_begun()
        now = self._clock()
        with transaction(conn):
            live_before = self._live_rows(conn)
            deleted = self._count_missing(conn) if self.mode == "full" else 0
            if live_before >= _GUARD_MIN_LIVE_ROWS and deleted > max_delete_fraction * live_before:
                raise DeletionGuardError(
                    f"{self.entity.table}: the full sync would soft-delete {deleted} of {live_before} live"
                    f" rows (more than {max_delete_fraction:.0%}); refusing, nothing was written."
                    " An empty or truncated answer from the API looks like this."
                )
            (deduplicate,) = _one_row(conn, f"SELECT count(*) > count(DISTINCT id) FROM {self._staging}")
            # Classified into a table of its own first: an upsert whose source reads the table it
            # writes must hold the whole source in memory, which a large first load cannot.
            conn.execute(f"CREATE OR REPLACE TABLE {self._changes} AS {self._classified_sql(deduplicate)}")
            staged, inserted, updated, unchanged, newest = _one_row(
                conn,
                f"""SELECT
                        (SELECT count(*) FROM {self._staging}),
                        count(*) FILTER (WHERE _change = 'inserted'),
                        count(*) FILTER (WHERE _change = 'updated'),
                        count(*) FILTER (WHERE _change = 'unchanged'),
                        max(updated_on)
                    FROM {self._changes}""",
            )
            self._upsert_changes(conn, now)
            self._add_versions(conn, now)
            conn.execute(f"DROP TABLE {self._changes}")
            if deleted:
                # The history first: the live rows still say which records are missing.
                conn.execute(
                    f"""UPDATE {self._history} SET _valid_to = ?, _deleted_at = ?
                        WHERE _valid_to IS NULL AND id IN ({self._missing_sql()})""",
                    [now, now, *self._missing_params()],
                )
                conn.execute(
                    f"UPDATE {self._table} SET _deleted_at = ? WHERE id IN ({self._missing_sql()})",
                    [now, *self._missing_params()],
                )
            (rejected,) = _one_row(
                conn,
                f"SELECT count(*) FROM {REJECTED_RECORDS} WHERE entity = ? AND run_id = ?",
                [self.entity.table, self.run_id],
            )
            result = SyncResult(
                inserted=inserted,
                updated=updated,
                unchanged=unchanged,
                deleted=deleted,
                rejected=rejected,
                live_rows=self._live_rows(conn),
                fetched=staged + rejected,
                high_water_mark=self._next_high_water_mark(
                    read_high_water_mark(conn, self.entity), newest if complete else None, started_at
                ),
            )
            self._save_state(conn, result, now)
            self._log(conn, result, started_at, now, requests, throttled)
            conn.execute(f"DROP TABLE {self._staging}")
        return result

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
        fields = [name for name, _ in kinds if name != "_extra"]
        rows = [(*read(record), record.model_extra or None) for record in records] if (read := attrgetter(*fields)) else []
        columns = list(zip(*rows, strict=True)) if rows else [() for _ in kinds]
        arrays = []
        for (_, kind), values in zip(kinds, columns, strict=True):
            if kind.to_arrow is not None:
                convert = kind.to_arrow
                values = [None if value is None else convert(value) for value in values]
            arrays.append(pa.array(values, kind.arrow_type))
        return pa.Table.from_arrays(arrays, names=[name for name, _ in kinds])

    def _classified_sql(self, deduplicate: bool) -> str:
        """Staging by id (last staged wins), each row marked inserted/updated/unchanged.

        The window that keeps the last staged row of an id holds the whole staging table in
        memory; staging holds an id twice only after page drift, so it runs only then.
        """
        differs = " OR ".join(f"s.{c} IS DISTINCT FROM t.{c}" for c in self._value_columns)
        columns = ", ".join(f"s.{c}" for c in self._columns)
        staged = (
            f"(SELECT * FROM {self._staging} QUALIFY row_number() OVER (PARTITION BY id ORDER BY _seq DESC) = 1)"
            if deduplicate
            else self._staging
        )
        return f"""
            SELECT {columns},
                CASE
                    WHEN t.id IS NULL THEN 'inserted'
                    WHEN t._deleted_at IS NOT NULL OR {differs} THEN 'updated'
                    ELSE 'unchanged'
                END AS _change
            FROM {staged} AS s
            LEFT JOIN {self._table} AS t ON t.id = s.id"""

    def _upsert_changes(self, conn: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
        # A plain INSERT streams to the file however many rows it adds; an upsert (ON CONFLICT)
        # holds them all in memory. So new rows are inserted and changed rows updated.
        # Unchanged rows are left alone: `_synced_at` says when a version was written.
        conn.execute(
            f"""INSERT INTO {self._table} ({self._column_list}, _synced_at, _deleted_at)
                SELECT {self._column_list}, $1, NULL FROM {self._changes} WHERE _change = 'inserted'""",
            [now],
        )
        assignments = ", ".join(f"{c} = c.{c}" for c in self._value_columns)
        conn.execute(
            f"""UPDATE {self._table} AS t SET {assignments}, _synced_at = $1, _deleted_at = NULL
                FROM {self._changes} AS c
                WHERE t.id = c.id AND c._change = 'updated'""",
            [now],
        )

    def _add_versions(self, conn: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
        """Close the current version of each changed record and add the new ones, as plain streaming writes."""
        conn.execute(
            f"""UPDATE {self._history} AS h SET _valid_to = $1
                FROM {self._changes} AS c
                WHERE h.id = c.id AND c._change = 'updated' AND h._valid_to IS NULL""",
            [now],
        )
        conn.execute(
            f"""INSERT INTO {self._history} ({self._column_list}, _synced_at, _deleted_at, _valid_from, _valid_to)
                SELECT {self._column_list}, $1, NULL, $1, NULL FROM {self._changes}
                WHERE _change IN ('inserted', 'updated')""",
            [now],
        )

    def _missing_sql(self) -> str:
        # A rejected record still exists upstream: it is quarantined, not deleted.
        return f"""
            SELECT t.id FROM {self._table} AS t
            WHERE t._deleted_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM {self._staging} AS s WHERE s.id = t.id)
                AND NOT EXISTS (
                    SELECT 1 FROM {REJECTED_RECORDS} AS r
                    WHERE r.entity = ? AND r.run_id = ? AND r.record_id = t.id
                )"""

    def _missing_params(self) -> list[str]:
        return [self.entity.table, self.run_id]

    def _count_missing(self, conn: duckdb.DuckDBPyConnection) -> int:
        (count,) = _one_row(conn, f"SELECT count(*) FROM ({self._missing_sql()})", self._missing_params())
        return count

    def _live_rows(self, conn: duckdb.DuckDBPyConnection) -> int:
        (count,) = _one_row(conn, f"SELECT count(*) FROM {self._table} WHERE _deleted_at IS NULL")
        return count

    def _next_high_water_mark(
        self, old: dt.datetime | None, newest: dt.datetime | None, started_at: dt.datetime
    ) -> dt.datetime | None:
        if newest is None:
            return old
        # An `UpdatedOn` from the future (a clock ahead of ours) would carry the cursor past
        # changes still to come; the moment the sync began is as far as it has seen.
        newest = min(newest, started_at)
        if self.mode == "full" or old is None:
            # A full sync saw everything, so its newest change is the truth even if lower.
            return newest
        return max(old, newest)

    def _save_state(self, conn: duckdb.DuckDBPyConnection, result: SyncResult, now: dt.datetime) -> None:
        conn.execute(
            f"""INSERT INTO {SYNC_STATE} (entity, high_water_mark, last_synced_at, last_full_refresh_at)
                VALUES ($1, $2, $3, $4)
                ON CONFLICT (entity) DO UPDATE SET
                    high_water_mark = excluded.high_water_mark,
                    last_synced_at = excluded.last_synced_at,
                    last_full_refresh_at = coalesce(excluded.last_full_refresh_at, last_full_refresh_at)""",
            [self.entity.table, result.high_water_mark, now, now if self.mode == "full" else None],
        )

    def _log(
        self,
        conn: duckdb.DuckDBPyConnection,
        result: SyncResult,
        started_at: dt.datetime,
        finished_at: dt.datetime,
        requests: int,
        throttled: int,
    ) -> None:
        conn.execute(
            f"""INSERT INTO {SYNC_LOG} (run_id, entity, mode, started_at, finished_at, fetched, inserted,
                    updated, unchanged, deleted, rejected, live_rows, high_water_mark, requests, throttled)
                VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
            [
                self.run_id,
                self.entity.table,
                self.mode,
                started_at,
                finished_at,
                result.fetched,
                result.inserted,
                result.updated,
                result.unchanged,
                result.deleted,
                result.rejected,
                result.live_rows,
                result.high_water_mark,
                requests,
                throttled,
            ],
        )


def _one_row(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    # Read to the end: DuckDB refuses other work on a connection whose result was read only in part.
    (row,) = conn.execute(sql, params).fetchall()
    return row


def _insert(conn: duckdb.DuckDBPyConnection, batch: pa.Table, sql: str, params: list[Any] | None = None) -> None:
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
