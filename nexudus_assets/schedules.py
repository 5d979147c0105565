"""Schedules, running by default, at the times the settings give (UTC)."""

from typing import Any

import dagster as dg

from nexudus_assets.jobs import FRESHNESS_JOB, FULL_REFRESH_JOB, SYNC_JOB
from nexudus_assets.names import AccountNames
from nexudus_assets.settings import Settings


def cron_schedule(job_name: str, cron: str, description: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{job_name}_schedule",
        job_name=job_name,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{description}: `{cron}` UTC.",
    )


def build_schedules(settings: Settings, names: AccountNames, metrics_job: Any) -> list[Any]:
    """The account's schedules (`ScheduleDefinition`s, and the one Dagster builds from the partitioned
    daily-figures job `metrics_job`)."""
    return [
        cron_schedule(names.name(SYNC_JOB), settings.sync_cron, "Incremental sync (NEXUDUS_SYNC_CRON)"),
        cron_schedule(
            names.name(FULL_REFRESH_JOB),
            settings.full_refresh_cron,
            "Full refresh with deletion detection (NEXUDUS_FULL_REFRESH_CRON)",
        ),
        cron_schedule(
            names.name(FRESHNESS_JOB),
            settings.freshness_cron,
            "The `synced_recently` checks on their own (NEXUDUS_FRESHNESS_CRON)",
        ),
        # Dagster derives the cadence from the daily partitions; each tick computes the day just
        # ended, after the midnight sync.
        dg.build_schedule_from_partitioned_job(
            metrics_job,
            name=f"{metrics_job.name}_schedule",
            hour_of_day=0,
            minute_of_hour=30,
            default_status=dg.DefaultScheduleStatus.RUNNING,
            description="account_metrics_daily for the day that has just ended, daily at 00:30 UTC.",
        ),
    ]
