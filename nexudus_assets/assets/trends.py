"""`account_metrics_daily`: the account's figures per day, computed from history as of each day's end.

History (`raw.<table>_history`) says what the warehouse knew at any moment, so a past day can be
computed (or computed again) at any time and gives the same figures: a daily partition per day,
backfillable. The history starts at the first sync. A day that ended before it is reconstructed
from the records' own dates, in the version the first sync saw of each (contract start and
cancellation dates, pass used dates): what a record looked like before it was first synced is
unknown, its dates are not. Token minutes need versions, so they are unknown (NULL) on those days.
Each row and each partition's metadata say which way the day was computed (`reconstructed`).

A backfill over any range is one run: the days are written in one transaction, and each day's
materialization carries its own figures and row count.
"""

import datetime as dt
import warnings
from collections.abc import Sequence
from typing import Any

import dagster as dg
import duckdb

from nexudus_assets.assets.insights import column_schema, comment_columns
from nexudus_assets.assets.metadata import table_metadata
from nexudus_assets.assets.revenue import priced
from nexudus_assets.names import WAREHOUSE, AccountNames
from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES
from nexudus_assets.resources import WarehouseResource
from nexudus_assets.warehouse import INSIGHTS_SCHEMA, WarehouseError, history_table, one_row, transaction

GROUP = "nexudus_trends"
NAME = "account_metrics_daily"
TABLE = f"{INSIGHTS_SCHEMA}.{NAME}"
DESCRIPTION = (
    "The account per day (UTC) and currency, as the synced history knew it at the end of the day: monthly "
    "recurring revenue (each contract's price, or its plan's, per month of the plan's invoicing period), "
    "active, new and cancelled contracts, time passes used, and access token minutes "
    "consumed. One daily partition per day, from NEXUDUS_METRICS_START_DATE (by default a year before the first "
    "sync); days that ended before the first sync are reconstructed from the records' own dates (`reconstructed`). "
    "Access tokens have no currency: their minutes are on the row whose currency is NULL."
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
        "subtracted. Only on the row whose currency is NULL; NULL on reconstructed days (no versions then).",
    ),
    "contracts_value_unknown": (
        "BIGINT",
        "Of the active_contracts, those left out of monthly_recurring_revenue: neither the contract nor its plan "
        "has a price, or the plan's invoicing period is unknown (tariff_invoice_every and "
        "tariff_invoice_every_weeks give no whole number of months or weeks).",
    ),
    "reconstructed": (
        "BOOLEAN",
        "True: the day ended before the first sync, so its figures come from the records' own dates in the version "
        "the first sync saw: a contract counts as active from its start_date (or created_on) until its "
        "cancellation_date, one inactive or cancelled without a cancellation_date not at all (when it ended is "
        "unknown); passes_used by used_date. False: from the history as of the end of the day.",
    ),
}
_RECONSTRUCTED = list(COLUMNS).index("reconstructed")
DESCRIPTIONS = {name: description for name, (_, description) in COLUMNS.items()}
SCHEMA = column_schema(DESCRIPTIONS, {name: kind for name, (kind, _) in COLUMNS.items()})

#: The versions known at the end of the day: synced before it ended and not yet replaced by then.
_AS_OF_END = "_valid_from < $day_end AND (_valid_to IS NULL OR _valid_to >= $day_end)"


def _on_the_day(column: str) -> str:
    return f"({column} >= $day_start AND {column} < $day_end)"


#: The figures of the day from `contracts` (currency, monthly_value, start_date, cancellation_date,
#: running), `passes` (currency, used_date) and `minutes_consumed` (a query giving one number).
_FIGURES = """
    figures AS (
        SELECT currency,
               coalesce(sum(monthly_value) FILTER (WHERE running), 0) AS monthly_recurring_revenue,
               count(*) FILTER (WHERE running) AS active_contracts,
               count(*) FILTER (WHERE {started}) AS new_contracts,
               count(*) FILTER (WHERE {cancelled}) AS cancelled_contracts,
               0 AS passes_used, {no_minutes} AS minutes_consumed,
               count(*) FILTER (WHERE running AND monthly_value IS NULL) AS contracts_value_unknown
        FROM contracts GROUP BY currency
        UNION ALL
        SELECT currency, 0, 0, 0, 0, count(*) FILTER (WHERE {used}), {no_minutes}, 0
        FROM passes GROUP BY currency
        UNION ALL
        SELECT NULL, 0, 0, 0, 0, 0, ({minutes_consumed}), 0
    )
    SELECT CAST($day_start AS DATE), currency, sum(monthly_recurring_revenue), sum(active_contracts),
           sum(new_contracts), sum(cancelled_contracts), sum(passes_used), sum(minutes_consumed),
           sum(contracts_value_unknown), {reconstructed}
    FROM figures
    GROUP BY currency
    ORDER BY currency NULLS LAST"""


def _figures(minutes_consumed: str, *, reconstructed: bool) -> str:
    """On a reconstructed day no row knows token minutes: NULL, which the day's sum keeps."""
    return _FIGURES.format(
        no_minutes="CAST(NULL AS BIGINT)" if reconstructed else "0",
        started=_on_the_day("start_date"),
        cancelled=_on_the_day("cancellation_date"),
        used=_on_the_day("used_date"),
        minutes_consumed=minutes_consumed,
        reconstructed="true" if reconstructed else "false",
    )


_MINUTES_DROPPED_ON_THE_DAY = (
    "SELECT coalesce(sum(minutes_dropped) FILTER (WHERE minutes_dropped > 0 AND _valid_from >= $day_start), 0)"
    " FROM token_versions"
)

METRICS_SQL = f"""
    WITH contracts AS (
        SELECT tariff_currency_code AS currency, monthly_value, start_date, cancellation_date,
               coalesce(active, false) AND NOT coalesce(cancelled, false)
                   AND (start_date IS NULL OR start_date < $day_end) AS running
        FROM ({priced(history_table(COWORKER_CONTRACTS))})
        WHERE {_AS_OF_END}
    ),
    passes AS (
        SELECT time_pass_currency_code AS currency, used_date
        FROM {history_table(COWORKER_TIME_PASSES)}
        WHERE {_AS_OF_END}
    ),
    token_versions AS (
        SELECT _valid_from,
               lag(minutes_left) OVER (PARTITION BY id ORDER BY _valid_from) - minutes_left AS minutes_dropped
        FROM {history_table(ACCESS_TOKENS)}
        WHERE _valid_from < $day_end
    ),
    {_figures(_MINUTES_DROPPED_ON_THE_DAY, reconstructed=False)}"""


def _first_versions(source: str) -> str:
    """Each record in the first version a sync saw of it."""
    return f"SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY id ORDER BY _valid_from) = 1"


#: A day before the first sync. A contract cancelled with a date runs until that date, whatever its
#: flags said at the first sync; one without a date runs only if the first sync found it running.
RECONSTRUCTED_SQL = f"""
    WITH contracts AS (
        SELECT tariff_currency_code AS currency, monthly_value, start_date, cancellation_date,
               coalesce(start_date, created_on) < $day_end
                   AND CASE WHEN cancellation_date IS NOT NULL THEN cancellation_date >= $day_end
                            ELSE coalesce(active, false) AND NOT coalesce(cancelled, false) END AS running
        FROM ({_first_versions(f"({priced(history_table(COWORKER_CONTRACTS))})")})
    ),
    passes AS (
        SELECT time_pass_currency_code AS currency, used_date
        FROM ({_first_versions(history_table(COWORKER_TIME_PASSES))})
    ),
    {_figures("SELECT CAST(NULL AS BIGINT)", reconstructed=True)}"""

#: The three histories' sources: the days before the earliest version of any of them are reconstructed.
_SOURCES = (ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES)


def history_start(conn: duckdb.DuckDBPyConnection) -> dt.datetime | None:
    """When the first sync saw its first record (UTC): where the history starts; None before any."""
    earliest = " UNION ALL ".join(f"SELECT min(_valid_from) AS seen FROM {history_table(e)}" for e in _SOURCES)
    (start,) = one_row(conn, f"SELECT min(seen) FROM ({earliest})")
    return start if isinstance(start, dt.datetime) else None


def is_reconstructed(day: dt.date, start: dt.datetime | None) -> bool:
    """Whether the day ended before the history starts (or no history exists yet)."""
    return start is None or dt.datetime.combine(day + dt.timedelta(days=1), dt.time()) <= start


def write_days(conn: duckdb.DuckDBPyConnection, days: Sequence[dt.date]) -> dict[dt.date, list[tuple[Any, ...]]]:
    """Replace each day's rows with its figures, all days in one transaction; returns them by day."""
    columns = ", ".join(f"{name} {kind}" for name, (kind, _) in COLUMNS.items())
    written: dict[dt.date, list[tuple[Any, ...]]] = {}
    with transaction(conn):
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INSIGHTS_SCHEMA}")
        conn.execute(f"CREATE TABLE IF NOT EXISTS {TABLE} ({columns})")
        # A table written by an earlier version gains the columns added since, at its end: the
        # days it holds keep their figures and show NULL for what was not counted then.
        for name, (kind, _) in COLUMNS.items():
            conn.execute(f"ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS {name} {kind}")
        start = history_start(conn)
        for day in days:
            day_start = dt.datetime.combine(day, dt.time())
            parameters = {"day_start": day_start, "day_end": day_start + dt.timedelta(days=1)}
            conn.execute(f"DELETE FROM {TABLE} WHERE day = ?", [day])
            sql = RECONSTRUCTED_SQL if is_reconstructed(day, start) else METRICS_SQL
            conn.execute(f"INSERT INTO {TABLE} ({', '.join(COLUMNS)}) {sql}", parameters)
            written[day] = conn.execute(
                f"SELECT {', '.join(COLUMNS)} FROM {TABLE} WHERE day = ? ORDER BY currency NULLS LAST", [day]
            ).fetchall()
        comment_columns(conn, TABLE, DESCRIPTION, DESCRIPTIONS)
    return written


def figures_metadata(rows: list[tuple[Any, ...]]) -> dict[str, dg.MetadataValue]:
    """The day's figures as numbers the UI plots: revenue per currency, counts for the whole account.

    A figure unknown on the day (token minutes on a reconstructed day) is left out, not shown as 0.
    """
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
        known = [row[index] for row in rows if row[index] is not None]
        if known:
            metadata[name] = dg.MetadataValue.int(int(sum(known)))
    metadata["reconstructed"] = dg.MetadataValue.bool(any(row[_RECONSTRUCTED] for row in rows))
    metadata["dagster/partition_row_count"] = dg.MetadataValue.int(len(rows))
    return metadata


def default_start_date(warehouse: WarehouseResource, today: dt.date) -> str:
    """A year before the warehouse's first sync; a year before `today` when it has none (or cannot be
    read now). The partitions are fixed when the definitions load, so the first sync is looked up
    then, in the published snapshot, without waiting; once synced, every load finds the same date."""
    try:
        with warehouse.read_only_connection() as conn:
            start = history_start(conn)
    except (WarehouseError, duckdb.CatalogException):
        start = None
    return ((start.date() if start else today) - dt.timedelta(days=365)).isoformat()


def build_account_metrics_daily(start_date: str, names: AccountNames) -> dg.AssetsDefinition:
    """The asset, partitioned by day from `start_date` (YYYY-MM-DD); a backfill of any range is one run."""
    # `backfill_policy` is marked beta; the notice would print on every load of the code location,
    # about a choice made here on purpose.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", dg.BetaWarning)
        return _account_metrics_daily(start_date, names)


def _account_metrics_daily(start_date: str, names: AccountNames) -> dg.AssetsDefinition:
    @dg.asset(
        name=NAME,
        key_prefix=names.key_prefix,
        group_name=names.name(GROUP),
        description=DESCRIPTION,
        partitions_def=dg.DailyPartitionsDefinition(start_date=start_date, timezone="UTC"),
        backfill_policy=dg.BackfillPolicy.single_run(),
        deps=[names.key(entity.table) for entity in _SOURCES],
        kinds={"duckdb", "sql"},
        owners=["team:data"],
        metadata={"dagster/table_name": TABLE, "dagster/column_schema": SCHEMA},
        required_resource_keys=names.resource_keys(WAREHOUSE),
    )
    def account_metrics_daily(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        warehouse = names.warehouse(context)
        window = context.partition_time_window
        first, end = window.start.date(), window.end.date()
        days = [first + dt.timedelta(days=offset) for offset in range((end - first).days)]
        with warehouse.get_connection() as conn:
            written = write_days(conn, days)
            for day, rows in written.items():
                shown = table_metadata(conn, TABLE, where=f"day = DATE '{day.isoformat()}'", schema=SCHEMA)
                context.add_asset_metadata(
                    {"preview": shown["preview"], **figures_metadata(rows)}, partition_key=day.isoformat()
                )
            everything = table_metadata(conn, TABLE, schema=SCHEMA)
        reconstructed = sum(1 for rows in written.values() if any(row[_RECONSTRUCTED] for row in rows))
        context.log.info(f"{len(days)} day(s) from {first} to {days[-1]}; {reconstructed} reconstructed")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": everything["dagster/row_count"],
                "dagster/column_schema": SCHEMA,
            }
        )

    return account_metrics_daily
