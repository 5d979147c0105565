"""The warehouse layer against real DuckDB files: schema from the models, staged syncs, safety."""

from __future__ import annotations

import datetime as dt
import json
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
    connect,
    ensure_schema,
    qualified,
    read_high_water_mark,
    table_columns,
)
from nexudus_assets.warehouse import sync as sync_module

T0 = dt.datetime(2024, 3, 1, 9, 0)
NOW = dt.datetime(2024, 6, 1, 12, 0)


def at(hours: int) -> dt.datetime:
    return T0 + dt.timedelta(hours=hours)


def token(record_id: int, updated_hours: int = 0, **fields: Any) -> AccessToken:
    return AccessToken(
        id=record_id,
        unique_id=UUID(int=record_id),
        access_code=f"code-{record_id}",
        minutes_included=60,
        minutes_left=30,
        updated_on=at(updated_hours),
        **fields,
    )


def sync(
    conn: duckdb.DuckDBPyConnection,
    records: list[AccessToken],
    *,
    mode: str = "incremental",
    run_id: str = "run",
    now: dt.datetime = NOW,
    rejected: list[RejectedRecord] | None = None,
    **publish: Any,
) -> SyncResult:
    entity_sync = EntitySync(ACCESS_TOKENS, run_id=run_id, mode=mode, now=now)  # type: ignore[arg-type]
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
    found = rows(
        conn, f"SELECT id, access_code, updated_on, _synced_at, _deleted_at FROM {qualified(ACCESS_TOKENS)}"
    )
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


def test_failure_inside_publish_rolls_everything_back(
    conn: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch
) -> None:
    sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="first")
    before = snapshot(conn)

    def broken_log(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("disk full")

    entity_sync = EntitySync(ACCESS_TOKENS, run_id="second", mode="full", now=NOW + dt.timedelta(days=1))
    entity_sync.begin(conn)
    entity_sync.stage(conn, [token(1, 1), token(2, 20, description="changed"), token(4, 4)], [])
    with monkeypatch.context() as patch:
        # The last step before commit: the upsert, soft-delete and cursor have all run by now.
        patch.setattr(EntitySync, "_log", broken_log)
        with pytest.raises(RuntimeError, match="disk full"):
            entity_sync.publish(conn)

    assert snapshot(conn) == before
    # Staging survived, so publishing again completes the run.
    result = entity_sync.publish(conn)
    assert (result.inserted, result.updated, result.unchanged, result.deleted) == (1, 1, 1, 1)
    assert read_high_water_mark(conn, ACCESS_TOKENS) == at(20)


def test_rejected_records_are_quarantined_verbatim(conn: duckdb.DuckDBPyConnection) -> None:
    sync(conn, [token(1, 1), token(2, 2), token(3, 3)], mode="full", run_id="first")
    raw = {"Id": "3", "MinutesLeft": "lots", "Nested": {"A": [1, 2.5, None]}}
    error = RecordValidationError("AccessToken", "3", [("MinutesLeft", "not an integer")], raw=raw)

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


def test_values_a_column_cannot_hold_are_quarantined_not_fatal(conn: duckdb.DuckDBPyConnection) -> None:
    contracts = [
        CoworkerContract(id=1, price=Decimal("10.00"), updated_on=at(1)),
        CoworkerContract(id=2, price=Decimal("1e20"), updated_on=at(2)),  # beyond DECIMAL(18,4)
    ]
    entity_sync = EntitySync(COWORKER_CONTRACTS, run_id="run", mode="incremental", now=NOW)
    entity_sync.begin(conn)
    entity_sync.stage(conn, contracts, [])
    result = entity_sync.publish(conn)

    assert (result.inserted, result.rejected, result.fetched) == (1, 1, 2)
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


def test_stage_batches_are_bulk_inserted(conn: duckdb.DuckDBPyConnection, monkeypatch: pytest.MonkeyPatch) -> None:
    inserts: list[int] = []
    real_insert = sync_module._insert

    def counting_insert(conn: duckdb.DuckDBPyConnection, batch: Any, sql: str, params: Any = None) -> None:
        inserts.append(batch.num_rows)
        real_insert(conn, batch, sql, params)

    monkeypatch.setattr(sync_module, "_insert", counting_insert)
    sync(conn, [token(i, i % 24) for i in range(1, 5001)])

    assert inserts == [5000]


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
    result = sync(conn, [token(2, 9)], complete=False)
    assert result.inserted == 1
    assert read_high_water_mark(conn, ACCESS_TOKENS) == at(5)
