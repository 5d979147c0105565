"""Metadata every table-writing asset publishes: row count, column schema and a preview."""

from typing import Any

import dagster as dg
import duckdb

from nexudus_assets.warehouse import one_row

PREVIEW_ROWS = 10


def table_metadata(
    conn: duckdb.DuckDBPyConnection, table: str, *, where: str = "TRUE", schema: dg.TableSchema | None = None
) -> dict[str, Any]:
    """`schema` carries column descriptions where the caller has them; else DuckDB's types."""
    (rows,) = one_row(conn, f"SELECT count(*) FROM {table} WHERE {where}")
    if schema is None:
        columns = conn.execute(f"DESCRIBE {table}").fetchall()
        schema = dg.TableSchema(columns=[dg.TableColumn(name=name, type=kind) for name, kind, *_ in columns])
    cursor = conn.execute(f"SELECT * FROM {table} WHERE {where} ORDER BY 1 LIMIT {PREVIEW_ROWS}")
    names = [description[0] for description in cursor.description]
    return {
        "dagster/row_count": rows,
        "dagster/column_schema": schema,
        "preview": dg.MetadataValue.md(_markdown(names, cursor.fetchall())),
    }


def _markdown(names: list[str], rows: list[tuple[Any, ...]]) -> str:
    if not rows:
        return "_no rows_"

    def cell(value: Any) -> str:
        text = "" if value is None else str(value)
        return (text[:40] + "…" if len(text) > 40 else text).replace("|", "\\|").replace("\n", " ")

    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)
