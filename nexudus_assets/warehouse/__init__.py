"""The DuckDB warehouse: typed entity tables and their history, staged syncs published in one transaction.

Pure Python over DuckDB connections and files; no Dagster, no HTTP.
"""

from nexudus_assets.warehouse.across_accounts import AcrossAccounts, publish_across_accounts
from nexudus_assets.warehouse.bookkeeping import SyncResult, read_high_water_mark
from nexudus_assets.warehouse.connection import CATALOG, connect
from nexudus_assets.warehouse.files import (
    DEFAULT_LOCK_TIMEOUT_SECONDS,
    DEFAULT_WAREHOUSE_PATH,
    LOCK_TIMEOUT_VARIABLE,
    WarehouseBusyError,
    WarehouseError,
    WarehouseFiles,
    WarehouseNotSyncedError,
    WarehouseUnreadableError,
)
from nexudus_assets.warehouse.schema import (
    INSIGHTS_SCHEMA,
    SCHEMA,
    Column,
    ensure_schema,
    history_columns,
    history_table,
    one_row,
    qualified,
    table_columns,
    transaction,
)
from nexudus_assets.warehouse.staging import RejectedRecord
from nexudus_assets.warehouse.sync import DeletionGuardError, EntitySync

__all__ = [
    "CATALOG",
    "DEFAULT_LOCK_TIMEOUT_SECONDS",
    "DEFAULT_WAREHOUSE_PATH",
    "INSIGHTS_SCHEMA",
    "LOCK_TIMEOUT_VARIABLE",
    "SCHEMA",
    "AcrossAccounts",
    "Column",
    "DeletionGuardError",
    "EntitySync",
    "RejectedRecord",
    "SyncResult",
    "WarehouseBusyError",
    "WarehouseError",
    "WarehouseFiles",
    "WarehouseNotSyncedError",
    "WarehouseUnreadableError",
    "connect",
    "ensure_schema",
    "history_columns",
    "history_table",
    "one_row",
    "publish_across_accounts",
    "qualified",
    "read_high_water_mark",
    "table_columns",
    "transaction",
]
