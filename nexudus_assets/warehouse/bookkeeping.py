"""What the warehouse records about each sync: the cursor per entity (`raw._sync_state`), one log
row per published sync (`raw._sync_log`), the rejections of a run, and the account it all came
from (`raw._account`)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Literal

import duckdb

from nexudus_assets.nexudus.account import Account
from nexudus_assets.nexudus.entities import Entity
from nexudus_assets.warehouse.schema import (
    ACCOUNT_RECORD,
    REJECTED_RECORDS,
    SYNC_LOG,
    SYNC_STATE,
    one_row,
    table_exists,
    transaction,
)

Mode = Literal["incremental", "full"]


class WarehouseAccountError(RuntimeError):
    """The warehouse holds another account's records; the message names both accounts."""


def warehouse_account(conn: duckdb.DuckDBPyConnection) -> Account | None:
    """The account the warehouse belongs to; None before its first write."""
    if not table_exists(conn, ACCOUNT_RECORD):
        return None
    row = conn.execute(f"SELECT base_url, username FROM {ACCOUNT_RECORD}").fetchone()
    return Account(base_url=row[0], username=row[1]) if row else None


def refuse_other_account(conn: duckdb.DuckDBPyConnection, account: Account) -> Account | None:
    """The account recorded (None before the first write); WarehouseAccountError when it is another.

    Writes nothing."""
    recorded = warehouse_account(conn)
    if recorded is not None and recorded != account:
        raise WarehouseAccountError(
            f"this warehouse belongs to the Nexudus account {recorded}, and this run is for {account}; "
            "nothing was written. Point NEXUDUS_DUCKDB_PATH at that account's warehouse (`make account` "
            "makes one per account), or, if the account itself moved, see the README's \"Moving a "
            'warehouse to another account"'
        )
    return recorded


def claim_for_account(conn: duckdb.DuckDBPyConnection, account: Account) -> None:
    """Inside the caller's transaction: record `account` in a warehouse that has none, refuse another one."""
    if refuse_other_account(conn, account) is None:
        conn.execute(
            f"CREATE TABLE IF NOT EXISTS {ACCOUNT_RECORD} "
            "(base_url VARCHAR NOT NULL, username VARCHAR NOT NULL, recorded_at TIMESTAMP NOT NULL)"
        )
        conn.execute(
            f"INSERT INTO {ACCOUNT_RECORD} VALUES (?, ?, ?)",
            [account.base_url, account.username, dt.datetime.now(dt.UTC).replace(tzinfo=None)],
        )


def move_to_account(conn: duckdb.DuckDBPyConnection, account: Account) -> Account | None:
    """Record `account` in place of the one recorded, in one transaction; returns the one it replaced."""
    with transaction(conn):
        recorded = warehouse_account(conn)
        if recorded is not None:
            conn.execute(f"DELETE FROM {ACCOUNT_RECORD}")
        claim_for_account(conn, account)
    return recorded


@dataclass(frozen=True)
class SyncResult:
    """What one published sync did; the same numbers go to `_sync_log`."""

    inserted: int
    updated: int
    unchanged: int
    deleted: int
    rejected: int
    live_rows: int
    #: Records received: staged rows (duplicates included), rejected ones, and the known versions
    #: an incremental walk left out (also counted unchanged).
    fetched: int
    high_water_mark: dt.datetime | None


def read_high_water_mark(conn: duckdb.DuckDBPyConnection, entity: Entity) -> dt.datetime | None:
    """The entity's published cursor; None before its first sync."""
    if not table_exists(conn, SYNC_STATE):
        return None
    rows = conn.execute(f"SELECT high_water_mark FROM {SYNC_STATE} WHERE entity = ?", [entity.table]).fetchall()
    return rows[0][0] if rows else None


def next_high_water_mark(
    mode: Mode, old: dt.datetime | None, newest: dt.datetime | None, started_at: dt.datetime
) -> dt.datetime | None:
    """The cursor after a sync whose newest `UpdatedOn` was `newest` (None: keep the old one)."""
    if newest is None:
        return old
    # An `UpdatedOn` from the future (a clock ahead of ours) would carry the cursor past
    # changes still to come; the moment the sync began is as far as it has seen.
    newest = min(newest, started_at)
    if mode == "full" or old is None:
        # A full sync saw everything, so its newest change is the truth even if lower.
        return newest
    return max(old, newest)


def rejected_in_run(conn: duckdb.DuckDBPyConnection, entity: Entity, run_id: str) -> int:
    (count,) = one_row(
        conn, f"SELECT count(*) FROM {REJECTED_RECORDS} WHERE entity = ? AND run_id = ?", [entity.table, run_id]
    )
    return int(count)


def save_state(
    conn: duckdb.DuckDBPyConnection, entity: Entity, mode: Mode, result: SyncResult, now: dt.datetime
) -> None:
    conn.execute(
        f"""INSERT INTO {SYNC_STATE} (entity, high_water_mark, last_synced_at, last_full_refresh_at)
            VALUES ($1, $2, $3, $4)
            ON CONFLICT (entity) DO UPDATE SET
                high_water_mark = excluded.high_water_mark,
                last_synced_at = excluded.last_synced_at,
                last_full_refresh_at = coalesce(excluded.last_full_refresh_at, last_full_refresh_at)""",
        [entity.table, result.high_water_mark, now, now if mode == "full" else None],
    )


@dataclass(frozen=True)
class SyncRun:
    """Who synced what, when, and with how many requests: the log row's columns besides the result."""

    run_id: str
    entity: Entity
    mode: Mode
    started_at: dt.datetime
    finished_at: dt.datetime
    requests: int
    throttled: int
    #: List pages read, and of them the ones that re-walked the list to see nothing moved past it.
    pages: int = 0
    verification_pages: int = 0
    #: Why the walk could not account for every record (the cursor stayed); None when it could.
    walk_incomplete: str | None = None


def log_sync(conn: duckdb.DuckDBPyConnection, run: SyncRun, result: SyncResult) -> None:
    conn.execute(
        f"""INSERT INTO {SYNC_LOG} (run_id, entity, mode, started_at, finished_at, fetched, inserted,
                updated, unchanged, deleted, rejected, live_rows, high_water_mark, requests, throttled, pages,
                verification_pages, walk_incomplete)
            VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            run.run_id,
            run.entity.table,
            run.mode,
            run.started_at,
            run.finished_at,
            result.fetched,
            result.inserted,
            result.updated,
            result.unchanged,
            result.deleted,
            result.rejected,
            result.live_rows,
            result.high_water_mark,
            run.requests,
            run.throttled,
            run.pages,
            run.verification_pages,
            run.walk_incomplete,
        ],
    )


@dataclass(frozen=True)
class SyncShares:
    """What the drift checks weigh from one logged sync."""

    mode: Mode
    #: Records received, as `SyncResult.fetched` counts them.
    fetched: int
    rejected: int
    deleted: int
    #: Live rows before the sync: after it, less the ones it inserted, plus the ones it deleted.
    live_before: int


def sync_shares(conn: duckdb.DuckDBPyConnection, entity: Entity, run_id: str) -> SyncShares:
    """The last sync run `run_id` logged for `entity` (a retried step logs again)."""
    row = conn.execute(
        f"""SELECT mode, fetched, rejected, deleted, live_rows - inserted + deleted FROM {SYNC_LOG}
            WHERE entity = ? AND run_id = ? ORDER BY finished_at DESC LIMIT 1""",
        [entity.table, run_id],
    ).fetchone()
    if row is None:
        raise LookupError(f"{entity.table}: run {run_id} logged no sync")
    mode, fetched, rejected, deleted, live_before = row
    return SyncShares(mode, int(fetched), int(rejected), int(deleted), int(live_before))


#: A rejection's reason without the record it names ("AccessToken 12: field 'MinutesLeft': ..."),
#: so that the records rejected for the same fault count as one reason.
_REASON_WITHOUT_RECORD = (
    "CASE WHEN strpos(reason, 'field ''') > 0 THEN substr(reason, strpos(reason, 'field ''')) ELSE reason END"
)


def most_common_rejection(conn: duckdb.DuckDBPyConnection, entity: Entity, run_id: str) -> tuple[str | None, int]:
    """The reason most of the run's rejected records of `entity` share, and how many; (None, 0) if none."""
    row = conn.execute(
        f"""SELECT {_REASON_WITHOUT_RECORD} AS fault, count(*) AS records FROM {REJECTED_RECORDS}
            WHERE entity = ? AND run_id = ? GROUP BY fault ORDER BY records DESC, fault LIMIT 1""",
        [entity.table, run_id],
    ).fetchone()
    return (None, 0) if row is None else (str(row[0]), int(row[1]))
