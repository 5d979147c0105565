"""The code location: the environment read once into `Settings`, and everything built from it into one `defs`."""

import datetime as dt
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from nexudus_assets.assets.command_catalogue import command_catalogue
from nexudus_assets.assets.insights import INSIGHTS, insight_assets
from nexudus_assets.assets.raw import build_raw_assets
from nexudus_assets.assets.trends import build_account_metrics_daily, default_start_date
from nexudus_assets.checks import build_freshness_checks
from nexudus_assets.jobs import ASSET_JOBS, build_command_job
from nexudus_assets.resources import AlertWebhookResource, CommandLedgerResource, WarehouseResource
from nexudus_assets.schedules import account_metrics_schedule, build_schedules
from nexudus_assets.sensors import build_sensors
from nexudus_assets.settings import Settings
from nexudus_assets.writeback.rules import CommandRule, load_rules

#: The repository's root, as the code's own path gives it: a file's path below it is its path in git.
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
#: Insights whose `id` is a Nexudus record id: the ones a command rule can act on.
ACTIONABLE_ASSETS = {insight.name for insight in INSIGHTS if insight.entity is not None}


def build_resources(settings: Settings) -> dict[str, Any]:
    return {
        "nexudus_api": settings.nexudus_api,
        "warehouse": WarehouseResource(
            database=settings.duckdb_path, lock_timeout_seconds=settings.warehouse_lock_timeout_seconds
        ),
        "ledger": CommandLedgerResource(path=settings.ledger_path),
        "alerts": AlertWebhookResource(url=settings.alert_webhook_url),
    }


def resources_from_env() -> dict[str, Any]:
    """The resources as the environment configures them."""
    return build_resources(Settings.from_env())


def with_sync_freshness(raw_assets: Sequence[dg.AssetsDefinition], hours: float) -> list[dg.AssetsDefinition]:
    """Each raw asset fresh for `hours` after its last materialization, as the UI shows it.

    Dagster's daemon evaluates the policy and the asset pages show it; it alerts nobody. The
    `synced_recently` checks, run by the `nexudus_freshness` job, stay the ones that alert (through
    the alert sensor), on the same limit.
    """
    policy = dg.FreshnessPolicy.time_window(fail_window=dt.timedelta(hours=hours))
    return [
        asset.map_asset_specs(lambda spec: spec.replace_attributes(freshness_policy=policy)) for asset in raw_assets
    ]


def build_defs(
    resources: Mapping[str, Any], rules: Sequence[CommandRule], settings: Settings | None = None
) -> dg.Definitions:
    """`resources` without a `ledger` get the default one, beside the warehouse.

    `settings` gives the schedules, the freshness and drift limits, the sensors' interval and the
    first daily partition; the documented defaults when None.
    """
    settings = settings or Settings()
    resources = {"ledger": CommandLedgerResource(), **resources}
    commands_live = resources["nexudus_api"].commands_live
    command_job = build_command_job(rules, live=commands_live)
    assets = [
        *with_sync_freshness(build_raw_assets(settings.drift_limits), settings.max_sync_age_hours),
        command_catalogue,
        *insight_assets,
        build_account_metrics_daily(
            settings.metrics_start_date or default_start_date(resources["warehouse"], dt.datetime.now(dt.UTC).date())
        ),
    ]
    asset_keys = {key for asset in assets for key in asset.keys}
    with warnings.catch_warnings():
        # Dagster 1.13 marks the code references beta and warns on every load; the links are
        # metadata for the UI, which nothing here reads.
        warnings.simplefilter("ignore", dg.BetaWarning)
        # Each asset's page links to the file and line that define it: in git when configured.
        referenced_assets = dg.with_source_code_references(assets)
        if settings.source_git_url is not None:
            referenced_assets = dg.link_code_references_to_git(
                referenced_assets,
                git_url=settings.source_git_url,
                git_branch=settings.source_git_branch,
                file_path_mapping=dg.AnchorBasedFilePathMapping(
                    local_file_anchor=REPOSITORY_ROOT, file_anchor_path_in_repository=""
                ),
            )
    return dg.Definitions(
        assets=referenced_assets,
        asset_checks=build_freshness_checks(settings.max_sync_age_hours),
        jobs=[*ASSET_JOBS, command_job],
        schedules=[*build_schedules(settings), account_metrics_schedule],
        sensors=build_sensors(
            rules,
            command_job,
            asset_keys,
            {*(job.name for job in ASSET_JOBS), command_job.name, "__ASSET_JOB"},
            commands_live=commands_live,
            minimum_interval_seconds=settings.sensor_interval_seconds,
        ),
        resources=resources,
        executor=dg.in_process_executor,
    )


def load_defs(settings: Settings) -> dg.Definitions:
    """The code location as `settings` configure it, command rules included."""
    return build_defs(build_resources(settings), load_rules(settings.command_rules, ACTIONABLE_ASSETS), settings)


defs = load_defs(Settings.from_env())
