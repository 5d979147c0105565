"""Schedules, running by default, at the times the settings give (UTC)."""

import dagster as dg

from nexudus_assets.jobs import nexudus_account_metrics, nexudus_freshness, nexudus_full_refresh, nexudus_sync
from nexudus_assets.settings import Settings


def _cron_schedule(job_name: str, cron: str, description: str) -> dg.ScheduleDefinition:
    return dg.ScheduleDefinition(
        name=f"{job_name}_schedule",
        job_name=job_name,
        cron_schedule=cron,
        execution_timezone="UTC",
        default_status=dg.DefaultScheduleStatus.RUNNING,
        description=f"{description}: `{cron}` UTC.",
    )


def build_schedules(settings: Settings) -> list[dg.ScheduleDefinition]:
    return [
        _cron_schedule(nexudus_sync.name, settings.sync_cron, "Incremental sync (NEXUDUS_SYNC_CRON)"),
        _cron_schedule(
            nexudus_full_refresh.name,
            settings.full_refresh_cron,
            "Full refresh with deletion detection (NEXUDUS_FULL_REFRESH_CRON)",
        ),
        _cron_schedule(
            nexudus_freshness.name,
            settings.freshness_cron,
            "The `synced_recently` checks on their own (NEXUDUS_FRESHNESS_CRON)",
        ),
    ]


#: Dagster derives the cadence from the daily partitions; each tick computes the day just ended,
#: after the midnight sync.
account_metrics_schedule = dg.build_schedule_from_partitioned_job(
    nexudus_account_metrics,
    name="nexudus_account_metrics_schedule",
    hour_of_day=0,
    minute_of_hour=30,
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="account_metrics_daily for the day that has just ended, daily at 00:30 UTC.",
)
