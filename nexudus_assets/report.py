"""A plain-text summary of a warehouse: `python -m nexudus_assets.report [path]`."""

import sys
from pathlib import Path

from nexudus_assets.nexudus import ENTITIES
from nexudus_assets.settings import Settings
from nexudus_assets.warehouse import (
    SCHEMA,
    WarehouseFiles,
    WarehouseNotSyncedError,
    history_table,
    one_row,
    qualified,
)


def print_report(database: Path) -> None:
    try:
        with WarehouseFiles(Path(database)).read_published() as conn:
            print(f"Warehouse {database}")
            print(
                f"  {'table':34} {'live':>8} {'deleted':>8} {'versions':>9} {'rejected':>9} {'requests':>9}"
                "  last sync (UTC)"
            )
            for entity in ENTITIES:
                live, deleted = one_row(
                    conn,
                    "SELECT count(*) FILTER (WHERE _deleted_at IS NULL),"
                    f" count(*) FILTER (WHERE _deleted_at IS NOT NULL) FROM {qualified(entity)}",
                )
                (versions,) = one_row(conn, f"SELECT count(*) FROM {history_table(entity)}")
                (rejected,) = one_row(
                    conn, f"SELECT count(*) FROM {SCHEMA}._rejected_records WHERE entity = ?", [entity.table]
                )
                requests, finished = conn.execute(
                    f"SELECT requests, finished_at FROM {SCHEMA}._sync_log WHERE entity = ? "
                    "ORDER BY finished_at DESC LIMIT 1",
                    [entity.table],
                ).fetchone() or (None, None)
                when = f"{finished:%Y-%m-%d %H:%M:%S}" if finished else "never"
                print(
                    f"  {qualified(entity):34} {live:>8} {deleted:>8} {versions:>9} {rejected:>9} {requests or 0:>9}"
                    f"  {when}"
                )
            insights = conn.execute(
                "SELECT table_name FROM information_schema.tables"
                " WHERE table_catalog = current_database() AND table_schema = 'insights' ORDER BY 1"
            ).fetchall()
            if insights:
                print("\nInsights")
                for (name,) in insights:
                    (rows,) = one_row(conn, f"SELECT count(*) FROM insights.{name}")
                    print(f"  insights.{name:40} {rows:>8} rows")
    except WarehouseNotSyncedError:
        print(f"Warehouse {database}: not synced yet.")


if __name__ == "__main__":
    print_report(Path(sys.argv[1] if len(sys.argv) > 1 else Settings.from_env().duckdb_path))
