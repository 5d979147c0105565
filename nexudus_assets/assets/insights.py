"""What an operator acts on, as SQL over the raw tables and their history, one asset per insight.

Each insight is data (name, SQL, run config, a description per column); `build_insights_asset`
turns the insights over the same raw tables into one step that rewrites each `insights.<name>`
in a transaction of its own and reports each as an asset of its own.
"""

# No `from __future__ import annotations`: Dagster reads the config annotation at decoration.
import datetime as dt
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field, create_model

from nexudus_assets.assets.metadata import table_metadata
from nexudus_assets.assets.revenue import MONEY_COLUMNS, priced
from nexudus_assets.names import PLAIN_NAMES, WAREHOUSE, AccountNames
from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, CancellationReason, Entity
from nexudus_assets.warehouse import INSIGHTS_SCHEMA, ensure_schema, history_table, qualified, transaction

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


class RunningOutConfig(InsightConfig):
    horizon_days: int = Field(default=7, description="Tokens whose minutes run out within this many days are listed.")
    lookback_days: int = Field(
        default=14, description="The consumption rate is measured over the versions synced in this many days."
    )


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
    #: What each column of the result means, in the order the SQL selects them.
    columns: Mapping[str, str]

    @property
    def table(self) -> str:
        return f"{INSIGHTS_SCHEMA}.{self.name}"


def _cancellation_reason_name(column: str) -> str:
    cases = " ".join(f"WHEN {reason.value} THEN '{reason.name}'" for reason in CancellationReason)
    return f"CASE {column} {cases} ELSE CAST({column} AS VARCHAR) END"


TOKENS, CONTRACTS, PASSES = (qualified(e) for e in (ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES))
TOKEN_HISTORY = history_table(ACCESS_TOKENS)
PRICED_CONTRACTS = f"({priced(CONTRACTS)})"
_VALID_TOKEN = "(valid_from IS NULL OR valid_from <= $as_of) AND (valid_to IS NULL OR valid_to > $as_of)"

#: Descriptions of the columns several insights share.
_ID = {
    ACCESS_TOKENS: "Nexudus Id of the access token.",
    COWORKER_CONTRACTS: "Nexudus Id of the coworker contract.",
    COWORKER_TIME_PASSES: "Nexudus Id of the coworker time pass.",
}
_TOKEN = {
    "access_code": "The code members type to get access (the WiFi code).",
    "description": "The token's description in Nexudus.",
    "business_id": "Id of the location (business) the token belongs to.",
    "minutes_included": "Minutes the token came with.",
    "minutes_left": "Minutes the token has left, as last synced.",
    "valid_from": "When the token starts being valid; NULL: from the start.",
    "valid_to": "When the token stops being valid; NULL: never.",
    "last_access": "When the token was last used.",
}
_CONTRACT = {
    "coworker_id": "Id of the coworker (member) holding the contract.",
    "coworker_full_name": "The coworker's full name.",
    "coworker_email": "The coworker's email address.",
    "coworker_company_name": "The coworker's company.",
    "tariff_id": "Id of the tariff (plan) the contract is on.",
    "tariff_name": "Name of the tariff.",
    **MONEY_COLUMNS,
}
_PASS = {
    "coworker_id": "Id of the coworker (member) holding the pass.",
    "coworker_full_name": "The coworker's full name.",
    "business_id": "Id of the location (business) the pass belongs to.",
    "time_pass_id": "Id of the time pass product.",
    "time_pass_name": "Name of the time pass product.",
    "total_uses": "Uses the pass came with.",
    "remaining_uses": "Uses left; NULL when the pass does not count uses.",
    "price": "What the pass cost.",
    "expire_date": "When the pass expires.",
}

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
        columns={
            "id": _ID[ACCESS_TOKENS],
            **{name: _TOKEN[name] for name in ("access_code", "description", "business_id", "minutes_included")},
            "minutes_left": "Minutes the token has left, as last synced: fewer than `min_minutes_left`.",
            **{name: _TOKEN[name] for name in ("valid_from", "valid_to", "last_access")},
        },
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
        columns={
            "id": _ID[ACCESS_TOKENS],
            **{name: _TOKEN[name] for name in ("access_code", "description", "business_id", "minutes_left")},
            "valid_to": "When the token stops being valid: within `expiry_window_days` of `as_of`.",
            "days_until_expiry": "Whole days from `as_of` to `valid_to`.",
        },
    ),
    Insight(
        name="upcoming_contract_renewals",
        description=(
            "Active, uncancelled contracts renewing within `renewal_window_days`, with their price, the plan's "
            "invoicing period and the monthly value that makes."
        ),
        sources=(COWORKER_CONTRACTS,),
        config=RenewalWindowConfig,
        entity=COWORKER_CONTRACTS,
        sql=f"""
            SELECT id, coworker_id, coworker_full_name, coworker_email, coworker_company_name,
                   tariff_id, tariff_name, tariff_currency_code AS currency, effective_price, price_source,
                   billing_period, quantity, monthly_value, renewal_date,
                   date_diff('day', $as_of, renewal_date) AS days_until_renewal
            FROM {PRICED_CONTRACTS}
            WHERE _deleted_at IS NULL AND active AND NOT cancelled
              AND renewal_date > $as_of AND renewal_date <= $as_of + to_days($renewal_window_days)
            ORDER BY renewal_date, id""",
        columns={
            "id": _ID[COWORKER_CONTRACTS],
            **{
                name: _CONTRACT[name]
                for name in (
                    "coworker_id",
                    "coworker_full_name",
                    "coworker_email",
                    "coworker_company_name",
                    "tariff_id",
                    "tariff_name",
                )
            },
            "currency": "Currency code of the tariff.",
            **{name: _CONTRACT[name] for name in ("effective_price", "price_source", "billing_period")},
            "quantity": "Units (seats) on the contract.",
            "monthly_value": _CONTRACT["monthly_value"],
            "renewal_date": "When the contract renews: within `renewal_window_days` after `as_of`.",
            "days_until_renewal": "Whole days from `as_of` to `renewal_date`.",
        },
    ),
    Insight(
        name="contracts_cancelling_soon",
        description="Contracts whose cancellation takes effect within `cancellation_window_days`, with the reason.",
        sources=(COWORKER_CONTRACTS,),
        config=CancellationWindowConfig,
        entity=COWORKER_CONTRACTS,
        sql=f"""
            SELECT id, coworker_id, coworker_full_name, coworker_email, tariff_id, tariff_name,
                   billing_period, monthly_value, cancellation_date, cancellation_reason,
                   {_cancellation_reason_name("cancellation_reason")} AS cancellation_reason_name,
                   cancellation_notes, date_diff('day', $as_of, cancellation_date) AS days_until_cancellation
            FROM {PRICED_CONTRACTS}
            WHERE _deleted_at IS NULL
              AND cancellation_date > $as_of
              AND cancellation_date <= $as_of + to_days($cancellation_window_days)
            ORDER BY cancellation_date, id""",
        columns={
            "id": _ID[COWORKER_CONTRACTS],
            **{
                name: _CONTRACT[name]
                for name in (
                    "coworker_id",
                    "coworker_full_name",
                    "coworker_email",
                    "tariff_id",
                    "tariff_name",
                    "billing_period",
                    "monthly_value",
                )
            },
            "cancellation_date": "When the cancellation takes effect: within `cancellation_window_days` after `as_of`.",
            "cancellation_reason": "The cancellation reason as Nexudus numbers it.",
            "cancellation_reason_name": "The cancellation reason by name; the number when Nexudus sent an unknown one.",
            "cancellation_notes": "Notes recorded with the cancellation.",
            "days_until_cancellation": "Whole days from `as_of` to `cancellation_date`.",
        },
    ),
    Insight(
        name="monthly_recurring_revenue_by_tariff",
        description=(
            "Monthly recurring revenue of active, uncancelled contracts, per tariff: each contract's price "
            "(its own, or the plan's when it has none) x quantity, per month of the plan's invoicing period. "
            "Contracts whose price or period is unknown are counted apart, not summed."
        ),
        sources=(COWORKER_CONTRACTS,),
        config=InsightConfig,
        entity=None,
        sql=f"""
            SELECT tariff_id AS id, any_value(tariff_name) AS tariff_name,
                   any_value(tariff_currency_code) AS currency,
                   string_agg(DISTINCT billing_period, ', ' ORDER BY billing_period) AS billing_period,
                   count(*) AS contracts, sum(quantity) AS seats,
                   sum(monthly_value) AS monthly_recurring_revenue,
                   count(*) FILTER (WHERE monthly_value IS NULL) AS contracts_value_unknown
            FROM {PRICED_CONTRACTS}
            WHERE _deleted_at IS NULL AND active AND NOT cancelled
              AND (start_date IS NULL OR start_date <= $as_of)
            GROUP BY tariff_id
            ORDER BY monthly_recurring_revenue DESC NULLS LAST, id""",
        columns={
            "id": "Id of the tariff (plan); not a record a command can act on.",
            "tariff_name": "Name of the tariff.",
            "currency": "Currency code of the tariff.",
            "billing_period": "The tariff's invoicing period as its contracts carry it (see the contracts' "
            "billing_period); several, comma-separated, when they disagree.",
            "contracts": "Active, uncancelled contracts on the tariff that have started by `as_of`.",
            "seats": "Their total quantity.",
            "monthly_recurring_revenue": "The sum of their monthly_value (effective price x quantity per month of "
            "the invoicing period), in the tariff's currency; contracts whose value is unknown are not in it "
            "(NULL when none is known).",
            "contracts_value_unknown": "Of the contracts, those left out of monthly_recurring_revenue: their price "
            "or invoicing period is unknown.",
        },
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
        columns={
            "id": _ID[COWORKER_TIME_PASSES],
            **{
                name: _PASS[name]
                for name in (
                    "coworker_id",
                    "coworker_full_name",
                    "business_id",
                    "time_pass_id",
                    "time_pass_name",
                    "total_uses",
                    "remaining_uses",
                    "price",
                )
            },
            "expire_date": "When the pass expires: within `expiry_window_days` after `as_of`.",
            "days_until_expiry": "Whole days from `as_of` to `expire_date`.",
        },
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
        columns={
            "id": "Id of the time pass product; not a record a command can act on.",
            "time_pass_name": "Name of the time pass product.",
            "passes": "Passes of the product sold (existing records).",
            "used_passes": "Of those, the ones marked used.",
            "expired_unused": "Of those, the ones not used that expired by `as_of`.",
            "total_uses": "Uses all the passes came with.",
            "remaining_uses": "Uses left on all the passes.",
            "usage_rate": "1 - remaining_uses / total_uses: the share of uses consumed; NULL without uses.",
        },
    ),
    Insight(
        name="access_tokens_running_out",
        description=(
            "Access tokens valid now whose minutes, at the rate they were used over the last `lookback_days` of "
            "their history, run out within `horizon_days`. The rate is the minutes used since the first version "
            "seen in the look-back, per day of that span (at least one day, so versions minutes apart give a "
            "cautious rate). Tokens with no use in the look-back, and tokens topped up in it (minutes_left or "
            "minutes_included rose), are not listed; nor are tokens already out of minutes (see "
            "low_minutes_access_tokens)."
        ),
        sources=(ACCESS_TOKENS,),
        config=RunningOutConfig,
        entity=ACCESS_TOKENS,
        sql=f"""
            WITH in_look_back AS (
                SELECT * FROM {TOKEN_HISTORY}
                WHERE _valid_to IS NULL OR _valid_to > $as_of - to_days($lookback_days)
            ),
            -- A token with one version in the look-back has that version as its live row: no
            -- minutes used, never listed. Leaving it out spares the window sorting every token.
            -- Of a token's versions only the current one is open, so one with several in the
            -- look-back has a closed one there; found that way, without grouping every token.
            -- A closed version alone is a deleted token's, which the live rows below leave out.
            changed AS (SELECT DISTINCT id FROM in_look_back WHERE _valid_to IS NOT NULL),
            looked_back AS (
                SELECT id, minutes_left, _valid_from,
                       minutes_left > lag(minutes_left) OVER by_token
                           OR minutes_included > lag(minutes_included) OVER by_token AS topped_up
                FROM in_look_back SEMI JOIN changed USING (id)
                WINDOW by_token AS (PARTITION BY id ORDER BY _valid_from)
            ),
            usage AS (
                SELECT id, arg_min(minutes_left, _valid_from) AS first_minutes_left,
                       greatest(min(_valid_from), $as_of - to_days($lookback_days)) AS observed_since,
                       coalesce(bool_or(topped_up), false) AS topped_up
                FROM looked_back
                GROUP BY id
            ),
            rates AS (
                SELECT t.*, u.first_minutes_left - t.minutes_left AS minutes_used, u.observed_since,
                       (u.first_minutes_left - t.minutes_left)
                           / greatest(date_diff('second', u.observed_since, $as_of) / 86400.0, 1.0) AS minutes_per_day
                FROM {TOKENS} AS t JOIN usage AS u USING (id)
                WHERE t._deleted_at IS NULL AND {_VALID_TOKEN} AND t.minutes_left > 0 AND NOT u.topped_up
                  AND u.first_minutes_left > t.minutes_left
            )
            SELECT id, access_code, description, business_id, minutes_included, minutes_left, minutes_used,
                   observed_since, round(minutes_per_day, 2) AS minutes_per_day,
                   round(minutes_left / minutes_per_day, 2) AS days_until_exhaustion,
                   $as_of + to_microseconds(CAST(minutes_left / minutes_per_day * 86400e6 AS BIGINT))
                       AS predicted_exhaustion_at,
                   valid_to
            FROM rates
            WHERE minutes_left / minutes_per_day <= $horizon_days
            ORDER BY predicted_exhaustion_at, id""",
        columns={
            "id": _ID[ACCESS_TOKENS],
            **{name: _TOKEN[name] for name in ("access_code", "description", "business_id", "minutes_included")},
            "minutes_left": "Minutes the token has left, as last synced.",
            "minutes_used": "Minutes used since `observed_since`: the first version in the look-back minus now.",
            "observed_since": "Start of the span the rate is measured over: the first version in the look-back, "
            "or the look-back's start if that version is older.",
            "minutes_per_day": "minutes_used per day since `observed_since` (the span counts as one day at least).",
            "days_until_exhaustion": "minutes_left / minutes_per_day: days until the minutes run out at that rate.",
            "predicted_exhaustion_at": "When the minutes run out at that rate (UTC): `as_of` + days_until_exhaustion.",
            "valid_to": _TOKEN["valid_to"],
        },
    ),
)


def insight_by_name(name: str) -> Insight:
    for insight in INSIGHTS:
        if insight.name == name:
            return insight
    raise KeyError(name)


def run_started(context: dg.AssetExecutionContext) -> dt.datetime:
    """When the run started (UTC): the default `as_of`, so every insight of a run shares one instant."""
    record = context.instance.get_run_record_by_id(context.run.run_id)
    started = record.start_time if record and record.start_time else time.time()
    return dt.datetime.fromtimestamp(started, dt.UTC).replace(tzinfo=None)


def resolve_as_of(config: InsightConfig, default: dt.datetime) -> dt.datetime:
    """`as_of` from config (UTC), else `default`."""
    if config.as_of:
        moment = dt.datetime.fromisoformat(config.as_of)
        return moment.astimezone(dt.UTC).replace(tzinfo=None) if moment.tzinfo else moment
    return default


def sql_parameters(insight: Insight, values: Mapping[str, Any]) -> dict[str, Any]:
    """The values the insight's SQL refers to (DuckDB refuses unused named parameters)."""
    return {name: value for name, value in values.items() if f"${name}" in insight.sql}


def column_schema(columns: Mapping[str, str], types: Mapping[str, str]) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=name, type=types[name], description=description)
            for name, description in columns.items()
        ]
    )


def comment_columns(conn: duckdb.DuckDBPyConnection, table: str, description: str, columns: Mapping[str, str]) -> None:
    """The descriptions in the database too, for whoever opens it without Dagster."""

    def quoted(text: str) -> str:
        return "'" + text.replace("'", "''") + "'"

    conn.execute(f"COMMENT ON TABLE {table} IS {quoted(description)}")
    for name, text in columns.items():
        conn.execute(f'COMMENT ON COLUMN {table}."{name}" IS {quoted(text)}')


def insight_schemas(insights: Sequence[Insight]) -> dict[str, dg.TableSchema]:
    """Each insight's columns with their descriptions, and the types its SQL gives them over an empty warehouse.

    Known before the first materialization, so the UI shows them from the start.
    """
    schemas = {}
    with duckdb.connect() as empty:
        ensure_schema(empty, describe_columns=False)
        for insight in insights:
            defaults = {name: field.default for name, field in insight.config.model_fields.items()}
            parameters = sql_parameters(insight, {**defaults, "as_of": dt.datetime(2000, 1, 1)})
            types = {name: kind for name, kind, *_ in empty.execute(f"DESCRIBE {insight.sql}", parameters).fetchall()}
            if list(types) != list(insight.columns):
                raise ValueError(
                    f"insight {insight.name}: its SQL returns the columns {list(types)}"
                    f" but describes {list(insight.columns)}"
                )
            schemas[insight.name] = column_schema(insight.columns, types)
    return schemas


def _group_name(sources: Sequence[Entity]) -> str:
    return "_".join(source.table for source in sources) + "_insights"


def insight_run_config(configs: Mapping[str, Mapping[str, Any]], names: AccountNames = PLAIN_NAMES) -> dict[str, Any]:
    """Run config setting the named insights' parameters: `{"low_minutes_access_tokens": {...}}`."""
    ops: dict[str, dict[str, Any]] = {}
    for name, values in configs.items():
        op = names.name(_group_name(insight_by_name(name).sources))
        ops.setdefault(op, {"config": {}})["config"][name] = dict(values)
    return {"ops": ops}


def build_insights_asset(
    insights: Sequence[Insight], schemas: Mapping[str, dg.TableSchema], names: AccountNames
) -> dg.AssetsDefinition:
    """The insights over one set of sources, computed in one step but kept separate assets.

    One step per source: an ERROR check that fails on one raw table blocks its insights only.
    The step is subsettable, so each insight can still be materialized on its own.
    """
    sources = insights[0].sources
    name = _group_name(sources)
    fields: dict[str, Any] = {
        insight.name: (insight.config, Field(default_factory=insight.config, description=insight.description))
        for insight in insights
    }
    config_type = create_model(f"{names.name(name).title().replace('_', '')}Config", __base__=dg.Config, **fields)

    @dg.multi_asset(
        name=names.name(name),
        specs=[
            dg.AssetSpec(
                names.key(insight.name),
                group_name=names.name(GROUP),
                description=insight.description,
                deps=[names.key(source.table) for source in insight.sources],
                kinds={"duckdb", "sql"},
                owners=["team:data"],
                metadata={"dagster/table_name": insight.table, "dagster/column_schema": schemas[insight.name]},
                skippable=True,
            )
            for insight in insights
        ],
        can_subset=True,
        description=f"The insights over {', '.join(source.table for source in sources)}, one transaction each.",
        required_resource_keys=names.resource_keys(WAREHOUSE),
    )
    def _insights(context: dg.AssetExecutionContext, config: config_type) -> Iterator[dg.MaterializeResult]:
        warehouse = names.warehouse(context)
        selected = [insight for insight in insights if names.key(insight.name) in context.selected_asset_keys]
        results: list[dg.MaterializeResult] = []
        started = run_started(context)
        with warehouse.get_connection() as conn:
            for insight in selected:
                values = getattr(config, insight.name)
                as_of = resolve_as_of(values, started)
                used = sql_parameters(insight, {**values.model_dump(exclude={"as_of"}), "as_of": as_of})
                with transaction(conn):
                    conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INSIGHTS_SCHEMA}")
                    conn.execute(f"CREATE OR REPLACE TABLE {insight.table} AS {insight.sql}", used)
                    comment_columns(conn, insight.table, insight.description, insight.columns)
                metadata = table_metadata(conn, insight.table, schema=schemas[insight.name])
                results.append(
                    dg.MaterializeResult(
                        asset_key=names.key(insight.name),
                        metadata={
                            **metadata,
                            "as_of": dg.MetadataValue.text(as_of.isoformat()),
                            "parameters": dg.MetadataValue.json({k: v for k, v in used.items() if k != "as_of"}),
                        },
                    )
                )
        # Reported once the tables are committed. The run publishes them when it ends; a rule
        # sensor waits for that before it reads them (`WarehouseResource.has_unpublished_changes`).
        yield from results

    return _insights


_SCHEMAS = insight_schemas(INSIGHTS)


def build_insight_assets(names: AccountNames) -> list[dg.AssetsDefinition]:
    """One multi-asset per set of sources, over the insights of those sources."""
    return [
        build_insights_asset([insight for insight in INSIGHTS if insight.sources == sources], _SCHEMAS, names)
        for sources in dict.fromkeys(insight.sources for insight in INSIGHTS)
    ]
