"""Schedules, running by default. Cron expressions come from the environment (UTC)."""

import os
from typing import Any

import dagster as dg

from nexudus_assets.assets.trends import account_metrics_daily
from nexudus_assets.jobs import nexudus_freshness, nexudus_full_refresh, nexudus_sync

#: What `dg.define_asset_job` returns: Dagster does not export its class.
AssetJob = Any

#: The daily figures on their own: one cheap query per day, no API call, so not in the hourly sync.
nexudus_account_metrics = dg.define_asset_job(
    name="nexudus_account_metrics",
    selection=[account_metrics_daily],
    description="The account's figures for one day (a partition), from the synced history. Calls no API.",
    executor_def=dg.in_process_executor,
)


def build_schedule(job: AssetJob, cron_variable: str, default_cron: str, what: str) -> dg.ScheduleDefinition:
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
    # Dagster derives the cadence from the daily partitions; each tick computes the day just ended,
    # after the midnight sync.
    dg.build_schedule_from_partitioned_job(
        nexudus_account_metrics,
        name="nexudus_account_metrics_schedule",
        hour_of_day=0,
        minute_of_hour=30,
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description="account_metrics_daily for the day that has just ended, daily at 00:30 UTC.",
    ),
]
