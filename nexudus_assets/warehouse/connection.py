"""Opening the warehouse file."""

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb

#: The catalog name the file is attached under.
CATALOG = "warehouse"
#: DuckDB takes 80% of RAM by default; a sync needs little and spills to disk past the limit.
#: Keeping insertion order would hold a large upsert in memory; rows are keyed by id anyway.
DEFAULT_CONFIG: dict[str, str | bool] = {"memory_limit": "128MB", "preserve_insertion_order": False}


def connect(
    database: str, *, read_only: bool = False, config: Mapping[str, Any] | None = None
) -> duckdb.DuckDBPyConnection:
    """A connection to the warehouse file, attached as catalog `warehouse`.

    DuckDB names a file's catalog after the file, so `nexudus.duckdb` opened directly is
    catalog `nexudus`, and `nexudus.access_tokens` is then ambiguous with the schema
    `nexudus`. Attached under a fixed name, two-part names work whatever the file is called.
    Raises `duckdb.IOException` while another process holds the file for writing.
    """
    if not read_only:
        Path(database).parent.mkdir(parents=True, exist_ok=True)
    # Spills go beside the warehouse, not into whatever directory the process runs in.
    spill = {} if read_only else {"temp_directory": f"{database}.tmp"}
    conn = duckdb.connect(config={**DEFAULT_CONFIG, **spill, **(config or {})})
    try:
        escaped = database.replace("'", "''")
        conn.execute(f"ATTACH '{escaped}' AS {CATALOG}{' (READ_ONLY)' if read_only else ''}")
        conn.execute(f"USE {CATALOG}")
        conn.execute("SET enable_progress_bar = false")
    except BaseException:
        conn.close()
        raise
    return conn
