"""`account_metrics_daily`: the account's figures per day, computed from history as of each day's end.

History (`raw.<table>_history`) says what the warehouse knew at any moment, so a past day can be
computed (or computed again) at any time and gives the same figures: a daily partition per day,
backfillable. The history starts at the first sync; days before it have nothing to count.
"""

import datetime as dt
from typing import Any

import dagster as dg
import duckdb

from nexudus_assets.assets.insights import INSIGHTS_SCHEMA, column_schema, comment_columns
from nexudus_assets.assets.metadata import table_metadata
from nexudus_assets.assets.revenue import priced
from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES
from nexudus_assets.resources import WarehouseResource
from nexudus_assets.warehouse import history_table, transaction

GROUP = "nexudus_trends"
NAME = "account_metrics_daily"
TABLE = f"{INSIGHTS_SCHEMA}.{NAME}"
DESCRIPTION = (
    "The account per day (UTC) and currency, as the synced history knew it at the end of the day: monthly "
    "recurring revenue (each contract's price, or its plan's, per month of the plan's invoicing period), "
    "active, new and cancelled contracts, time passes used, and access token minutes "
    "consumed. One daily partition per day, from NEXUDUS_METRICS_START_DATE; days before the first sync "
    "have nothing to count. Access tokens have no currency: their minutes are on the row whose currency is NULL."
)

#: name -> (DuckDB type, description), in table order.
COLUMNS: dict[str, tuple[str, str]] = {
    "day": ("DATE", "The day (UTC) the figures are for; the partition key."),
    "currency": (
        "VARCHAR",
        "Currency code of the tariffs and time passes counted on this row; NULL for what has none (token minutes).",
    ),
    "monthly_recurring_revenue": (
        "DECIMAL(38,4)",
        "The sum of the monthly_value of the contracts active, uncancelled and started at the end of the day, in "
        "this currency: effective price (the contract's, or its plan's tariff_price when it has none) x quantity, "
        "/ N for a plan invoiced every N months, x 52 / 12 / N for one invoiced every N weeks. Contracts whose "
        "price or period is unknown are not in it: see contracts_value_unknown.",
    ),
    "active_contracts": ("BIGINT", "Contracts active, uncancelled and started at the end of the day."),
    "new_contracts": ("BIGINT", "Contracts whose start_date falls on the day."),
    "cancelled_contracts": ("BIGINT", "Contracts whose cancellation_date falls on the day."),
    "passes_used": ("BIGINT", "Time passes whose used_date falls on the day."),
    "minutes_consumed": (
        "BIGINT",
        "Access token minutes used on the day, as that day's syncs saw them: each drop in minutes_left between "
        "a token's consecutive versions, counted on the day the later version was synced; top-ups are not "
        "subtracted. Only on the row whose currency is NULL.",
    ),
    "contracts_value_unknown": (
        "BIGINT",
        "Of the active_contracts, those left out of monthly_recurring_revenue: neither the contract nor its plan "
        "has a price, or the plan's invoicing period is unknown (tariff_invoice_every and "
        "tariff_invoice_every_weeks give no whole number of months or weeks).",
    ),
}
DESCRIPTIONS = {name: description for name, (_, description) in COLUMNS.items()}
SCHEMA = column_schema(DESCRIPTIONS, {name: kind for name, (kind, _) in COLUMNS.items()})

#: The versions known at the end of the day: synced before it ended and not yet replaced by then.
_AS_OF_END = "_valid_from < $day_end AND (_valid_to IS NULL OR _valid_to >= $day_end)"


def _on_the_day(column: str) -> str:
    return f"({column} >= $day_start AND {column} < $day_end)"


METRICS_SQL = f"""
    WITH contracts AS (
        SELECT tariff_currency_code AS currency, monthly_value, start_date, cancellation_date,
               coalesce(active, false) AND NOT coalesce(cancelled, false)
                   AND (start_date IS NULL OR start_date < $day_end) AS running
        FROM ({priced(history_table(COWORKER_CONTRACTS))})
        WHERE {_AS_OF_END}
    ),
    token_versions AS (
        SELECT _valid_from,
               lag(minutes_left) OVER (PARTITION BY id ORDER BY _valid_from) - minutes_left AS minutes_dropped
        FROM {history_table(ACCESS_TOKENS)}
        WHERE _valid_from < $day_end
    ),
    figures AS (
        SELECT currency,
               coalesce(sum(monthly_value) FILTER (WHERE running), 0) AS monthly_recurring_revenue,
               count(*) FILTER (WHERE running) AS active_contracts,
               count(*) FILTER (WHERE {_on_the_day("start_date")}) AS new_contracts,
               count(*) FILTER (WHERE {_on_the_day("cancellation_date")}) AS cancelled_contracts,
               0 AS passes_used, 0 AS minutes_consumed,
               count(*) FILTER (WHERE running AND monthly_value IS NULL) AS contracts_value_unknown
        FROM contracts GROUP BY currency
        UNION ALL
        SELECT time_pass_currency_code, 0, 0, 0, 0, count(*) FILTER (WHERE {_on_the_day("used_date")}), 0, 0
        FROM {history_table(COWORKER_TIME_PASSES)}
        WHERE {_AS_OF_END}
        GROUP BY time_pass_currency_code
        UNION ALL
        SELECT NULL, 0, 0, 0, 0, 0,
               coalesce(sum(minutes_dropped) FILTER (WHERE minutes_dropped > 0 AND _valid_from >= $day_start), 0), 0
        FROM token_versions
    )
    SELECT CAST($day_start AS DATE), currency, sum(monthly_recurring_revenue), sum(active_contracts),
           sum(new_contracts), sum(cancelled_contracts), sum(passes_used), sum(minutes_consumed),
           sum(contracts_value_unknown)
    FROM figures
    GROUP BY currency
    ORDER BY currency NULLS LAST"""


def write_day(conn: duckdb.DuckDBPyConnection, day: dt.date) -> list[tuple[Any, ...]]:
    """Replace the day's rows with its figures, in one transaction; returns them."""
    start = dt.datetime.combine(day, dt.time())
    parameters = {"day_start": start, "day_end": start + dt.timedelta(days=1)}
    columns = ", ".join(f"{name} {kind}" for name, (kind, _) in COLUMNS.items())
    with transaction(conn):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INSIGHTS_SCHEMA}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})")
        # A table written by an earlier version gains the columns added since, at its end: the
        # days it holds keep their figures and show NULL for what was not counted then.
        for name, (kind, _) in COLUMNS.items():
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} {kind}")
        conn.execute(f"DELETE FROM {TABLE} WHERE day = ?", [day])
        conn.execute(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) {METRICS_SQL}", parameters)
        comment_columns(conn, TABLE, DESCRIPTION, DESCRIPTIONS)
    return conn.execute(
        f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE day = ? ORDER BY currency NULLS LAST", [day]
    ).fetchall()


def figures_metadata(rows: list[tuple[Any, ...]]) -> dict[str, dg.MetadataValue]:
    """The day's figures as numbers the UI plots: revenue per currency, counts for the whole account."""
    names = list(COLUMNS)
    metadata: dict[str, dg.MetadataValue] = {}
    for row in rows:
        values = dict(zip(names, row, strict=True))
        if values["currency"] is not None:
            metadata[f"monthly_recurring_revenue_{values['currency']}"] = dg.MetadataValue.float(
                float(values["monthly_recurring_revenue"])
            )
    counts = (
        "active_contracts",
        "new_contracts",
        "cancelled_contracts",
        "passes_used",
        "minutes_consumed",
        "contracts_value_unknown",
    )
    for name in counts:
        index = names.index(name)
        metadata[name] = dg.MetadataValue.int(int(sum(row[index] for row in rows)))
    return metadata


def build_account_metrics_daily(start_date: str) -> dg.AssetsDefinition:
    """The asset, partitioned by day from `start_date` (YYYY-MM-DD)."""

    @dg.asset(
        name=NAME,
        group_name=GROUP,
        description=DESCRIPTION,
        partitions_def=dg.DailyPartitionsDefinition(start_date=start_date, timezone="UTC"),
        deps=[dg.AssetKey(entity.table) for entity in (ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES)],
        kinds={"duckdb", "sql"},
        owners=["team:data"],
        metadata={"dagster/table_name": TABLE, "dagster/column_schema": SCHEMA},
    )
    def account_metrics_daily(context: dg.AssetExecutionContext, warehouse: WarehouseResource) -> dg.MaterializeResult:
        day = dt.date.fromisoformat(context.partition_key)
        with warehouse.get_connection() as conn:
            rows = write_day(conn, day)
            metadata = table_metadata(conn, TABLE, where=f"day = DATE '{day.isoformat()}'", schema=SCHEMA)
        return dg.MaterializeResult(metadata={**metadata, **figures_metadata(rows)})

    return account_metrics_daily
