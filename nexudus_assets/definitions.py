"""The code location: everything assembled into one `defs`."""

import os
from collections.abc import Sequence
from typing import Any

import dagster as dg

from nexudus_assets.assets.commands import nexudus_commands
from nexudus_assets.assets.insights import INSIGHTS, insight_assets
from nexudus_assets.assets.raw import raw_assets
from nexudus_assets.assets.trends import account_metrics_daily
from nexudus_assets.checks import asset_checks
from nexudus_assets.jobs import build_command_job, nexudus_freshness, nexudus_full_refresh, nexudus_sync
from nexudus_assets.nexudus import DEFAULT_BASE_URL
from nexudus_assets.resources import AlertWebhookResource, CommandLedgerResource, NexudusResource, WarehouseResource
from nexudus_assets.schedules import nexudus_account_metrics, schedules
from nexudus_assets.sensors import build_sensors
from nexudus_assets.warehouse import DEFAULT_LOCK_TIMEOUT_SECONDS, DEFAULT_WAREHOUSE_PATH, LOCK_TIMEOUT_VARIABLE
from nexudus_assets.writeback.rules import CommandRule, load_rules, rules_path

ASSETS = [*raw_assets, nexudus_commands, *insight_assets, account_metrics_daily]
#: Insights whose `id` is a Nexudus record id: the ones a command rule can act on.
ACTIONABLE_ASSETS = {insight.name for insight in INSIGHTS if insight.entity is not None}


def _env(name: str, default: Any) -> Any:
    """An EnvVar when the variable is set (resolved at run time, hidden in the UI), else the default."""
    return dg.EnvVar(name) if name in os.environ else default


def resources_from_env() -> dict[str, Any]:
    return {
        "nexudus": NexudusResource(
            base_url=_env("NEXUDUS_BASE_URL", DEFAULT_BASE_URL),
            username=dg.EnvVar("NEXUDUS_USERNAME"),
            password=dg.EnvVar("NEXUDUS_PASSWORD"),
            auth=_env("NEXUDUS_AUTH", "basic"),
            totp=_env("NEXUDUS_TOTP", None),
            page_size=dg.EnvVar.int("NEXUDUS_PAGE_SIZE") if "NEXUDUS_PAGE_SIZE" in os.environ else 1000,
            commands_live=os.environ.get("NEXUDUS_COMMANDS_LIVE", "").strip().lower() == "true",
        ),
        "warehouse": WarehouseResource(
            database=_env("NEXUDUS_DUCKDB_PATH", DEFAULT_WAREHOUSE_PATH),
            lock_timeout_seconds=(
                dg.EnvVar.int(LOCK_TIMEOUT_VARIABLE) if LOCK_TIMEOUT_VARIABLE in os.environ else DEFAULT_LOCK_TIMEOUT_SECONDS
            ),
        ),
        "ledger": CommandLedgerResource(path=_env("NEXUDUS_LEDGER_PATH", None)),
        "alerts": AlertWebhookResource(url=_env("NEXUDUS_ALERT_WEBHOOK_URL", None)),
    }


def build_defs(resources: dict[str, Any], rules: Sequence[CommandRule]) -> dg.Definitions:
    """`resources` without a `ledger` get the default one, beside the warehouse."""
    resources = {"ledger": CommandLedgerResource(), **resources}
    command_job = build_command_job(rules, live=resources["nexudus"].commands_live)
    jobs = [nexudus_sync, nexudus_full_refresh, nexudus_freshness, nexudus_account_metrics, command_job]
    asset_keys = {key for asset in ASSETS for key in asset.keys}
    return dg.Definitions(
        assets=ASSETS,
        asset_checks=asset_checks,
        jobs=jobs,
        schedules=schedules,
        sensors=build_sensors(
            rules, command_job, asset_keys, {job.name for job in jobs} | {"__ASSET_JOB"},
            minimum_interval_seconds=int(os.environ.get("NEXUDUS_SENSOR_INTERVAL_SECONDS") or 0) or None,
        ),
        resources=resources,
        executor=dg.in_process_executor,
    )


defs = build_defs(resources_from_env(), load_rules(rules_path(), ACTIONABLE_ASSETS))
