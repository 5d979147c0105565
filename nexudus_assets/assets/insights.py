"""What an operator acts on, as SQL over the live rows of the raw tables, one asset per insight.

Each insight is data (name, SQL, run config); `build_insight_asset` turns it into an asset
that rewrites `insights.<name>` in one transaction.
"""

# No `from __future__ import annotations`: Dagster reads the config annotation at decoration.
import datetime as dt
import time
from dataclasses import dataclass

import dagster as dg
from pydantic import Field

from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, CancellationReason, Entity
from nexudus_assets.assets.metadata import table_metadata
from nexudus_assets.resources import WarehouseResource
from nexudus_assets.warehouse import qualified, transaction

INSIGHTS_SCHEMA = "insights"
GROUP = "nexudus_insights"


class InsightConfig(dg.Config):
    as_of: str | None = Field(
        default=None, description="ISO timestamp (UTC) the insight is computed at; default: the run's start."
    )


class LowMinutesConfig(InsightConfig):
    min_minutes_left: int = Field(default=60, description="Tokens with fewer minutes left than this are listed.")


class RenewalWindowConfig(InsightConfig):
    renewal_window_days: int = Field(default=30, description="Renewals within this many days are listed.")


class PassExpiryConfig(InsightConfig):
    expiry_window_days: int = Field(default=14, description="Passes expiring within this many days are listed.")


class TokenExpiryConfig(InsightConfig):
    expiry_window_days: int = Field(default=7, description="Tokens expiring within this many days are listed.")


class CancellationWindowConfig(InsightConfig):
    cancellation_window_days: int = Field(default=30, description="Cancellations within this many days are listed.")


@dataclass(frozen=True)
class Insight:
    name: str
    description: str
    sources: tuple[Entity, ...]
    config: type[InsightConfig]
    #: A SELECT over the raw tables; `$as_of` and the config's fields are its parameters.
    sql: str
    #: Whose Nexudus record ids the `id` column holds; None when `id` is a grouping key
    #: (such a table cannot drive a command rule).
    entity: Entity | None


def _cancellation_reason_name(column: str) -> str:
    cases = " ".join(f"WHEN {reason.value} THEN '{reason.name}'" for reason in CancellationReason)
    return f"CASE {column} {cases} ELSE CAST({column} AS VARCHAR) END"


TOKENS, CONTRACTS, PASSES = (qualified(e) for e in (ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES))
_VALID_TOKEN = "(valid_from IS NULL OR valid_from <= $as_of) AND (valid_to IS NULL OR valid_to > $as_of)"

INSIGHTS: tuple[Insight, ...] = (
    Insight(
        name="low_minutes_access_tokens",
        description="Access tokens valid now with fewer than `min_minutes_left` minutes left: top them up.",
        sources=(ACCESS_TOKENS,),
        config=LowMinutesConfig,
        entity=ACCESS_TOKENS,
        sql=f"""
            SELECT id, access_code, description, business_id, minutes_included, minutes_left,
                   valid_from, valid_to, last_access
            FROM {TOKENS}
            WHERE _deleted_at IS NULL AND {_VALID_TOKEN} AND minutes_left < $min_minutes_left
            ORDER BY minutes_left, id""",
    ),
    Insight(
        name="expiring_access_tokens",
        description="Access tokens valid now whose validity ends within `expiry_window_days`.",
        sources=(ACCESS_TOKENS,),
        config=TokenExpiryConfig,
        entity=ACCESS_TOKENS,
        sql=f"""
            SELECT id, access_code, description, business_id, minutes_left, valid_to,
                   date_diff('day', $as_of, valid_to) AS days_until_expiry
            FROM {TOKENS}
            WHERE _deleted_at IS NULL AND {_VALID_TOKEN}
              AND valid_to <= $as_of + to_days($expiry_window_days)
            ORDER BY valid_to, id""",
    ),
    Insight(
        name="upcoming_contract_renewals",
        description="Active, uncancelled contracts renewing within `renewal_window_days`, with their monthly value.",
        sources=(COWORKER_CONTRACTS,),
        config=RenewalWindowConfig,
        entity=COWORKER_CONTRACTS,
        sql=f"""
            SELECT id, coworker_id, coworker_full_name, coworker_email, coworker_company_name,
                   tariff_id, tariff_name, tariff_currency_code AS currency, price, quantity,
                   price * quantity AS monthly_value, renewal_date,
                   date_diff('day', $as_of, renewal_date) AS days_until_renewal
            FROM {CONTRACTS}
            WHERE _deleted_at IS NULL AND active AND NOT cancelled
              AND renewal_date > $as_of AND renewal_date <= $as_of + to_days($renewal_window_days)
            ORDER BY renewal_date, id""",
    ),
    Insight(
        name="contracts_cancelling_soon",
        description="Contracts whose cancellation takes effect within `cancellation_window_days`, with the reason.",
        sources=(COWORKER_CONTRACTS,),
        config=CancellationWindowConfig,
        entity=COWORKER_CONTRACTS,
        sql=f"""
            SELECT id, coworker_id, coworker_full_name, coworker_email, tariff_id, tariff_name,
                   price * quantity AS monthly_value, cancellation_date, cancellation_reason,
                   {_cancellation_reason_name("cancellation_reason")} AS cancellation_reason_name,
                   cancellation_notes, date_diff('day', $as_of, cancellation_date) AS days_until_cancellation
            FROM {CONTRACTS}
            WHERE _deleted_at IS NULL
              AND cancellation_date > $as_of
              AND cancellation_date <= $as_of + to_days($cancellation_window_days)
            ORDER BY cancellation_date, id""",
    ),
    Insight(
        name="monthly_recurring_revenue_by_tariff",
        description="Monthly recurring revenue (price x quantity) of active, uncancelled contracts, per tariff.",
        sources=(COWORKER_CONTRACTS,),
        config=InsightConfig,
        entity=None,
        sql=f"""
            SELECT tariff_id AS id, any_value(tariff_name) AS tariff_name,
                   any_value(tariff_currency_code) AS currency, count(*) AS contracts,
                   sum(quantity) AS seats, sum(price * quantity) AS monthly_recurring_revenue
            FROM {CONTRACTS}
            WHERE _deleted_at IS NULL AND active AND NOT cancelled
              AND (start_date IS NULL OR start_date <= $as_of)
            GROUP BY tariff_id
            ORDER BY monthly_recurring_revenue DESC NULLS LAST, id""",
    ),
    Insight(
        name="expiring_time_passes",
        description="Unused time passes with uses left that expire within `expiry_window_days`.",
        sources=(COWORKER_TIME_PASSES,),
        config=PassExpiryConfig,
        entity=COWORKER_TIME_PASSES,
        sql=f"""
            SELECT id, coworker_id, coworker_full_name, business_id, time_pass_id, time_pass_name,
                   total_uses, remaining_uses, price, expire_date,
                   date_diff('day', $as_of, expire_date) AS days_until_expiry
            FROM {PASSES}
            WHERE _deleted_at IS NULL AND used = false AND (remaining_uses IS NULL OR remaining_uses > 0)
              AND expire_date > $as_of AND expire_date <= $as_of + to_days($expiry_window_days)
            ORDER BY expire_date, id""",
    ),
    Insight(
        name="time_pass_usage",
        description="Per time-pass product: passes sold, used, expired unused, and the share of uses consumed.",
        sources=(COWORKER_TIME_PASSES,),
        config=InsightConfig,
        entity=None,
        sql=f"""
            SELECT time_pass_id AS id, any_value(time_pass_name) AS time_pass_name, count(*) AS passes,
                   count(*) FILTER (WHERE used) AS used_passes,
                   count(*) FILTER (WHERE NOT coalesce(used, false) AND expire_date <= $as_of) AS expired_unused,
                   sum(total_uses) AS total_uses, sum(remaining_uses) AS remaining_uses,
                   round(1 - sum(remaining_uses) / nullif(sum(total_uses), 0), 4) AS usage_rate
            FROM {PASSES}
            WHERE _deleted_at IS NULL
            GROUP BY time_pass_id
            ORDER BY passes DESC, id""",
    ),
)


def insight_by_name(name: str) -> Insight:
    for insight in INSIGHTS:
        if insight.name == name:
            return insight
    raise KeyError(name)


def resolve_as_of(context: dg.AssetExecutionContext, config: InsightConfig) -> dt.datetime:
    """`as_of` from config, else the run's start, so every insight of a run shares one instant."""
    if config.as_of:
        moment = dt.datetime.fromisoformat(config.as_of)
        return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment
    record = context.instance.get_run_record_by_id(context.run.run_id)
    started = record.start_time if record and record.start_time else time.time()
    return dt.datetime.fromtimestamp(started, dt.UTC).replace(tzinfo=None)


def build_insight_asset(insight: Insight) -> dg.AssetsDefinition:
    config_type = insight.config

    @dg.asset(
        name=insight.name,
        group_name=GROUP,
        description=insight.description,
        deps=[dg.AssetKey(source.table) for source in insight.sources],
        kinds={"duckdb", "sql"},
        owners=["team:data"],
        metadata={"dagster/table_name": f"{INSIGHTS_SCHEMA}.{insight.name}"},
    )
    def _insight(context: dg.AssetExecutionContext, config: config_type, warehouse: WarehouseResource) -> dg.MaterializeResult:  # type: ignore[valid-type]
        as_of = resolve_as_of(context, config)
        parameters = {**config.model_dump(exclude={"as_of"}), "as_of": as_of}
        used = {name: value for name, value in parameters.items() if f"${name}" in insight.sql}
        table = f"{INSIGHTS_SCHEMA}.{insight.name}"
        with warehouse.get_connection() as conn:
            with transaction(conn):
                conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INSIGHTS_SCHEMA}")
                conn.execute(f"CREATE OR REPLACE TABLE {table} AS {insight.sql}", used)
            metadata = table_metadata(conn, table)
        return dg.MaterializeResult(
            metadata={
                **metadata,
                "as_of": dg.MetadataValue.text(as_of.isoformat()),
                "parameters": dg.MetadataValue.json({k: v for k, v in used.items() if k != "as_of"}),
            }
        )

    return _insight


insight_assets = [build_insight_asset(insight) for insight in INSIGHTS]
