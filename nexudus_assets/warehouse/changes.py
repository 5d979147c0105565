"""What a staged sync changes: each staged row classified against the live table, then written
to the live table and its history; in a full sync, the live rows staging no longer holds."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import duckdb

from nexudus_assets.nexudus.entities import Entity
from nexudus_assets.warehouse.schema import (
    REJECTED_RECORDS,
    SCHEMA,
    SYNC_LOG,
    data_columns,
    history_table,
    one_row,
    qualified,
    quote,
)


@dataclass(frozen=True)
class ChangeCounts:
    staged: int
    inserted: int
    updated: int
    unchanged: int
    #: The newest `updated_on` among the staged rows; None when nothing was staged.
    newest: dt.datetime | None


class StagedChanges:
    """One entity's staging table held against its live table and history.

    `classify` first: it writes the classification to a table of its own that `apply` reads.
    """

    def __init__(self, entity: Entity, staging_table: str, run_id: str) -> None:
        self.entity = entity
        self.run_id = run_id
        self._staging = staging_table
        self._live = qualified(entity)
        self._history = history_table(entity)
        #: The staged rows classified against the live table; exists between `classify` and `apply`.
        self._changes = f"{SCHEMA}._changes_{entity.table}"
        self._columns = [quote(c.name) for c in data_columns(entity)]
        self._column_list = ", ".join(self._columns)
        self._value_columns = [c for c in self._columns if c != quote("id")]

    def classify(self, conn: duckdb.DuckDBPyConnection) -> ChangeCounts:
        (twice,) = one_row(conn, f"SELECT count(*) > count(DISTINCT id) FROM {self._staging}")
        # Classified into a table of its own first: an upsert whose source reads the table it
        # writes must hold the whole source in memory, which a large first load cannot.
        conn.execute(f"CREATE OR REPLACE TABLE {self._changes} AS {self._classified_sql(deduplicate=twice)}")
        return ChangeCounts(
            *one_row(
                conn,
                f"""SELECT
                        (SELECT count(*) FROM {self._staging}),
                        count(*) FILTER (WHERE _change = 'inserted'),
                        count(*) FILTER (WHERE _change = 'updated'),
                        count(*) FILTER (WHERE _change = 'unchanged'),
                        max(updated_on)
                    FROM {self._changes}""",
            )
        )

    def apply(self, conn: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
        """The classified rows into the live table and, as new versions, into the history."""
        self._upsert(conn, now)
        self._add_versions(conn, now)
        conn.execute(f"DROP TABLE {self._changes}")

    def count_missing(self, conn: duckdb.DuckDBPyConnection) -> int:
        (count,) = one_row(conn, f"SELECT count(*) FROM ({self._missing_sql()})", self._missing_params())
        return int(count)

    def missing_ids(self, conn: duckdb.DuckDBPyConnection) -> list[int]:
        """Live ids staging does not hold, rejected ones aside: deleted upstream, or not listed."""
        rows = conn.execute(f"{self._missing_sql()} ORDER BY t.id", self._missing_params()).fetchall()
        return [record_id for (record_id,) in rows]

    def delete_missing(self, conn: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
        """Soft-delete the missing rows and end their current versions."""
        # The history first: the live rows still say which records are missing.
        conn.execute(
            f"""UPDATE {self._history} SET _valid_to = ?, _deleted_at = ?
                WHERE _valid_to IS NULL AND id IN ({self._missing_sql()})""",
            [now, now, *self._missing_params()],
        )
        conn.execute(
            f"UPDATE {self._live} SET _deleted_at = ? WHERE id IN ({self._missing_sql()})",
            [now, *self._missing_params()],
        )

    def known_versions(
        self, conn: duckdb.DuckDBPyConnection, since: dt.datetime, settle: dt.timedelta
    ) -> dict[int, dt.datetime]:
        """Id -> `UpdatedOn` of the live versions updated since `since` that a walk can leave out.

        A version is its Id and its `UpdatedOn`, but a server that stamps whole seconds can stamp a
        second change in the same second as the first. So only versions read (by the sync that
        wrote them, which began at `started_at` in the log) at least `settle` after their stamp
        count: the allowance the cursor already makes for changes committed late.
        """
        rows = conn.execute(
            f"""SELECT t.id, t.updated_on FROM {self._live} AS t
                JOIN {SYNC_LOG} AS l ON l.entity = $1 AND l.finished_at = t._synced_at
                WHERE t._deleted_at IS NULL AND t.updated_on >= $2 AND t.updated_on <= l.started_at - $3""",
            [self.entity.table, since, settle],
        ).fetchall()
        return dict(rows)

    def _classified_sql(self, *, deduplicate: bool) -> str:
        """Staging by id (latest `UpdatedOn`, then last staged, wins), each marked inserted/updated/unchanged.

        An id staged twice is one answered twice in a walk (a step back after drift, or a
        server repeating it); the copy an older `UpdatedOn` names is the stale one, whichever
        came last. The window holds the whole staging table in memory, so it runs only then.
        """
        differs = " OR ".join(f"s.{c} IS DISTINCT FROM t.{c}" for c in self._value_columns)
        columns = ", ".join(f"s.{c}" for c in self._columns)
        latest_first = "ORDER BY updated_on DESC NULLS LAST, _seq DESC"
        staged = (
            f"(SELECT * FROM {self._staging} QUALIFY row_number() OVER (PARTITION BY id {latest_first}) = 1)"
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
            LEFT JOIN {self._live} AS t ON t.id = s.id"""

    def _upsert(self, conn: duckdb.DuckDBPyConnection, now: dt.datetime) -> None:
        # A plain INSERT streams to the file however many rows it adds; an upsert (ON CONFLICT)
        # holds them all in memory. So a changed row is deleted and inserted again with the new
        # ones: an UPDATE of every column costs several times as much, in the statement and in
        # the checkpoint. Unchanged rows are left alone: `_synced_at` says when a version was written.
        conn.execute(
            f"""DELETE FROM {self._live}
                WHERE id IN (SELECT id FROM {self._changes} WHERE _change = 'updated')"""
        )
        conn.execute(
            f"""INSERT INTO {self._live} ({self._column_list}, _synced_at, _deleted_at)
                SELECT {self._column_list}, $1, NULL FROM {self._changes} WHERE _change IN ('inserted', 'updated')""",
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
            SELECT t.id FROM {self._live} AS t
            WHERE t._deleted_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM {self._staging} AS s WHERE s.id = t.id)
                AND NOT EXISTS (
                    SELECT 1 FROM {REJECTED_RECORDS} AS r
                    WHERE r.entity = ? AND r.run_id = ? AND r.record_id = t.id
                )"""

    def _missing_params(self) -> list[str]:
        return [self.entity.table, self.run_id]
