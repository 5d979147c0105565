"""The code location: the environment read once into a `Deployment` of one or more accounts, and every
account's definitions built from its `Settings` into one `defs`."""

import datetime as dt
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from nexudus_assets.assets.across_accounts import build_across_accounts
from nexudus_assets.assets.command_catalogue import build_command_catalogue
from nexudus_assets.assets.insights import INSIGHTS, build_insight_assets
from nexudus_assets.assets.raw import build_raw_assets
from nexudus_assets.assets.trends import build_account_metrics_daily, default_start_date
from nexudus_assets.checks import build_freshness_checks
from nexudus_assets.jobs import METRICS_JOB, build_asset_jobs, build_command_job
from nexudus_assets.names import ALERTS, API, LEDGER, PLAIN_NAMES, WAREHOUSE, AccountNames
from nexudus_assets.resources import AlertWebhookResource, CommandLedgerResource, WarehouseResource
from nexudus_assets.schedules import build_schedules
from nexudus_assets.sensors import build_sensors
from nexudus_assets.settings import Deployment, Settings
from nexudus_assets.writeback.rules import CommandRule, load_rules

#: The repository's root, as the code's own path gives it: a file's path below it is its path in git.
REPOSITORY_ROOT = Path(__file__).resolve().parent.parent
#: Insights whose `id` is a Nexudus record id: the ones a command rule can act on.
ACTIONABLE_ASSETS = {insight.name for insight in INSIGHTS if insight.entity is not None}


def build_resources(settings: Settings) -> dict[str, Any]:
    """One account's resources, by their plain keys."""
    return {
        API: settings.nexudus_api,
        WAREHOUSE: WarehouseResource(
            database=settings.duckdb_path, lock_timeout_seconds=settings.warehouse_lock_timeout_seconds
        ),
        LEDGER: CommandLedgerResource(path=settings.ledger_path),
        ALERTS: AlertWebhookResource(url=settings.alert_webhook_url),
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


def with_code_references(assets: Sequence[dg.AssetsDefinition], settings: Settings) -> Sequence[Any]:
    """Each asset's page links to the file and line that define it: in git when configured."""
    with warnings.catch_warnings():
        # Dagster 1.13 marks the code references beta and warns on every load; the links are
        # metadata for the UI, which nothing here reads.
        warnings.simplefilter("ignore", dg.BetaWarning)
        referenced = dg.with_source_code_references(assets)
        if settings.source_git_url is None:
            return referenced
        return dg.link_code_references_to_git(
            referenced,
            git_url=settings.source_git_url,
            git_branch=settings.source_git_branch,
            file_path_mapping=dg.AnchorBasedFilePathMapping(
                local_file_anchor=REPOSITORY_ROOT, file_anchor_path_in_repository=""
            ),
        )


def build_account_defs(
    names: AccountNames, resources: Mapping[str, Any], rules: Sequence[CommandRule], settings: Settings
) -> dg.Definitions:
    """One account's assets, checks, jobs, schedules and sensors, under its names, with its
    `resources` (by their plain keys; without a `ledger`, the default one beside the warehouse)."""
    resources = {LEDGER: CommandLedgerResource(), **resources}
    commands_live = resources[API].commands_live
    command_job = build_command_job(rules, live=commands_live, names=names)
    asset_jobs = build_asset_jobs(names)
    [metrics_job] = [job for job in asset_jobs if job.name == names.name(METRICS_JOB)]
    assets = [
        *with_sync_freshness(build_raw_assets(settings.drift_limits, names), settings.max_sync_age_hours),
        build_command_catalogue(names),
        *build_insight_assets(names),
        build_account_metrics_daily(
            settings.metrics_start_date or default_start_date(resources[WAREHOUSE], dt.datetime.now(dt.UTC).date()),
            names,
        ),
    ]
    return dg.Definitions(
        assets=with_code_references(assets, settings),
        asset_checks=build_freshness_checks(settings.max_sync_age_hours, names),
        jobs=[*asset_jobs, command_job],
        schedules=build_schedules(settings, names, metrics_job),
        sensors=build_sensors(
            rules,
            {key for asset in assets for key in asset.keys},
            {*(job.name for job in asset_jobs), command_job.name},
            names,
            commands_live=commands_live,
            minimum_interval_seconds=settings.sensor_interval_seconds,
        ),
        resources={names.name(key): resource for key, resource in resources.items()},
    )


def build_defs(
    resources: Mapping[str, Any], rules: Sequence[CommandRule], settings: Settings | None = None
) -> dg.Definitions:
    """The code location of one account under the plain names: `resources` by their plain keys
    (without a `ledger`, the default one beside the warehouse).

    `settings` gives the schedules, the freshness and drift limits, the sensors' interval and the
    first daily partition; the documented defaults when None.
    """
    return in_one_process(build_account_defs(PLAIN_NAMES, resources, rules, settings or Settings()))


def in_one_process(defs: dg.Definitions) -> dg.Definitions:
    """Every run in one process, the UI's asset runs included: DuckDB takes one writer, and each
    account's request budget and sign-in are per process."""
    return dg.Definitions.merge(defs, dg.Definitions(executor=dg.in_process_executor))


def load_account_defs(names: AccountNames, settings: Settings) -> dg.Definitions:
    """One account as `settings` configure it, command rules included."""
    rules = load_rules(settings.command_rules, ACTIONABLE_ASSETS)
    return build_account_defs(names, build_resources(settings), rules, settings)


def load_defs(settings: Settings) -> dg.Definitions:
    """The code location of one account under the plain names, as `settings` configure it."""
    return in_one_process(load_account_defs(PLAIN_NAMES, settings))


def load_deployment_defs(deployment: Deployment) -> dg.Definitions:
    """The code location: every account of `deployment`, and with an accounts file the file across them."""
    accounts = [load_account_defs(account.names, account.settings) for account in deployment.accounts]
    if deployment.from_file:
        accounts.append(
            build_across_accounts(
                [(account.names, account.settings.duckdb_path) for account in deployment.accounts],
                deployment.across_accounts_path,
                deployment.across_accounts_cron,
            )
        )
    return in_one_process(dg.Definitions.merge(*accounts))


defs = load_deployment_defs(Deployment.from_env())
