"""Schedules, running by default. Cron expressions come from the environment (UTC)."""

import os

import dagster as dg

from nexudus_assets.jobs import nexudus_full_refresh, nexudus_sync

sync_schedule = dg.ScheduleDefinition(
    name="nexudus_sync_schedule",
    job=nexudus_sync,
    cron_schedule=os.environ.get("NEXUDUS_SYNC_CRON", "0 * * * *"),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Incremental sync (NEXUDUS_SYNC_CRON, default hourly).",
)

full_refresh_schedule = dg.ScheduleDefinition(
    name="nexudus_full_refresh_schedule",
    job=nexudus_full_refresh,
    cron_schedule=os.environ.get("NEXUDUS_FULL_REFRESH_CRON", "30 2 * * *"),
    execution_timezone="UTC",
    default_status=dg.DefaultScheduleStatus.RUNNING,
    description="Full refresh with deletion detection (NEXUDUS_FULL_REFRESH_CRON, default 02:30 nightly).",
)

schedules = [sync_schedule, full_refresh_schedule]
