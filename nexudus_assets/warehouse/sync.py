"""Writing one entity's sync: stage batches as pages arrive, then publish in one transaction.

Only `publish` touches the live table and its history, and it also advances the cursor and
writes the sync log, so a run killed at any point leaves the previous state intact and the
high-water mark never runs ahead of the rows it covers. The parts: `staging.py` (batches and
quarantine), `changes.py` (classification, live table, history), `bookkeeping.py` (cursor, log).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from nexudus_assets.nexudus.account import Account
from nexudus_assets.nexudus.entities import Entity
from nexudus_assets.nexudus.models import NexudusRecord
from nexudus_assets.warehouse.bookkeeping import (
    Mode,
    SyncResult,
    SyncRun,
    claim_for_account,
    log_sync,
    next_high_water_mark,
    read_high_water_mark,
    refuse_other_account,
    rejected_in_run,
    save_state,
)
from nexudus_assets.warehouse.changes import ChangeCounts, StagedChanges
from nexudus_assets.warehouse.schema import ensure_schema, one_row, qualified
from nexudus_assets.warehouse.staging import ARROW_MIN_ROWS, RejectedRecord, Staging

#: Below this many live rows the deletion guard stays out of the way (a tiny table can empty out).
_GUARD_MIN_LIVE_ROWS = 10


@dataclass(frozen=True)
class _PendingPublish:
    """A publish between `start_publish` and `finish_publish`: its transaction is open."""

    started_at: dt.datetime
    now: dt.datetime
    counts: ChangeCounts
    deleted: int


class DeletionGuardError(RuntimeError):
    """A full sync would soft-delete too much of the table; nothing was written."""


def _utc_naive(value: dt.datetime) -> dt.datetime:
    if value.tzinfo is not None:
        return value.astimezone(dt.UTC).replace(tzinfo=None)
    return value


class EntitySync:
    """One sync of one entity: `begin`, `stage` per batch, (`missing_ids` in full mode), `publish`.

    Every call takes the caller's connection and runs as one transaction of its own, so the
    calls may use different (short-lived) connections to the same database file; `publish` may
    be made in two halves, `start_publish` and `finish_publish`, one transaction on one connection.
    """

    def __init__(
        self,
        entity: Entity,
        *,
        run_id: str,
        mode: Mode,
        account: Account | None = None,
        now: dt.datetime | None = None,
        arrow_from_rows: int = ARROW_MIN_ROWS,
    ) -> None:
        """`account`: where the records come from. The warehouse records it with its first data, and a
        warehouse of another account is refused (WarehouseAccountError) before anything is written.
        None only where no account is involved (records made up by the caller).
        `arrow_from_rows`: the rows staged after which batches go to DuckDB as Arrow."""
        if mode not in ("incremental", "full"):
            raise ValueError(f"mode must be 'incremental' or 'full', not {mode!r}")
        self.entity = entity
        self.run_id = run_id
        self.mode = mode
        self.account = account
        self._now = _utc_naive(now) if now is not None else None
        self._staging = Staging(entity, run_id, arrow_from_rows=arrow_from_rows)
        self._changes = StagedChanges(entity, self._staging.table, run_id)
        self._started_at: dt.datetime | None = None
        self._pending: _PendingPublish | None = None
        #: Records the walk left out as versions the live table holds (`known_versions`).
        self._known = 0

    def _clock(self) -> dt.datetime:
        return self._now or dt.datetime.now(dt.UTC).replace(tzinfo=None)

    def _require_begun(self) -> dt.datetime:
        if self._started_at is None:
            raise RuntimeError(f"{self.entity.table}: call begin() before staging or publishing")
        return self._started_at

    def begin(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Ensure the schema and start an empty staging table, discarding a killed run's leftovers."""
        if self.account is not None:
            refuse_other_account(conn, self.account)
        ensure_schema(conn)
        self._staging.create(conn)
        self._started_at = self._clock()

    def stage(
        self,
        conn: duckdb.DuckDBPyConnection,
        records: Sequence[NexudusRecord],
        rejected: Sequence[RejectedRecord] = (),
    ) -> None:
        """Add one batch to staging and its rejections to the quarantine, in one transaction."""
        self._require_begun()
        self._staging.add(conn, records, rejected, self._clock())

    def known_versions(
        self, conn: duckdb.DuckDBPyConnection, since: dt.datetime, settle: dt.timedelta
    ) -> dict[int, dt.datetime]:
        """Incremental mode: Id -> `UpdatedOn` of the live versions since `since` a walk need not stage again.

        Each one the walk leaves out is reported with `count_known` and published as unchanged.
        A full sync stages every record: an Id it does not stage is one it looks for upstream.
        """
        if self.mode != "incremental":
            raise RuntimeError("known_versions() belongs to an incremental sync: a full one stages every record")
        self._require_begun()
        return self._changes.known_versions(conn, since, settle)

    def count_known(self, count: int) -> None:
        """Records the walk left out as known versions: fetched and unchanged in the result."""
        self._known += count

    @property
    def known(self) -> int:
        """The records `count_known` has counted so far."""
        return self._known

    def missing_ids(self, conn: duckdb.DuckDBPyConnection) -> list[int]:
        """Full mode: live ids absent from staging (and not rejected this run), to confirm upstream."""
        if self.mode != "full":
            raise RuntimeError("missing_ids() belongs to a full sync: an incremental one sees only changes")
        self._require_begun()
        return self._changes.missing_ids(conn)

    def publish(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        requests: int = 0,
        throttled: int = 0,
        max_delete_fraction: float = 0.5,
        pages: int = 0,
        verification_pages: int = 0,
        walk_incomplete: str | None = None,
    ) -> SyncResult:
        """Apply staging to the live table and its history, advance the cursor and log the sync, in one transaction.

        Full mode soft-deletes live rows missing from staging; raises DeletionGuardError (and
        writes nothing) when that would hit more than `max_delete_fraction` of the live rows.
        `walk_incomplete` (why the walk could not account for every record) keeps the cursor
        where it was, and goes to the log: the records not read may be older than the ones that were.
        """
        self.start_publish(conn, max_delete_fraction=max_delete_fraction)
        return self.finish_publish(
            conn,
            requests=requests,
            throttled=throttled,
            pages=pages,
            verification_pages=verification_pages,
            walk_incomplete=walk_incomplete,
        )

    def start_publish(self, conn: duckdb.DuckDBPyConnection, *, max_delete_fraction: float = 0.5) -> None:
        """The first half of `publish`: opens its transaction and writes what staging changes,
        live table and history. `finish_publish` commits it with the bookkeeping, `abandon_publish`
        rolls it back; until then nothing is staged on `conn`.

        Split so that the walk can go on checking the list while the changes are written: what
        the bookkeeping records (requests, pages, whether the walk was complete) is known at its end.
        """
        started_at = self._require_begun()
        if self._pending is not None:
            raise RuntimeError(f"{self.entity.table}: a publish is already under way")
        now = self._clock()
        conn.begin()
        try:
            if self.account is not None:
                claim_for_account(conn, self.account)
            live_before = self._live_rows(conn)
            deleted = self._changes.count_missing(conn) if self.mode == "full" else 0
            if live_before >= _GUARD_MIN_LIVE_ROWS and deleted > max_delete_fraction * live_before:
                raise DeletionGuardError(
                    f"{self.entity.table}: the full sync would soft-delete {deleted} of {live_before} live"
                    f" rows (more than {max_delete_fraction:.0%}); refusing, nothing was written."
                    " An empty or truncated answer from the API looks like this."
                )
            counts = self._changes.classify(conn)
            self._changes.apply(conn, now)
            if deleted:
                self._changes.delete_missing(conn, now)
        except BaseException:
            conn.rollback()
            raise
        self._pending = _PendingPublish(started_at, now, counts, deleted)

    def finish_publish(
        self,
        conn: duckdb.DuckDBPyConnection,
        *,
        requests: int = 0,
        throttled: int = 0,
        pages: int = 0,
        verification_pages: int = 0,
        walk_incomplete: str | None = None,
    ) -> SyncResult:
        """The second half of `publish`: advance the cursor, log the sync, drop staging, commit."""
        pending = self._pending
        if pending is None:
            raise RuntimeError(f"{self.entity.table}: call start_publish() before finish_publish()")
        self._pending = None
        try:
            counts = pending.counts
            rejected = rejected_in_run(conn, self.entity, self.run_id)
            result = SyncResult(
                inserted=counts.inserted,
                updated=counts.updated,
                unchanged=counts.unchanged + self._known,
                deleted=pending.deleted,
                rejected=rejected,
                live_rows=self._live_rows(conn),
                fetched=counts.staged + rejected + self._known,
                high_water_mark=next_high_water_mark(
                    self.mode,
                    read_high_water_mark(conn, self.entity),
                    counts.newest if walk_incomplete is None else None,
                    pending.started_at,
                ),
            )
            save_state(conn, self.entity, self.mode, result, pending.now)
            run = SyncRun(
                self.run_id,
                self.entity,
                self.mode,
                pending.started_at,
                pending.now,
                requests,
                throttled,
                pages=pages,
                verification_pages=verification_pages,
                walk_incomplete=walk_incomplete,
            )
            log_sync(conn, run, result)
            self._staging.drop(conn)
        except BaseException:
            conn.rollback()
            raise
        conn.commit()
        return result

    @property
    def publish_started(self) -> bool:
        """Whether `start_publish` has run and neither `finish_publish` nor `abandon_publish` since."""
        return self._pending is not None

    def abandon_publish(self, conn: duckdb.DuckDBPyConnection) -> None:
        """Rolls back a started publish, if one is: staging, live table and history are as before it."""
        if self._pending is not None:
            self._pending = None
            conn.rollback()

    def _live_rows(self, conn: duckdb.DuckDBPyConnection) -> int:
        (count,) = one_row(conn, f"SELECT count(*) FROM {qualified(self.entity)} WHERE _deleted_at IS NULL")
        return int(count)
