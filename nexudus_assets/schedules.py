"""Schedules, running by default. Cron expressions come from the environment (UTC)."""

import os

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from nexudus_assets.jobs import nexudus_freshness, nexudus_full_refresh, nexudus_sync


def build_schedule(job: UnresolvedAssetJobDefinition, cron_variable: str, default_cron: str, what: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{job.name}_schedule",
        job=job,
        cron_schedule=os.environ.get(cron_variable, default_cron),
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{what} ({cron_variable}, default `{default_cron}` UTC).",
    )


schedules = [
    build_schedule(nexudus_sync, "NEXUDUS_SYNC_CRON", "0 * * * *", "Incremental sync, hourly"),
    build_schedule(
        nexudus_full_refresh, "NEXUDUS_FULL_REFRESH_CRON", "30 2 * * *", "Full refresh with deletion detection, nightly"
    ),
    build_schedule(
        nexudus_freshness, "NEXUDUS_FRESHNESS_CRON", "45 * * * *", "The `synced_recently` checks on their own, hourly"
    ),
]
