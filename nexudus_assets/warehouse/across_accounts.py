"""One DuckDB file across accounts: each account's published warehouse, every row tagged with its account.

For the analyst comparing accounts: every table of the `insights` schema and the live rows of
every raw entity table, as a table of the same `schema.name` whose first column is `account`, the
columns the union of the accounts' columns by name (an account without a column has NULL there).
The table `accounts` says what each account contributed.

Each account's warehouse is read through its published file (`WarehouseFiles.read_published`),
which never stands in a sync's way; a moment when it cannot be read (someone holds it read-write
while a run writes the working file) is tried again a few times. The new file is built in a
private directory beside the target, in one transaction, then renamed over the target: whoever
has the old file open keeps reading it, and a failure leaves the target as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import duckdb

from nexudus_assets.nexudus.entities import ENTITIES
from nexudus_assets.warehouse.connection import CATALOG, connect
from nexudus_assets.warehouse.files import WarehouseBusyError, WarehouseFiles, WarehouseNotSyncedError
from nexudus_assets.warehouse.schema import (
    INSIGHTS_SCHEMA,
    SYNC_LOG,
    one_row,
    qualified,
    quote,
    table_exists,
    transaction,
)

#: One row per account named: whether it is in the file, from which warehouse, as of when.
#: In schema `main`, so that it answers to `accounts` whatever the file is called: a schema
#: named like the file (`across_accounts`) would be ambiguous with the file's own catalog.
ACCOUNTS_TABLE = "main.accounts"
ACCOUNT_COLUMN = "account"
#: Attempts at reading an account's warehouse while it cannot be read, and the pause between them.
BUSY_ATTEMPTS = 5
BUSY_PAUSE_SECONDS = 0.5
#: Rows per Arrow batch streamed from an account's warehouse into the new file: bounds what memory holds at once.
_BATCH_ROWS = 10_000
_PRIVATE = 0o600


@dataclass(frozen=True)
class AcrossAccounts:
    """What `publish_across_accounts` wrote."""

    target: Path
    #: The accounts in the file, in the order given.
    included: tuple[str, ...]
    #: The accounts left out because their warehouse does not exist yet.
    not_synced: tuple[str, ...]
    #: Rows written, by table (`schema.name`) then account; an account without the table is absent.
    rows: Mapping[str, Mapping[str, int]]

    @property
    def tables(self) -> tuple[str, ...]:
        return tuple(self.rows)


def publish_across_accounts(
    published: Mapping[str, Path],
    target: Path,
    *,
    busy_attempts: int = BUSY_ATTEMPTS,
    busy_pause_seconds: float = BUSY_PAUSE_SECONDS,
) -> AcrossAccounts:
    """Write `target` from the published warehouses of the accounts named in `published`.

    Raises WarehouseBusyError when an account's warehouse stays unreadable for all attempts, and
    WarehouseUnreadableError for one DuckDB cannot open: the target is then left as it was.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    building_prefix = f".{target.name}.building-"
    with _exclusive(target):
        # Left by a build killed midway; the lock is ours, so no build is under way.
        for leftover in target.parent.glob(f"{building_prefix}*"):
            shutil.rmtree(leftover, ignore_errors=True)
        with tempfile.TemporaryDirectory(prefix=building_prefix, dir=target.parent) as building:
            # The directory is 0700: what DuckDB creates inside it (the file, its log, its spills) is
            # reachable by nobody else, whatever the umask.
            built = Path(building) / target.name
            conn = connect(str(built))
            try:
                with transaction(conn):
                    result = _fill(conn, published, target, busy_attempts, busy_pause_seconds)
                conn.execute("CHECKPOINT")
            finally:
                conn.close()
            _replace(built, target)
    return result


def _fill(
    conn: duckdb.DuckDBPyConnection,
    published: Mapping[str, Path],
    target: Path,
    busy_attempts: int,
    busy_pause_seconds: float,
) -> AcrossAccounts:
    conn.execute(
        f"""CREATE TABLE {ACCOUNTS_TABLE} (
            {ACCOUNT_COLUMN} VARCHAR PRIMARY KEY,
            included BOOLEAN NOT NULL,
            warehouse VARCHAR NOT NULL,
            published_at TIMESTAMP,
            last_synced_at TIMESTAMP,
            tables BIGINT NOT NULL,
            "rows" BIGINT NOT NULL
        )"""
    )
    columns: dict[str, dict[str, str]] = {}
    rows: dict[str, dict[str, int]] = {}
    included, not_synced = [], []
    for account, path in published.items():
        try:
            with contextlib.ExitStack() as stack:
                source = _open_published(stack, WarehouseFiles(path), busy_attempts, busy_pause_seconds)
                opened = _opened_file(source)
                published_at = dt.datetime.fromtimestamp(opened.stat().st_mtime, dt.UTC).replace(tzinfo=None)
                last_synced_at = (
                    one_row(source, f"SELECT max(finished_at) FROM {SYNC_LOG}")[0]
                    if table_exists(source, SYNC_LOG)
                    else None
                )
                copied = {
                    table: _copy(conn, source, account, table, where, columns.setdefault(table, {}))
                    for table, where in _tables_of(source)
                }
        except WarehouseNotSyncedError:
            not_synced.append(account)
            conn.execute(f"INSERT INTO {ACCOUNTS_TABLE} VALUES (?, false, ?, NULL, NULL, 0, 0)", [account, str(path)])
            continue
        included.append(account)
        for table, count in copied.items():
            rows.setdefault(table, {})[account] = count
        conn.execute(
            f"INSERT INTO {ACCOUNTS_TABLE} VALUES (?, true, ?, ?, ?, ?, ?)",
            [account, str(opened), published_at, last_synced_at, len(copied), sum(copied.values())],
        )
    return AcrossAccounts(target=target, included=tuple(included), not_synced=tuple(not_synced), rows=rows)


def _open_published(
    stack: contextlib.ExitStack[bool | None], files: WarehouseFiles, attempts: int, pause_seconds: float
) -> duckdb.DuckDBPyConnection:
    """`files.read_published()`, entered on `stack`, tried `attempts` times while the warehouse is busy."""
    for _ in range(1, attempts):
        try:
            return stack.enter_context(files.read_published())
        except WarehouseBusyError:
            time.sleep(pause_seconds)
    return stack.enter_context(files.read_published())


def _opened_file(conn: duckdb.DuckDBPyConnection) -> Path:
    """The file `read_published` opened: the published one, or the working one when that was held."""
    (path,) = one_row(conn, "SELECT path FROM duckdb_databases() WHERE database_name = ?", [CATALOG])
    return Path(path)


def _tables_of(source: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(`schema.name`, the rows to take) for every table the file contributes, raw tables first."""
    raw = [(qualified(entity), "_deleted_at IS NULL") for entity in ENTITIES if table_exists(source, qualified(entity))]
    insights = source.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ?"
        " ORDER BY table_name",
        [INSIGHTS_SCHEMA],
    ).fetchall()
    return raw + [(f"{INSIGHTS_SCHEMA}.{name}", "true") for (name,) in insights]


def _copy(
    conn: duckdb.DuckDBPyConnection,
    source: duckdb.DuckDBPyConnection,
    account: str,
    table: str,
    where: str,
    columns: dict[str, str],
) -> int:
    """Append one account's rows of `table`, adding the columns it brings; the number of rows.

    `columns` (name -> type) is what the table holds so far, updated here. A column two accounts
    hold with different types (one warehouse not yet migrated) becomes VARCHAR: every value kept.
    """
    schema, name = table.split(".")
    source_columns = source.execute(
        "SELECT column_name, data_type FROM duckdb_columns()"
        " WHERE database_name = current_database() AND schema_name = ? AND table_name = ? ORDER BY column_index",
        [schema, name],
    ).fetchall()
    if not columns:
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {schema}")
        conn.execute(f"CREATE TABLE {table} ({ACCOUNT_COLUMN} VARCHAR NOT NULL)")
    for column, data_type in source_columns:
        if column not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {quote(column)} {data_type}")
            columns[column] = data_type
        elif columns[column] != data_type and columns[column] != "VARCHAR":
            conn.execute(f"ALTER TABLE {table} ALTER COLUMN {quote(column)} TYPE VARCHAR")
            columns[column] = "VARCHAR"
    listed = ", ".join(quote(column) for column, _ in source_columns)
    batches = source.sql(f"SELECT {listed} FROM {table} WHERE {where}").to_arrow_reader(_BATCH_ROWS)
    registered = "_account_rows"
    conn.register(registered, batches)
    try:
        (inserted,) = one_row(
            conn, f"INSERT INTO {table} BY NAME SELECT ? AS {ACCOUNT_COLUMN}, * FROM {registered}", [account]
        )
    finally:
        conn.unregister(registered)
    return int(inserted)


@contextlib.contextmanager
def _exclusive(target: Path) -> Iterator[None]:
    """One build of `target` at a time: a scheduled run and one launched by hand wait for each other.

    An `flock`, which the OS drops when its process dies: a killed build never holds up the next.
    """
    lock_fd = os.open(target.with_name(f".{target.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(lock_fd)


def _replace(built: Path, target: Path) -> None:
    """Rename the built file over `target`, with the mode and group of the file it replaces (else 0600)."""
    try:
        before = os.stat(target)
    except FileNotFoundError:
        os.chmod(built, _PRIVATE)
    else:
        os.chmod(built, stat.S_IMODE(before.st_mode))
        # Allowed to the file's owner in that group, or to root; otherwise the group is the user's.
        with contextlib.suppress(PermissionError):
            os.chown(built, -1, before.st_gid)
    with built.open("rb") as written:
        os.fsync(written.fileno())
    # A log beside the target was written for the file being replaced; DuckDB would refuse the new one.
    for suffix in (".wal", ".wal.checkpoint", ".wal.recovery"):
        target.with_name(target.name + suffix).unlink(missing_ok=True)
    os.replace(built, target)
    directory = os.open(target.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
