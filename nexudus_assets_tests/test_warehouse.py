"""The warehouse layer against real DuckDB files: schema from the models, staged syncs, history, the files."""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import duckdb
import pytest

from nexudus_assets.nexudus.entities import ACCESS_TOKENS, COWORKER_CONTRACTS, ENTITIES
from nexudus_assets.nexudus.errors import RecordValidationError
from nexudus_assets.nexudus.models import AccessToken, CoworkerContract
from nexudus_assets.warehouse import (
    SCHEMA,
    DeletionGuardError,
    EntitySync,
    RejectedRecord,
    SyncResult,
    WarehouseBusyError,
    WarehouseFiles,
    WarehouseNotSyncedError,
    WarehouseUnreadableError,
    connect,
    ensure_schema,
    history_table,
    qualified,
    read_high_water_mark,
    table_columns,
)
from nexudus_assets.warehouse.files import copy_contents, rewrite_changed_blocks
from nexudus_assets.warehouse.schema import SYNC_LOG
from nexudus_assets.warehouse.staging import ARROW_MIN_ROWS
from nexudus_assets_tests.utils import held_open

T0 = dt.datetime(2024, 3, 1, 9, 0)
NOW = dt.datetime(2024, 6, 1, 12, 0)


def at(hours: int) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def token(record_id: int, updated_hours: int = 0, **fields: Any) -> AccessToken:
    values: dict[str, Any] = {
        "unique_id": UUID(int=record_id),
        "access_code": f"code-{record_id}",
        "minutes_included": 60,
        "minutes_left": 30,
        **fields,
    }
    return AccessToken(id=record_id, updated_on=at(updated_hours), **values)


#: Rows after which the tests' syncs stage as Arrow: a few thousand rather than the tens of thousands
#: of a real sync, so that both ways of staging are tested on small syncs.
ARROW_FROM_ROWS = 2_000


def sync(
    conn: duckdb.DuckDBPyConnection,
    records: list[AccessToken],
    *,
    mode: str = "incremental",
    run_id: str = "run",
    now: dt.datetime = NOW,
    rejected: list[RejectedRecord] | None = None,
    arrow_from_rows: int = ARROW_MIN_ROWS,
    **publish: Any,
) -> SyncResult:
    entity_sync = EntitySync(  # type: ignore[arg-type]
        ACCESS_TOKENS, run_id=run_id, mode=mode, now=now, arrow_from_rows=arrow_from_rows
    )
    entity_sync.begin(conn)
    entity_sync.stage(conn, records, rejected or [])
    return entity_sync.publish(conn, **publish)


def rows(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return conn.execute(sql, params).fetchall()


def snapshot(conn: duckdb.DuckDBPyConnection) -> tuple[list[tuple[Any, ...]], ...]:
    """Everything a sync may change: the live table, the cursor and the log."""
    return (
        rows(conn, f"SELECT * FROM {qualified(ACCESS_TOKENS)} ORDER BY id"),
        rows(conn, f"SELECT * FROM {SCHEMA}._sync_state ORDER BY entity"),
        rows(conn, f"SELECT * FROM {SCHEMA}._sync_log ORDER BY finished_at"),
    )


def live(conn: duckdb.DuckDBPyConnection) -> dict[int, tuple[Any, ...]]:
    """id -> (access_code, updated_on, _synced_at, _deleted_at)."""
    found = rows(conn, f"SELECT id, access_code, updated_on, _synced_at, _deleted_at FROM {qualified(ACCESS_TOKENS)}")
    return {row[0]: row[1:] for row in found}


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "warehouse.duckdb"


@pytest.fixture
def conn(db_path: Path) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(str(db_path))
    yield connection
    connection.close()


def test_tables_are_typed_from_the_models(conn: duckdb.DuckDBPyConnection) -> None:
    ensure_schema(conn)
    ensure_schema(conn)  # idempotent

    def types(table: str) -> dict[str, str]:
        found = rows(
            conn,
            "SELECT column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = ? AND table_name = ? ORDER BY ordinal_position",
            [SCHEMA, table],
        )
        return dict(found)

    tokens = types("access_tokens")
    assert list(tokens) == [*AccessToken.model_fields, "_extra", "_synced_at", "_deleted_at"]
    assert tokens["id"] == "BIGINT"
    assert tokens["unique_id"] == tokens["booking_guid"] == "UUID"
    assert tokens["valid_from"] == tokens["updated_on"] == "TIMESTAMP"
    assert tokens["access_code"] == "VARCHAR"
    assert tokens["_extra"] == "JSON"

    contracts = types("coworker_contracts")
    assert contracts["price"] == contracts["value"] == "DECIMAL(18,4)"
    assert contracts["active"] == "BOOLEAN"
    assert contracts["cancellation_reason"] == "INTEGER"
    assert contracts["coworker_full_name"] == "VARCHAR"  # display fields are columns too

    for entity in ENTITIES:
        columns = table_columns(entity)
        assert [c.name for c in columns] == list(types(entity.table))
        assert [c.duckdb_type for c in columns] == list(types(entity.table).values())
        assert all(c.description for c in columns)

    comments = dict(
        rows(conn, "SELECT column_name, comment FROM duckdb_columns() WHERE table_name = 'coworker_contracts'")
    )
    assert comments["coworker_id"] == "Id of the related coworker record."
    not_null = rows(
        conn,
        "SELECT column_name FROM information_schema.columns"
        " WHERE table_name = 'access_tokens' AND is_nullable = 'NO' ORDER BY column_name",
    )
    assert not_null == [("_synced_at",), ("id",)]


def test_values_round_trip_with_their_types(conn: duckdb.DuckDBPyConnection) -> None:
    contract = CoworkerContract(
        id=7,
        unique_id=UUID("5a0e1c7e-1d2b-4a8c-9b2f-3f0c2d4e5a6b"),
        active=True,
        price=Decimal("99.95"),
        value=Decimal("1.234567"),  # finer than the column: rounded to 4 places
        cancellation_reason=42,  # unknown to the enum, kept as its number
        start_date=dt.datetime(2024, 1, 1, 8, 30),
        tariff_name="Hot desk",
        updated_on=at(0),
    )
    entity_sync = EntitySync(COWORKER_CONTRACTS, run_id="run", mode="incremental", now=NOW)
    entity_sync.begin(conn)
    entity_sync.stage(conn, [contract], [])
    entity_sync.publish(conn)

    assert rows(
        conn,
        "SELECT id, unique_id, active, price, value, cancellation_reason, start_date, tariff_name, _extra, _synced_at"
        f" FROM {qualified(COWORKER_CONTRACTS)}",
    ) == [
        (
            7,
            UUID("5a0e1c7e-1d2b-4a8c-9b2f-3f0c2d4e5a6b"),
            True,
            Decimal("99.9500"),
            Decimal("1.2346"),
            42,
            dt.datetime(2024, 1, 1, 8, 30),
            "Hot desk",
            None,
            NOW,
        )
    ]


def test_first_publish_inserts_everything_and_sets_the_cursor(conn: duckdb.DuckDBPyConnection) -> None:
    assert read_high_water_mark(conn, ACCESS_TOKENS) is None  # before the schema even exists

    result = sync(conn, [token(1, 5), token(2, 9), token(3, 2)], requests=4, throttled=1)

    assert result == SyncResult(
        inserted=3, updated=0, unchanged=0, deleted=0, rejected=0, live_rows=3, fetched=3, high_water_mark=at(9)
    )
    assert read_high_water_mark(conn, ACCESS_TOKENS) == at(9)
    assert {record_id: values[2:] for record_id, values in live(conn).items()} == {
        1: (NOW, None),
        2: (NOW, None),
        3: (NOW, None),
    }
    assert rows(
        conn,
        f"SELECT run_id, entity, mode, fetched, inserted, live_rows, high_water_mark, requests, throttled"
        f" FROM {SCHEMA}._sync_log",
    ) == [("run", "access_tokens", "incremental", 3, 3, 3, at(9), 4, 1)]
    # Staging is gone once published.
    assert rows(conn, "SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_stage_%'") == [(0,)]


def test_incremental_counts_changes_and_never_lowers_the_cursor(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1), token(2, 2), token(3, 10)], run_id="first")
    later = NOW + dt.timedelta(hours=1)

    result = sync(
        conn,
        [
            token(1, 1),  # unchanged
            token(2, 3, description="renamed"),  # changed upstream
            token(3, 10, description="display change"),  # content changed, same updated_on
            token(4, 4),  # new
        ],
        run_id="second",
        now=later,
    )

    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (1, 2, 1, 0)
    assert result.live_rows == 4
    assert result.high_water_mark == at(10)  # staged max is 4h, the cursor stays at 10h
    assert read_high_water_mark(conn, ACCESS_TOKENS) == at(10)
    synced_at = {record_id: values[2] for record_id, values in live(conn).items()}
    assert synced_at == {1: NOW, 2: later, 3: later, 4: later}  # unchanged rows are not rewritten
    assert rows(conn, f"SELECT run_id, updated, unchanged FROM {SCHEMA}._sync_log ORDER BY finished_at") == [
        ("first", 0, 0),
        ("second", 2, 1),
    ]


def test_empty_incremental_sync_keeps_the_cursor(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 5)])

    result = sync(conn, [], run_id="quiet")

    assert result == SyncResult(0, 0, 0, 0, 0, 1, 0, at(5))
    assert read_high_water_mark(conn, ACCESS_TOKENS) == at(5)


def test_full_sync_soft_deletes_missing_rows_and_resurrects_returning_ones(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="first")
    deleted_at = NOW + dt.timedelta(days=1)

    gone = EntitySync(ACCESS_TOKENS, run_id="second", mode="full", now=deleted_at)
    gone.begin(conn)
    gone.stage(conn, [token(1, 1), token(2, 2)], [])
    assert gone.missing_ids(conn) == [3]
    result = gone.publish(conn)

    assert (result.deleted, result.unchanged, result.live_rows) == (1, 2, 2)
    assert result.high_water_mark == at(2)  # a full sync's cursor is what it saw
    assert live(conn)[3][3] == deleted_at
    assert rows(conn, f"SELECT last_full_refresh_at FROM {SCHEMA}._sync_state") == [(deleted_at,)]

    back_at = deleted_at + dt.timedelta(days=1)
    result = sync(conn, [token(3, 3)], run_id="third", now=back_at)  # incremental deletes nothing

    assert (result.updated, result.deleted, result.live_rows) == (1, 0, 3)
    assert live(conn)[3][2:] == (back_at, None)
    assert live(conn)[1][3] is None
    # An incremental sync leaves the last full refresh time alone.
    assert rows(conn, f"SELECT last_full_refresh_at FROM {SCHEMA}._sync_state") == [(deleted_at,)]


def test_full_sync_confirmed_records_are_not_deleted(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full")

    entity_sync = EntitySync(ACCESS_TOKENS, run_id="again", mode="full", now=NOW)
    entity_sync.begin(conn)
    entity_sync.stage(conn, [token(1, 1)], [])
    # The caller asks the API about the missing ids; 2 still exists, 3 is gone.
    assert entity_sync.missing_ids(conn) == [2, 3]
    entity_sync.stage(conn, [token(2, 2)], [])
    assert entity_sync.missing_ids(conn) == [3]
    result = entity_sync.publish(conn)

    assert (result.deleted, result.live_rows) == (1, 2)


def test_delete_guard_refuses_and_writes_nothing(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(i, i) for i in range(1, 21)], mode="full", run_id="first")
    before = snapshot(conn)

    with pytest.raises(DeletionGuardError, match="soft-delete 15 of 20"):
        sync(conn, [token(i, i) for i in range(1, 6)], mode="full", run_id="truncated")
    assert snapshot(conn) == before

    with pytest.raises(DeletionGuardError, match="soft-delete 20 of 20"):
        sync(conn, [], mode="full", run_id="empty")
    assert snapshot(conn) == before

    # A stricter or looser threshold is the caller's call.
    result = sync(conn, [token(i, i) for i in range(1, 6)], mode="full", run_id="real", max_delete_fraction=0.8)
    assert (result.deleted, result.live_rows) == (15, 5)


def test_delete_guard_lets_a_tiny_table_empty_out(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1), token(2, 2)], mode="full")

    result = sync(conn, [], mode="full", run_id="empty")

    assert (result.deleted, result.live_rows, result.high_water_mark) == (2, 0, at(2))


def test_killed_run_leaves_everything_as_it_was(db_path: Path) -> None:
    with duckdb.connect(str(db_path)) as conn:
        sync(conn, [token(1, 1), token(2, 2)], run_id="good")
        before = snapshot(conn)

    # Killed after staging a batch (and a rejection): the connection goes away, no publish.
    with duckdb.connect(str(db_path)) as conn:
        killed = EntitySync(ACCESS_TOKENS, run_id="retried", mode="full", now=NOW)
        killed.begin(conn)
        killed.stage(
            conn,
            [token(1, 50, description="never published"), token(9, 60)],
            [RejectedRecord(8, "bad", {"Id": 8})],
        )

    with duckdb.connect(str(db_path)) as conn:
        assert snapshot(conn) == before
        assert read_high_water_mark(conn, ACCESS_TOKENS) == at(2)

        # The retry (same run id, as a Dagster step retry keeps it) starts clean.
        result = sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="retried")

        assert (result.inserted, result.unchanged, result.rejected, result.fetched) == (1, 2, 0, 3)
        assert live(conn)[1][0] == "code-1"
        assert 9 not in live(conn)
        assert rows(conn, f"SELECT count(*) FROM {SCHEMA}._rejected_records") == [(0,)]
        assert read_high_water_mark(conn, ACCESS_TOKENS) == at(3)


def test_failure_inside_publish_rolls_everything_back(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="first")
    before = snapshot(conn)

    entity_sync = EntitySync(ACCESS_TOKENS, run_id="second", mode="full", now=NOW + dt.timedelta(days=1))
    entity_sync.begin(conn)
    entity_sync.stage(conn, [token(1, 1), token(2, 20, description="changed"), token(4, 4)], [])
    # Writing the sync log is the last step before commit: the upsert, soft-delete and cursor
    # have all run by then. Without its table, that write fails.
    conn.execute(f"ALTER TABLE {SCHEMA}._sync_log RENAME TO _sync_log_elsewhere")
    with pytest.raises(duckdb.CatalogException, match="_sync_log"):
        entity_sync.publish(conn)
    conn.execute(f"ALTER TABLE {SCHEMA}._sync_log_elsewhere RENAME TO _sync_log")

    assert snapshot(conn) == before
    # Staging survived, so publishing again completes the run.
    result = entity_sync.publish(conn)
    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (1, 1, 1, 1)
    assert read_high_water_mark(conn, ACCESS_TOKENS) == at(20)


def test_rejected_records_are_quarantined_verbatim(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="first")
    raw = {"Id": 3, "MinutesLeft": "lots", "Nested": {"A": [1, 2.5, None]}}
    error = RecordValidationError("AccessToken", 3, [("MinutesLeft", "not an integer")], raw=raw)

    result = sync(
        conn,
        [token(1, 1), token(2, 2)],
        mode="full",
        run_id="second",
        rejected=[RejectedRecord.from_error(error), RejectedRecord(None, "no Id", ["not", "an", "object"])],
    )

    assert (result.rejected, result.fetched) == (2, 4)
    assert result.deleted == 0  # record 3 exists upstream, it just failed validation
    quarantined = rows(
        conn,
        f"SELECT entity, record_id, reason, raw_json, rejected_at, run_id FROM {SCHEMA}._rejected_records"
        " ORDER BY record_id NULLS LAST",
    )
    assert [(row[0], row[1], row[4], row[5]) for row in quarantined] == [
        ("access_tokens", 3, NOW, "second"),
        ("access_tokens", None, NOW, "second"),
    ]
    assert quarantined[0][2] == "AccessToken 3: field 'MinutesLeft': not an integer"
    assert json.loads(quarantined[0][3]) == raw
    assert json.loads(quarantined[1][3]) == ["not", "an", "object"]
    assert rows(conn, f"SELECT rejected FROM {SCHEMA}._sync_log WHERE run_id = 'second'") == [(2,)]


@pytest.mark.parametrize("others", [0, ARROW_FROM_ROWS], ids=["as parameters", "as arrow"])
def test_values_a_column_cannot_hold_are_quarantined_not_fatal(conn: duckdb.DuckDBPyConnection, others: int) -> None:
    contracts = [
        CoworkerContract(id=1, price=Decimal("10.00"), updated_on=at(1)),
        CoworkerContract(id=2, price=Decimal("1e20"), updated_on=at(2)),  # beyond DECIMAL(18,4)
        *(CoworkerContract(id=i, price=Decimal(i), updated_on=at(3)) for i in range(3, others + 3)),
    ]
    entity_sync = EntitySync(
        COWORKER_CONTRACTS, run_id="run", mode="incremental", now=NOW, arrow_from_rows=ARROW_FROM_ROWS
    )
    entity_sync.begin(conn)
    entity_sync.stage(conn, contracts, [])
    result = entity_sync.publish(conn)

    assert (result.inserted, result.rejected, result.fetched) == (1 + others, 1, 2 + others)
    ((record_id, reason, raw_json),) = rows(conn, f"SELECT record_id, reason, raw_json FROM {SCHEMA}._rejected_records")
    assert record_id == 2
    assert reason.startswith("cannot be stored")
    assert json.loads(raw_json)["Price"] == "1E+20"


def test_unknown_fields_land_in_extra(conn: duckdb.DuckDBPyConnection) -> None:
    with_extra = AccessToken.model_validate(
        {"Id": 1, "AccessCode": "A", "UpdatedOn": "2024-03-01T09:00:00Z", "Colour": "red", "Limits": {"Max": 3}}
    )
    with_odd_types = AccessToken(id=2, updated_on=at(0), Amount=Decimal("1.50"), Seen=dt.datetime(2024, 1, 2))

    sync(conn, [with_extra, with_odd_types, token(3)])

    extra = dict(rows(conn, f"SELECT id, _extra FROM {qualified(ACCESS_TOKENS)}"))
    assert json.loads(extra[1]) == {"Colour": "red", "Limits": {"Max": 3}}
    assert json.loads(extra[2]) == {"Amount": "1.50", "Seen": "2024-01-02T00:00:00"}
    assert extra[3] is None
    assert rows(conn, f"SELECT _extra->>'$.Colour' FROM {qualified(ACCESS_TOKENS)} WHERE id = 1") == [("red",)]


def test_duplicates_in_staging_are_deduped_last_wins(conn: duckdb.DuckDBPyConnection) -> None:
    entity_sync = EntitySync(ACCESS_TOKENS, run_id="run", mode="incremental", now=NOW)
    entity_sync.begin(conn)
    # Offset paging can return a record twice when rows shift between pages.
    entity_sync.stage(conn, [token(1, 1, description="first"), token(2, 2), token(1, 3, description="second")], [])
    entity_sync.stage(conn, [token(2, 4, description="latest")], [])
    result = entity_sync.publish(conn)

    assert (result.inserted, result.fetched, result.live_rows) == (2, 4, 2)
    assert dict(rows(conn, f"SELECT id, description FROM {qualified(ACCESS_TOKENS)}")) == {1: "second", 2: "latest"}
    assert result.high_water_mark == at(4)


def test_additive_migration_adds_a_missing_column(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1, mac_address="aa:bb")])
    # A table written before the model gained `mac_address`.
    conn.execute(f"ALTER TABLE {qualified(ACCESS_TOKENS)} DROP COLUMN mac_address")

    ensure_schema(conn)

    assert rows(
        conn,
        "SELECT data_type FROM information_schema.columns"
        " WHERE table_name = 'access_tokens' AND column_name = 'mac_address'",
    ) == [("VARCHAR",)]
    assert rows(conn, f"SELECT id, access_code, mac_address FROM {qualified(ACCESS_TOKENS)}") == [(1, "code-1", None)]
    # The next sync fills the new column even though the record did not change upstream.
    result = sync(conn, [token(1, 1, mac_address="aa:bb")], run_id="after")
    assert result.updated == 1
    assert rows(conn, f"SELECT mac_address FROM {qualified(ACCESS_TOKENS)}") == [("aa:bb",)]


def test_a_changed_column_type_is_refused(conn: duckdb.DuckDBPyConnection) -> None:
    ensure_schema(conn)
    conn.execute(f"ALTER TABLE {qualified(ACCESS_TOKENS)} ALTER COLUMN minutes_left TYPE VARCHAR")

    with pytest.raises(TypeError, match="minutes_left is VARCHAR but the model now needs BIGINT"):
        ensure_schema(conn)


def test_calls_out_of_order_are_refused(conn: duckdb.DuckDBPyConnection) -> None:
    incremental = EntitySync(ACCESS_TOKENS, run_id="run", mode="incremental")
    with pytest.raises(RuntimeError, match="call begin"):
        incremental.stage(conn, [token(1)], [])
    incremental.begin(conn)
    with pytest.raises(RuntimeError, match="full sync"):
        incremental.missing_ids(conn)


def test_batches_staged_as_parameters_and_as_arrow_are_stored_alike(tmp_path: Path) -> None:
    # A sync's batches go to DuckDB as query parameters until it has staged `arrow_from_rows`, then as Arrow.
    tokens = [token(i, i % 24, description=None if i % 7 else f"token {i}") for i in range(1, 2 * ARROW_FROM_ROWS + 1)]
    tokens[5] = AccessToken.model_validate(
        {"Id": 6, "UpdatedOn": "2024-03-01T09:00:00Z", "UniqueId": str(UUID(int=6)), "Colour": {"Red": [1, 2]}}
    )
    contracts = [
        CoworkerContract(id=i, price=Decimal(i) / 3, cancellation_reason=i % 3 or None, updated_on=at(i % 60))
        for i in range(1, 2 * ARROW_FROM_ROWS + 1)
    ]
    stored = []
    # Every batch as parameters, the first as parameters and the later ones as Arrow, every one as Arrow.
    for arrow_from_rows in (len(tokens) + 1, ARROW_FROM_ROWS, 0):
        conn = connect(str(tmp_path / f"{arrow_from_rows}.duckdb"))
        try:
            for entity, records in ((ACCESS_TOKENS, tokens), (COWORKER_CONTRACTS, contracts)):
                entity_sync = EntitySync(
                    entity, run_id="run", mode="incremental", now=NOW, arrow_from_rows=arrow_from_rows
                )
                entity_sync.begin(conn)
                for start in range(0, len(records), ARROW_FROM_ROWS - 1):
                    entity_sync.stage(conn, records[start : start + ARROW_FROM_ROWS - 1])
                entity_sync.publish(conn)
            stored.append(
                [
                    rows(conn, f"SELECT * FROM {qualified(entity)} ORDER BY id")
                    for entity in (ACCESS_TOKENS, COWORKER_CONTRACTS)
                ]
            )
        finally:
            conn.close()
    assert stored[0] == stored[1] == stored[2]
    assert json.loads(stored[0][0][5][-3]) == {"Colour": {"Red": [1, 2]}}


def test_a_large_publish_fits_a_small_memory_limit(db_path: Path) -> None:
    # The publish is one transaction; an upsert in it would hold every new row in memory, so a
    # first load of a large account ran out of memory. It must stream, under any limit.
    records = [token(i, i % 50, description=f"token {i} " * 4) for i in range(1, 150_001)]
    small = connect(str(db_path), config={"memory_limit": "48MB", "threads": 1})
    try:
        first = sync(small, records)
        assert (first.inserted, first.live_rows) == (150_000, 150_000)
        changed = [token(i, 60, description="changed") for i in range(1, 150_001, 3)]
        second = sync(small, changed)
        assert (second.updated, second.inserted, second.live_rows) == (50_000, 0, 150_000)
        assert rows(small, f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)} WHERE description = 'changed'") == [
            (50_000,)
        ]
    finally:
        small.close()


def test_an_updated_on_from_the_future_does_not_carry_the_cursor_past_the_sync(conn: duckdb.DuckDBPyConnection) -> None:
    three_days_ahead = int((NOW - T0).total_seconds() // 3600) + 72  # a server clock running ahead of ours
    result = sync(conn, [token(1, 5), token(2, three_days_ahead)])
    assert result.high_water_mark == NOW
    assert read_high_water_mark(conn, ACCESS_TOKENS) == NOW


def test_a_list_that_ended_short_keeps_the_cursor_where_it_was(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 5)])
    result = sync(conn, [token(2, 9)], walk_incomplete="the list ended after 1 of the 3 records it announced")
    assert result.inserted == 1
    assert read_high_water_mark(conn, ACCESS_TOKENS) == at(5)
    logged = rows(conn, f"SELECT walk_incomplete FROM {SYNC_LOG} ORDER BY finished_at, walk_incomplete NULLS FIRST")
    assert logged == [(None,), ("the list ended after 1 of the 3 records it announced",)]


# ---------------------------------------------------------------- history


def versions(conn: duckdb.DuckDBPyConnection, record_id: int) -> list[tuple[Any, ...]]:
    """(minutes_left, _valid_from, _valid_to, _deleted_at) of each version of one token, oldest first."""
    return rows(
        conn,
        f"SELECT minutes_left, _valid_from, _valid_to, _deleted_at FROM {history_table(ACCESS_TOKENS)}"
        " WHERE id = ? ORDER BY _valid_from",
        [record_id],
    )


def test_history_keeps_one_version_per_change_a_sync_saw(conn: duckdb.DuckDBPyConnection) -> None:
    first, second, third = NOW, NOW + dt.timedelta(minutes=2), NOW + dt.timedelta(minutes=4)
    sync(conn, [token(1, 1, minutes_left=500), token(2, 1)], now=first)
    sync(conn, [token(1, 2, minutes_left=400), token(2, 1)], now=second)
    sync(conn, [token(1, 3, minutes_left=300), token(2, 1)], now=third)

    assert versions(conn, 1) == [(500, first, second, None), (400, second, third, None), (300, third, None, None)]
    assert versions(conn, 2) == [(30, first, None, None)]  # unchanged: still its first version
    history_columns_found = [
        name
        for (name,) in rows(
            conn,
            "SELECT column_name FROM information_schema.columns WHERE table_schema = ? AND table_name = ?"
            " ORDER BY ordinal_position",
            [SCHEMA, "access_tokens_history"],
        )
    ]
    assert history_columns_found == [c.name for c in table_columns(ACCESS_TOKENS)] + ["_valid_from", "_valid_to"]
    # The current versions are the live table, column for column.
    live_columns = ", ".join(f'"{c.name}"' for c in table_columns(ACCESS_TOKENS))
    assert rows(
        conn, f"SELECT {live_columns} FROM {history_table(ACCESS_TOKENS)} WHERE _valid_to IS NULL ORDER BY id"
    ) == rows(conn, f"SELECT {live_columns} FROM {qualified(ACCESS_TOKENS)} ORDER BY id")


def test_a_full_refresh_closes_the_versions_of_deleted_records_and_a_return_opens_one(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    gone_at, back_at = NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=2)
    sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="first")
    sync(conn, [token(1, 1), token(2, 2)], mode="full", run_id="second", now=gone_at)
    assert versions(conn, 3) == [(30, NOW, gone_at, gone_at)]
    assert versions(conn, 1) == [(30, NOW, None, None)]

    sync(conn, [token(3, 3)], run_id="third", now=back_at)
    assert versions(conn, 3) == [(30, NOW, gone_at, gone_at), (30, back_at, None, None)]


def test_history_is_written_with_the_publish_or_not_at_all(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1, minutes_left=500)])
    before = rows(conn, f"SELECT * FROM {history_table(ACCESS_TOKENS)}")

    entity_sync = EntitySync(ACCESS_TOKENS, run_id="second", mode="incremental", now=NOW + dt.timedelta(hours=1))
    entity_sync.begin(conn)
    entity_sync.stage(conn, [token(1, 2, minutes_left=400)])
    # The sync log is written after the history; without its table the publish fails there.
    conn.execute(f"ALTER TABLE {SCHEMA}._sync_log RENAME TO _sync_log_elsewhere")
    with pytest.raises(duckdb.CatalogException, match="_sync_log"):
        entity_sync.publish(conn)
    assert rows(conn, f"SELECT * FROM {history_table(ACCESS_TOKENS)}") == before


# ---------------------------------------------------------------- upgrading an earlier warehouse


def write_legacy_warehouse(path: Path) -> None:
    """A warehouse as earlier versions wrote it: every table in schema `nexudus`, no history."""
    with duckdb.connect(str(path)) as legacy:
        sync(legacy, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="old")
        sync(legacy, [token(1, 1), token(2, 2)], mode="full", run_id="old-full", now=NOW + dt.timedelta(days=1))
        for entity in ENTITIES:
            legacy.execute(f"DROP TABLE {history_table(entity)}")
        legacy.execute("CREATE TABLE raw.commands (entity VARCHAR, key VARCHAR, PRIMARY KEY (entity, key))")
        legacy.execute("INSERT INTO raw.commands VALUES ('AccessToken', 'ACCESSTOKEN_ADD_MINUTES')")
        legacy.execute("CREATE TABLE raw._stage_access_tokens AS SELECT * FROM raw.access_tokens")
        legacy.execute("CREATE SCHEMA nexudus")
        earlier_tables = [e.table for e in ENTITIES] + ["_sync_state", "_sync_log", "_rejected_records", "commands"]
        for name in [*earlier_tables, "_stage_access_tokens"]:
            ddl = legacy.execute(
                "SELECT sql FROM duckdb_tables() WHERE schema_name = 'raw' AND table_name = ?", [name]
            ).fetchone()[0]
            legacy.execute(ddl.replace(f"CREATE TABLE raw.{name}(", f"CREATE TABLE nexudus.{name}(", 1))
            legacy.execute(f'INSERT INTO nexudus."{name}" SELECT * FROM raw."{name}"')
            legacy.execute(f'DROP TABLE raw."{name}"')
        legacy.execute("DROP SCHEMA raw CASCADE")
        # The command ledger's old home: another module moves it, the upgrade leaves it be.
        legacy.execute("CREATE TABLE nexudus.command_runs (call_id VARCHAR, record_id BIGINT)")
        legacy.execute("INSERT INTO nexudus.command_runs VALUES ('call-1', 1)")


def test_an_earlier_warehouse_moves_to_schema_raw_with_its_history_backfilled(db_path: Path) -> None:
    write_legacy_warehouse(db_path)
    with duckdb.connect(str(db_path)) as legacy:
        old_tokens = rows(legacy, "SELECT * FROM nexudus.access_tokens ORDER BY id")
        old_log = rows(legacy, "SELECT * FROM nexudus._sync_log ORDER BY finished_at")

    with duckdb.connect(str(db_path)) as conn:
        ensure_schema(conn)

        tables = set(rows(conn, "SELECT schema_name, table_name FROM duckdb_tables()"))
        assert {(SCHEMA, e.table) for e in ENTITIES} | {(SCHEMA, f"{e.table}_history") for e in ENTITIES} <= tables
        assert {
            (SCHEMA, "_sync_state"),
            (SCHEMA, "_sync_log"),
            (SCHEMA, "_rejected_records"),
            (SCHEMA, "commands"),
        } <= tables
        assert {name for schema, name in tables if schema == "nexudus"} == {"command_runs"}
        assert rows(conn, "SELECT * FROM nexudus.command_runs") == [("call-1", 1)]
        assert (SCHEMA, "_stage_access_tokens") not in tables
        assert rows(conn, f"SELECT * FROM {qualified(ACCESS_TOKENS)} ORDER BY id") == old_tokens
        assert rows(conn, f"SELECT * FROM {SCHEMA}._sync_log ORDER BY finished_at") == old_log
        assert rows(conn, f"SELECT key FROM {SCHEMA}.commands") == [("ACCESSTOKEN_ADD_MINUTES",)]
        # One version per row: seen when synced, until deleted.
        assert [versions(conn, record_id) for record_id in (1, 3)] == [
            [(30, NOW, None, None)],
            [(30, NOW, NOW + dt.timedelta(days=1), NOW + dt.timedelta(days=1))],
        ]
        # The keys came along: the cursor's upsert and the live table's primary key still hold.
        assert read_high_water_mark(conn, ACCESS_TOKENS) == at(2)
        with pytest.raises(duckdb.ConstraintException):
            conn.execute(f"INSERT INTO {qualified(ACCESS_TOKENS)} (id, _synced_at) VALUES (1, ?)", [NOW])

        result = sync(conn, [token(1, 9, minutes_left=10)], run_id="new", now=NOW + dt.timedelta(days=2))
        assert (result.updated, result.live_rows) == (1, 2)
        assert versions(conn, 1) == [
            (30, NOW, NOW + dt.timedelta(days=2), None),
            (10, NOW + dt.timedelta(days=2), None, None),
        ]


def test_an_upgrade_without_a_ledger_leaves_no_old_schema(db_path: Path) -> None:
    write_legacy_warehouse(db_path)
    with duckdb.connect(str(db_path)) as conn:
        conn.execute("DROP TABLE nexudus.command_runs")
        ensure_schema(conn)
        assert rows(conn, "SELECT count(*) FROM duckdb_schemas() WHERE schema_name = 'nexudus'") == [(0,)]


def test_a_warehouse_holding_both_schemas_is_refused_and_left_as_it_was(db_path: Path) -> None:
    write_legacy_warehouse(db_path)
    with duckdb.connect(str(db_path)) as conn:
        conn.execute("CREATE SCHEMA raw")
        conn.execute("CREATE TABLE raw.access_tokens (id BIGINT)")
        with pytest.raises(RuntimeError, match=re.escape("both nexudus.access_tokens and raw.access_tokens exist")):
            ensure_schema(conn)
        assert rows(conn, "SELECT count(*) FROM nexudus.access_tokens") == [(3,)]


# ---------------------------------------------------------------- the working file and the published one


def token_count(conn: duckdb.DuckDBPyConnection) -> int:
    return rows(conn, f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)}")[0][0]


@pytest.fixture
def files(tmp_path: Path) -> WarehouseFiles:
    return WarehouseFiles(tmp_path / "warehouse.duckdb", lock_timeout_seconds=30)


def test_a_write_is_published_and_a_process_holding_the_old_file_keeps_its_snapshot(files: WarehouseFiles) -> None:
    with files.write() as conn:
        sync(conn, [token(1, 1), token(2, 2)])
    assert files.working.exists() and files.published.exists()

    with held_open(files.published) as analyst:  # read-write, the DuckDB CLI's default
        assert analyst.query(f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)}") == [(2,)]
        with files.write() as conn:
            sync(conn, [token(3, 3)], run_id="second")
        with files.write() as conn:
            sync(conn, [token(4, 4)], run_id="third")
        # Consistent: what the analyst opened, unchanged; the new data is there for the next open.
        assert analyst.query(f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)}") == [(2,)]
        with duckdb.connect(str(files.published), read_only=True) as fresh:
            assert token_count(fresh) == 4
        # Sensors read on while the analyst holds the published file read-write.
        with files.read_published() as reader:
            assert token_count(reader) == 4
    assert not list(files.published.parent.glob("*.partial"))


def test_a_publish_is_the_working_file_byte_for_byte_copied_in_the_kernel_or_not(
    files: WarehouseFiles, tmp_path: Path
) -> None:
    with files.write() as conn:
        sync(conn, [token(n, n) for n in range(1, 300)])
    assert files.published.read_bytes() == files.working.read_bytes()
    assert files.published.stat().st_ino != files.working.stat().st_ino
    # A source the kernel cannot copy from (a pipe has no size, `copy_file_range` refuses it)
    # goes through this process instead, and arrives whole.
    content = files.working.read_bytes()
    read_end, write_end = os.pipe()
    feeder = threading.Thread(target=lambda: (os.write(write_end, content), os.close(write_end)))
    feeder.start()
    target = tmp_path / "copied"
    with os.fdopen(read_end, "rb") as reader, target.open("wb") as writer:
        copy_contents(reader, writer)
    feeder.join()
    assert target.read_bytes() == content


def publish_tokens(files: WarehouseFiles, first: int, count: int, run_id: str) -> None:
    with files.write() as conn:
        sync(conn, [token(n, n % 50) for n in range(first, first + count)], run_id=run_id)


def test_a_publish_writes_the_changes_into_the_file_the_last_publish_replaced(files: WarehouseFiles) -> None:
    publish_tokens(files, 1, 3_000, "first")
    assert not files.spare.exists()  # nothing was replaced yet
    first = files.published.stat().st_ino
    publish_tokens(files, 3_001, 100, "second")
    assert files.spare.stat().st_ino == first  # the file the second publish replaced, kept

    files.published.chmod(0o640)
    publish_tokens(files, 3_101, 100, "third")
    # The third publish is the first one's file, brought up to date block by block.
    found = files.published.stat()
    assert found.st_ino == first and found.st_nlink == 1
    assert files.published.read_bytes() == files.working.read_bytes()
    assert stat.S_IMODE(found.st_mode) == 0o640  # the mode of the file it replaced, not its own old one
    with files.read_published() as conn:
        assert token_count(conn) == 3_200
    assert not list(files.published.parent.glob("*.partial"))


def test_a_spare_someone_still_reads_is_left_to_them_and_the_publish_copies(files: WarehouseFiles) -> None:
    publish_tokens(files, 1, 500, "first")
    publish_tokens(files, 501, 10, "second")
    # One reader in another process, one in this one: each holds the file it opened.
    with (
        held_open(files.published, read_only=True) as analyst,
        duckdb.connect(str(files.published), read_only=True) as sensor,
        files.published.open("rb") as held,
    ):
        before = held.read()
        for run in range(3):
            publish_tokens(files, 600 + 10 * run, 10, f"run {run}")
            assert files.published.read_bytes() == files.working.read_bytes()
        # Published three times since, the readers' file the spare twice: never written into.
        assert os.fstat(held.fileno()).st_ino != files.published.stat().st_ino
        assert os.pread(held.fileno(), len(before) + 1, 0) == before
        assert analyst.query(f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)}") == [(510,)]
        assert token_count(sensor) == 510
    with files.read_published() as conn:
        assert token_count(conn) == 540


def test_a_spare_that_has_another_name_is_never_written(files: WarehouseFiles, tmp_path: Path) -> None:
    publish_tokens(files, 1, 500, "first")
    publish_tokens(files, 501, 10, "second")
    backup = tmp_path / "backup.duckdb"
    os.link(files.spare, backup)  # a hard-linked backup of a published file
    kept = backup.read_bytes()
    publish_tokens(files, 511, 10, "third")
    assert backup.read_bytes() == kept
    # A publish killed between keeping the old file and renaming the new one leaves the published
    # file itself as the spare.
    files.spare.unlink()
    os.link(files.published, files.spare)
    published = files.published.read_bytes()
    with held_open(files.published, read_only=True) as analyst:
        publish_tokens(files, 521, 10, "fourth")
        assert analyst.query(f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)}") == [(520,)]
    assert backup.read_bytes() == kept
    with files.read_published() as conn:
        assert token_count(conn) == 530
    assert files.spare.read_bytes() == published


@pytest.mark.parametrize("storage", ["v1.0.0", "latest"])
def test_rewriting_the_blocks_that_differ_makes_the_file_byte_for_byte(tmp_path: Path, storage: str) -> None:
    older, newer = tmp_path / "older.duckdb", tmp_path / "newer.duckdb"
    with duckdb.connect() as conn:
        conn.execute(f"ATTACH '{newer}' AS w (STORAGE_VERSION '{storage}')")
        conn.execute("CREATE TABLE w.t AS SELECT range AS id, range::VARCHAR AS name FROM range(300000)")
        conn.execute("CHECKPOINT w")
        conn.execute("DETACH w")
        newer_bytes = newer.read_bytes()
        older.write_bytes(newer_bytes)
        conn.execute(f"ATTACH '{newer}' AS w")
        conn.execute("UPDATE w.t SET name = 'changed' WHERE id % 1000 = 7")
        conn.execute("INSERT INTO w.t SELECT range, 'more' FROM range(300000, 400000)")
        conn.execute("CHECKPOINT w")
        conn.execute("DETACH w")
    with newer.open("rb") as source, older.open("r+b") as target:
        assert rewrite_changed_blocks(source.fileno(), target.fileno())
    assert older.read_bytes() == newer.read_bytes()
    assert older.read_bytes() != newer_bytes

    not_duckdb = tmp_path / "notes.txt"
    not_duckdb.write_bytes(b"notes " * 10_000)
    with not_duckdb.open("rb") as source, older.open("r+b") as target:
        assert not rewrite_changed_blocks(source.fileno(), target.fileno())
    assert older.read_bytes() == newer.read_bytes()  # nothing written


def test_a_write_that_fails_publishes_nothing(files: WarehouseFiles) -> None:
    with files.write() as conn:
        sync(conn, [token(1, 1)])

    def write_then_fail() -> None:
        with files.write() as conn:
            sync(conn, [token(2, 2)], run_id="second")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        write_then_fail()
    with duckdb.connect(str(files.published), read_only=True) as published:
        assert token_count(published) == 1


def published_count(files: WarehouseFiles) -> int:
    with duckdb.connect(str(files.published), read_only=True) as published:
        return token_count(published)


def test_sessions_left_unpublished_are_published_once_all_together(files: WarehouseFiles) -> None:
    with files.write() as conn:
        sync(conn, [token(1, 1)])
    published_inode = files.published.stat().st_ino

    for number in (2, 3):
        with files.write(publish=False) as conn:
            sync(conn, [token(number, number)], run_id=f"run {number}")
    assert files.published.stat().st_ino == published_inode and published_count(files) == 1
    assert files.has_unpublished_changes()
    with files.read_latest() as latest:
        assert token_count(latest) == 3

    assert files.publish_pending()
    assert published_count(files) == 3 and not files.has_unpublished_changes()
    assert not files.publish_pending()  # nothing left: no second copy
    assert files.published.stat().st_ino != published_inode


def test_what_committed_before_a_failed_session_is_published_and_nothing_of_the_failure(
    files: WarehouseFiles,
) -> None:
    with files.write(publish=False) as conn:
        sync(conn, [token(1, 1)])
    assert not files.published.exists()

    def commit_then_fail() -> None:
        with files.write(publish=False) as conn:
            sync(conn, [token(2, 2)], run_id="second")
            conn.execute("BEGIN")
            conn.execute(f"DELETE FROM {qualified(ACCESS_TOKENS)}")
            raise RuntimeError("midway")

    with pytest.raises(RuntimeError, match="midway"):
        commit_then_fail()
    assert files.publish_pending()
    assert published_count(files) == 2


def test_changes_a_killed_run_left_unpublished_go_out_with_the_next_write(files: WarehouseFiles) -> None:
    with files.write() as conn:
        sync(conn, [token(1, 1)])
    with files.write(publish=False) as conn:
        sync(conn, [token(2, 2)], run_id="killed before its publish")
    # The run is gone; readers keep the file it found.
    with files.read_published() as reader:
        assert token_count(reader) == 1

    with WarehouseFiles(files.published).write() as conn:
        sync(conn, [token(3, 3)], run_id="next")
    assert published_count(files) == 3 and not files.has_unpublished_changes()


def test_readers_wait_for_nothing_and_say_when_they_cannot_read(files: WarehouseFiles) -> None:
    with files.write() as conn:
        sync(conn, [token(1, 1)])
    with (
        held_open(files.published) as analyst,
        held_open(files.working) as writer,
        pytest.raises(WarehouseBusyError) as raised,
        files.read_published(),
    ):
        pass
    assert f"PID {analyst.pid}" in str(raised.value) and f"PID {writer.pid}" in str(raised.value)
    # Readers of the published file never stand in the way of a write.
    with held_open(files.published, read_only=True), files.write() as conn:
        sync(conn, [token(2, 2)], run_id="second")


def test_the_working_file_held_elsewhere_is_waited_for_then_its_holder_is_named(tmp_path: Path) -> None:
    files = WarehouseFiles(tmp_path / "warehouse.duckdb", lock_timeout_seconds=1)
    with files.write() as conn:
        sync(conn, [token(1, 1)])

    with held_open(files.working) as intruder:
        started = time.monotonic()
        with pytest.raises(WarehouseBusyError) as raised, files.write():
            pass
        waited = time.monotonic() - started
    assert waited >= 1
    message = str(raised.value)
    assert f"(PID {intruder.pid})" in message and str(files.working) in message
    assert "NEXUDUS_WAREHOUSE_LOCK_TIMEOUT" in message and str(files.published) in message

    # Let go within the wait, and the write goes ahead.
    patient = WarehouseFiles(files.published, lock_timeout_seconds=60)
    with held_open(files.working) as intruder:
        releaser = threading.Timer(0.5, lambda: intruder.process.stdin and intruder.process.stdin.close())
        releaser.start()
        with patient.write() as conn:
            sync(conn, [token(2, 2)], run_id="second")
        releaser.join()
    with patient.read_published() as conn:
        assert token_count(conn) == 2


_WRITER = """
import sys, time
from pathlib import Path
from nexudus_assets.warehouse import WarehouseFiles
with WarehouseFiles(Path(sys.argv[1])).write():
    print("writing", flush=True)
    sys.stdin.read()
"""


def test_a_second_writer_waits_for_the_first_then_names_it(tmp_path: Path) -> None:
    files = WarehouseFiles(tmp_path / "warehouse.duckdb", lock_timeout_seconds=1)
    first = subprocess.Popen(
        [sys.executable, "-c", _WRITER, str(files.published)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout and first.stdout.readline().strip() == "writing"
        with pytest.raises(WarehouseBusyError, match=rf"write session of .* \(PID {first.pid}\)"), files.write():
            pass
    finally:
        assert first.stdin
        first.stdin.close()
        assert first.wait(timeout=30) == 0
    with files.write() as conn:  # the first one let go
        sync(conn, [token(1, 1)])


def test_a_corrupt_file_fails_at_once_naming_it(tmp_path: Path) -> None:
    # A long wait allowed: a corrupt file must not be retried at all.
    files = WarehouseFiles(tmp_path / "warehouse.duckdb", lock_timeout_seconds=600)
    files.published.write_bytes(b"not a database " * 1000)
    started = time.monotonic()
    with pytest.raises(WarehouseUnreadableError, match="not a valid DuckDB database file") as raised, files.write():
        pass
    assert str(files.published) in str(raised.value) and "backup" in str(raised.value)
    assert not files.working.exists(), "a copy of the corrupt file would stand in the way of a restored one"
    with pytest.raises(WarehouseUnreadableError, match="not a valid DuckDB database file"), files.read_published():
        pass

    files.published.unlink()
    with files.write() as conn:
        sync(conn, [token(1, 1)])
    files.working.write_bytes(files.working.read_bytes()[:5000])  # truncated
    with pytest.raises(WarehouseUnreadableError, match=f"{files.working.name}.*Delete it"), files.write():
        pass
    assert time.monotonic() - started < 60


def test_the_working_file_starts_from_the_published_one(files: WarehouseFiles) -> None:
    with files.write() as conn:
        sync(conn, [token(1, 1), token(2, 2)])
    files.working.unlink()  # a restored backup, or an upgrade: only the published file exists

    with files.read_latest() as conn:
        assert token_count(conn) == 2
    with files.write() as conn:
        result = sync(conn, [token(2, 2), token(3, 3)], run_id="second")
    assert (result.inserted, result.unchanged, result.live_rows) == (1, 1, 3)


def test_no_warehouse_yet_says_not_synced_yet(files: WarehouseFiles) -> None:
    for reader in (files.read_published, files.read_latest):
        with pytest.raises(WarehouseNotSyncedError, match="not synced yet"), reader():
            pass
    assert not files.working.exists() and not files.published.exists()


@pytest.mark.parametrize("others", [0, ARROW_FROM_ROWS], ids=["as parameters", "as arrow"])
def test_long_ids_nul_characters_and_emoji_are_stored_as_they_came(
    conn: duckdb.DuckDBPyConnection, others: int
) -> None:
    odd = token(2**63 - 1, 1, description="Front\x00desk \U0001f600", business_id=2**40, Note="a\x00b")
    sync(conn, [odd, *(token(i, 1) for i in range(1, others + 1))], arrow_from_rows=ARROW_FROM_ROWS)
    stored = rows(
        conn, f"SELECT id, description, business_id, _extra FROM {qualified(ACCESS_TOKENS)} WHERE id = ?", [odd.id]
    )
    assert stored == [(2**63 - 1, "Front\x00desk \U0001f600", 2**40, '{"Note": "a\\u0000b"}')]


def test_a_record_answered_twice_keeps_the_copy_with_the_latest_updated_on(conn: duckdb.DuckDBPyConnection) -> None:
    newer, older = token(1, 5, description="newer"), token(1, 2, description="older")
    result = sync(conn, [newer, older])  # the older copy staged last, as a server repeating a record sends it
    assert (result.inserted, result.fetched) == (1, 2)
    assert rows(conn, f"SELECT description FROM {qualified(ACCESS_TOKENS)}") == [("newer",)]


def test_quarantined_json_with_a_lone_surrogate_is_stored_and_later_syncs_go_on(
    conn: duckdb.DuckDBPyConnection,
) -> None:
    raw = {"Id": 7, "Description": "Front desk \ud83d", "Notes": "Caf\udce9"}
    for run in ("first", "second"):
        rejected = RejectedRecord(7, "AccessToken 7: field 'Description': a lone UTF-16 surrogate", raw)
        result = sync(conn, [token(1, 1)], run_id=run, rejected=[rejected])
        assert result.rejected == 1
    stored = rows(conn, "SELECT run_id, raw_json FROM raw._rejected_records ORDER BY run_id")
    assert [(run, json.loads(text)) for run, text in stored] == [
        (run, {"Id": 7, "Description": "Front desk \ufffd", "Notes": "Caf\ufffd"}) for run in ("first", "second")
    ]
