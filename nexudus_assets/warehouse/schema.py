"""The `raw` schema in DuckDB: per entity a live table and its history, typed from its model, plus bookkeeping.

Entity columns come from the pydantic model's fields, never from a hand-written list, so a
field added to a model becomes a column on the next `ensure_schema` (additive only).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import types
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from decimal import Decimal
from enum import IntEnum
from typing import Any, Union, get_args, get_origin
from uuid import UUID

import duckdb
from pydantic_core import to_jsonable_python

from nexudus_assets.nexudus.entities import ENTITIES, Entity
from nexudus_assets.nexudus.models import NexudusRecord

SCHEMA = "raw"
#: Where the insights and the daily figures are computed, beside the raw tables.
INSIGHTS_SCHEMA = "insights"
#: Where earlier versions kept these tables. A file named `nexudus.duckdb` is catalog `nexudus`,
#: so `nexudus.access_tokens` was ambiguous to anyone opening the file directly.
LEGACY_SCHEMA = "nexudus"

#: The cursor per entity; written only in the transaction that publishes the rows it covers.
SYNC_STATE = f"{SCHEMA}._sync_state"
#: One row per published sync, for freshness and row-count checks.
SYNC_LOG = f"{SCHEMA}._sync_log"
#: Records that failed validation, kept verbatim.
REJECTED_RECORDS = f"{SCHEMA}._rejected_records"
#: The Nexudus account the warehouse belongs to, one row, written with the first data it holds.
ACCOUNT_RECORD = f"{SCHEMA}._account"


@dataclass(frozen=True)
class Column:
    """One column of an entity table, with what the Dagster layer publishes about it."""

    name: str
    duckdb_type: str
    description: str
    nullable: bool = True


@dataclass(frozen=True)
class Kind:
    """How one Python field type is stored: its DuckDB column type, and the conversion on the way."""

    duckdb_type: str
    #: Applied to non-null values before a batch goes to DuckDB; None when they go as they are.
    convert: Callable[[Any], Any] | None = None


#: A UTF-16 surrogate code point: in a Python string, always one without its other half.
_LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def to_json(value: Any) -> str:
    """JSON text of a parsed value; Decimals, datetimes and UUIDs become strings as pydantic writes them.

    DuckDB refuses JSON holding a lone surrogate escape (a .NET string cut mid-emoji, or an
    invalid UTF-8 byte as the client keeps it), so each becomes U+FFFD: a quarantined record's
    JSON must be storable, or it would fail every later sync too.
    """
    text = json.dumps(value, default=to_jsonable_python)
    if "\\ud" not in text:
        return text
    return _LONE_SURROGATE.sub("\ufffd", json.dumps(value, default=to_jsonable_python, ensure_ascii=False))


_DECIMAL_STEP = Decimal("0.0001")

_KINDS: dict[type, Kind] = {
    bool: Kind("BOOLEAN"),
    int: Kind("BIGINT"),
    # Rounded here, to the column's scale and as Python rounds: Arrow refuses to drop digits.
    Decimal: Kind("DECIMAL(18,4)", lambda value: value.quantize(_DECIMAL_STEP)),
    dt.datetime: Kind("TIMESTAMP"),
    # As text: Arrow has no UUID type DuckDB reads natively.
    UUID: Kind("UUID", str),
    str: Kind("VARCHAR"),
}
_INT_ENUM = Kind("INTEGER", int)
_EXTRA = Kind("JSON", to_json)

_DESCRIPTIONS = {
    "id": "Nexudus record Id; the primary key.",
    "unique_id": "Nexudus global identifier of the record.",
    "system_id": "Identifier of the record in an external system.",
    "created_on": "When the record was created in Nexudus (UTC).",
    "updated_on": "When the record last changed in Nexudus (UTC); the incremental sync cursor.",
    "updated_by": "Who last changed the record in Nexudus.",
    "_extra": "Fields Nexudus sent that the model does not know, as a JSON object; NULL when none.",
    "_synced_at": "When a sync wrote this version of the row (UTC).",
    "_deleted_at": "When a full sync found the record gone from Nexudus (UTC); NULL while it exists.",
    "_valid_from": "When a sync first saw this version of the record (UTC).",
    "_valid_to": ("When a sync saw a newer version, or found the record deleted (UTC); NULL for the current version."),
}

SYNCED_AT = Column("_synced_at", "TIMESTAMP", _DESCRIPTIONS["_synced_at"], nullable=False)
DELETED_AT = Column("_deleted_at", "TIMESTAMP", _DESCRIPTIONS["_deleted_at"])
VALID_FROM = Column("_valid_from", "TIMESTAMP", _DESCRIPTIONS["_valid_from"], nullable=False)
VALID_TO = Column("_valid_to", "TIMESTAMP", _DESCRIPTIONS["_valid_to"])


def qualified(entity: Entity) -> str:
    """`raw.access_tokens`: the live table, one row per record."""
    return f"{SCHEMA}.{entity.table}"


def history_table(entity: Entity) -> str:
    """`raw.access_tokens_history`: one row per version of a record a sync saw."""
    return f"{SCHEMA}.{entity.table}_history"


def quote(name: str) -> str:
    # Field names are free to collide with SQL keywords (`value`, `order`).
    return f'"{name}"'


def _kind(annotation: Any) -> Kind:
    if get_origin(annotation) in (Union, types.UnionType):
        members = [arg for arg in get_args(annotation) if arg is not type(None)]
        if len(members) != 1:
            raise TypeError(f"cannot store a field of type {annotation!r}")
        annotation = members[0]
    if annotation in _KINDS:
        return _KINDS[annotation]
    if isinstance(annotation, type) and issubclass(annotation, IntEnum):
        return _INT_ENUM
    raise TypeError(f"cannot store a field of type {annotation!r}")


def field_kinds(model: type[NexudusRecord]) -> list[tuple[str, Kind]]:
    """(column name, kind) for every stored value of a record: its fields, then `_extra`."""
    kinds = [(name, _kind(field.annotation)) for name, field in model.model_fields.items()]
    return [*kinds, ("_extra", _EXTRA)]


def _describe(model: type[NexudusRecord], name: str, kind: Kind) -> str:
    field = model.model_fields.get(name)
    if field is not None and field.description:
        return field.description
    if name in _DESCRIPTIONS:
        return _DESCRIPTIONS[name]
    words = name.replace("_", " ")
    if name in model.display_fields:
        return f"{words.capitalize()}, as shown by Nexudus (copied from the related record)."
    if kind is _KINDS[int] and name.endswith("_id"):
        return f"Id of the related {words.removesuffix(' id')} record."
    return f"{words.capitalize()}."


def data_columns(entity: Entity) -> list[Column]:
    """The columns a record fills: the model's fields and `_extra`, in model order."""
    return [
        Column(name, kind.duckdb_type, _describe(entity.model, name, kind), nullable=name != "id")
        for name, kind in field_kinds(entity.model)
    ]


def table_columns(entity: Entity) -> list[Column]:
    """Every column of the entity's table, with a description for each."""
    return [*data_columns(entity), SYNCED_AT, DELETED_AT]


def history_columns(entity: Entity) -> list[Column]:
    """Every column of the entity's history table: the live table's, then the version's validity."""
    return [*table_columns(entity), VALID_FROM, VALID_TO]


def column_ddl(columns: Sequence[Column]) -> str:
    return ", ".join(f"{quote(c.name)} {c.duckdb_type}{'' if c.nullable else ' NOT NULL'}" for c in columns)


def one_row(conn: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple[Any, ...]:
    """The one row `sql` returns."""
    # Read to the end: DuckDB refuses other work on a connection whose result was read only in part.
    (row,) = conn.execute(sql, params).fetchall()
    return tuple(row)


def table_exists(conn: duckdb.DuckDBPyConnection, qualified_name: str) -> bool:
    """Whether the table `schema.name` exists."""
    schema, name = qualified_name.split(".")
    (exists,) = one_row(
        conn,
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?",
        [schema, name],
    )
    return bool(exists)


@contextmanager
def transaction(conn: duckdb.DuckDBPyConnection) -> Iterator[None]:
    conn.begin()
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


_BOOKKEEPING_DDL = (
    f"""CREATE TABLE IF NOT EXISTS {SYNC_STATE} (
        entity VARCHAR PRIMARY KEY,
        high_water_mark TIMESTAMP,
        last_synced_at TIMESTAMP,
        last_full_refresh_at TIMESTAMP
    )""",
    f"""CREATE TABLE IF NOT EXISTS {SYNC_LOG} (
        run_id VARCHAR NOT NULL,
        entity VARCHAR NOT NULL,
        mode VARCHAR NOT NULL CHECK (mode IN ('incremental', 'full')),
        started_at TIMESTAMP NOT NULL,
        finished_at TIMESTAMP NOT NULL,
        fetched BIGINT NOT NULL,
        inserted BIGINT NOT NULL,
        updated BIGINT NOT NULL,
        unchanged BIGINT NOT NULL,
        deleted BIGINT NOT NULL,
        rejected BIGINT NOT NULL,
        live_rows BIGINT NOT NULL,
        high_water_mark TIMESTAMP,
        requests BIGINT NOT NULL,
        throttled BIGINT NOT NULL,
        pages BIGINT,
        verification_pages BIGINT,
        walk_incomplete VARCHAR
    )""",
    f"""CREATE TABLE IF NOT EXISTS {REJECTED_RECORDS} (
        entity VARCHAR NOT NULL,
        record_id BIGINT,
        reason VARCHAR NOT NULL,
        raw_json JSON,
        rejected_at TIMESTAMP NOT NULL,
        run_id VARCHAR NOT NULL
    )""",
)


#: `_sync_log` columns a warehouse of an earlier version lacks: the paging of each sync.
_SYNC_LOG_ADDED = ("pages BIGINT", "verification_pages BIGINT", "walk_incomplete VARCHAR")


def ensure_schema(conn: duckdb.DuckDBPyConnection, *, describe_columns: bool = True) -> None:
    """Create the schema and its tables if missing and add columns models gained; one transaction.

    A warehouse written by an earlier version is upgraded in the same transaction: its tables move
    from schema `nexudus` to `raw`, and each history table starts with one version per row.
    Raises TypeError when an existing column's type no longer matches its model field: only
    additive migrations are automatic. `describe_columns=False` leaves out the column comments,
    for a scratch database nobody reads.
    """
    with transaction(conn):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
        _move_legacy_tables(conn)
        for ddl in _BOOKKEEPING_DDL:
            conn.execute(ddl)
        for column in _SYNC_LOG_ADDED:
            conn.execute(f"ALTER TABLE {SYNC_LOG} ADD COLUMN IF NOT EXISTS {column}")
        for entity in ENTITIES:
            _ensure_table(conn, qualified(entity), table_columns(entity), "id", describe_columns)
            if _ensure_table(conn, history_table(entity), history_columns(entity), None, describe_columns):
                _backfill_history(conn, entity)


def _tables_in(conn: duckdb.DuckDBPyConnection, schema: str) -> dict[str, str]:
    """Table name -> its CREATE statement, for the tables of `schema` in the warehouse file."""
    found = conn.execute(
        "SELECT table_name, sql FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ?",
        [schema],
    ).fetchall()
    return dict(found)


#: Bookkeeping tables kept beside the entity tables (`commands` is the command catalogue).
_MOVED_BOOKKEEPING = ("_sync_state", "_sync_log", "_rejected_records", "commands")


def _move_legacy_tables(conn: duckdb.DuckDBPyConnection) -> None:
    """Move the data and bookkeeping tables of schema `nexudus` to `raw`, keeping their keys.

    DuckDB has no `ALTER TABLE ... SET SCHEMA`: each table is recreated from its own DDL and
    filled. Staging left by a killed run is dropped (the next sync stages afresh). Any other
    table of the old schema is not ours to move and stays where it is.
    """
    legacy = _tables_in(conn, LEGACY_SCHEMA)
    if not legacy:
        return
    current = _tables_in(conn, SCHEMA)
    moved = {entity.table for entity in ENTITIES} | set(_MOVED_BOOKKEEPING)
    for name, ddl in legacy.items():
        if name.startswith("_stage_") or name.startswith("_changes_"):
            conn.execute(f"DROP TABLE {LEGACY_SCHEMA}.{quote(name)}")
            continue
        if name not in moved:
            continue
        if name in current:
            raise RuntimeError(
                f"both {LEGACY_SCHEMA}.{name} and {SCHEMA}.{name} exist: the warehouse holds an old and a new"
                f" copy of the same table. Keep one (DROP TABLE the other) and run the sync again."
            )
        prefix = f"CREATE TABLE {LEGACY_SCHEMA}.{name}("
        if not ddl.startswith(prefix):
            raise RuntimeError(f"cannot move {LEGACY_SCHEMA}.{name} to {SCHEMA}: unexpected definition {ddl!r}")
        conn.execute(f"CREATE TABLE {SCHEMA}.{name}({ddl.removeprefix(prefix)}")
        conn.execute(f"INSERT INTO {SCHEMA}.{quote(name)} SELECT * FROM {LEGACY_SCHEMA}.{quote(name)}")
        conn.execute(f"DROP TABLE {LEGACY_SCHEMA}.{quote(name)}")
    if not _tables_in(conn, LEGACY_SCHEMA):
        conn.execute(f"DROP SCHEMA {LEGACY_SCHEMA}")


def _backfill_history(conn: duckdb.DuckDBPyConnection, entity: Entity) -> None:
    """A new history table starts with the version each row holds: seen at `_synced_at`, until `_deleted_at`."""
    columns = ", ".join(quote(c.name) for c in table_columns(entity))
    conn.execute(
        f"""INSERT INTO {history_table(entity)} ({columns}, _valid_from, _valid_to)
            SELECT {columns}, _synced_at, _deleted_at FROM {qualified(entity)}"""
    )


def _ensure_table(
    conn: duckdb.DuckDBPyConnection,
    table: str,
    columns: Sequence[Column],
    primary_key: str | None,
    describe_columns: bool,
) -> bool:
    """Create the table or add the columns it lacks, and describe every column; True when created."""
    schema, name = table.split(".")
    existing = {
        column_name: (data_type, comment)
        for column_name, data_type, comment in conn.execute(
            "SELECT column_name, data_type, comment FROM duckdb_columns()"
            " WHERE database_name = current_database() AND schema_name = ? AND table_name = ?",
            [schema, name],
        ).fetchall()
    }
    created = not existing
    if created:
        key = f", PRIMARY KEY ({primary_key})" if primary_key else ""
        conn.execute(f"CREATE TABLE {table} ({column_ddl(columns)}{key})")
    for column in columns:
        actual_type, comment = existing.get(column.name, (None, None))
        if actual_type is None and not created:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column_ddl([column])}")
        elif actual_type is not None and actual_type != column.duckdb_type:
            raise TypeError(
                f"{table}.{column.name} is {actual_type} but the model now needs {column.duckdb_type};"
                " only added columns are migrated automatically"
            )
        # Kept in the database too, so that any DuckDB client sees what a column means. Written
        # only when it differs, so that an up-to-date schema costs no catalog write.
        if describe_columns and comment != column.description:
            text = column.description.replace("'", "''")
            conn.execute(f"COMMENT ON COLUMN {table}.{quote(column.name)} IS '{text}'")
    return created
