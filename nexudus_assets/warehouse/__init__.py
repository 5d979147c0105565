"""The DuckDB warehouse: typed entity tables, staged syncs published in one transaction.

Pure Python over a caller-supplied DuckDB connection; no Dagster, no HTTP.
"""

from nexudus_assets.warehouse.connection import CATALOG, connect
from nexudus_assets.warehouse.schema import SCHEMA, Column, ensure_schema, qualified, table_columns, transaction
from nexudus_assets.warehouse.sync import (
    DeletionGuardError,
    EntitySync,
    RejectedRecord,
    SyncResult,
    read_high_water_mark,
)

__all__ = [
    "CATALOG",
    "connect",
    "SCHEMA",
    "Column",
    "DeletionGuardError",
    "EntitySync",
    "RejectedRecord",
    "SyncResult",
    "ensure_schema",
    "qualified",
    "read_high_water_mark",
    "table_columns",
    "transaction",
]
