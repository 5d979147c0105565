"""`across_accounts`: one read-only DuckDB file over every account's published warehouse, for the analyst.

Built only when the deployment has an accounts file. It reads the published files, which never
stand in a sync's way, so its runs carry no account tag and run beside any account's.
"""

from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from nexudus_assets.assets import trends
from nexudus_assets.assets.insights import INSIGHTS
from nexudus_assets.jobs import RETRY_ONCE
from nexudus_assets.names import AccountNames
from nexudus_assets.nexudus import ENTITIES
from nexudus_assets.schedules import cron_schedule
from nexudus_assets.warehouse.across_accounts import publish_across_accounts

NAME = "across_accounts"
GROUP = "nexudus_across_accounts"
JOB = "nexudus_across_accounts"


def build_across_accounts(accounts: Sequence[tuple[AccountNames, str]], target: str, cron: str) -> dg.Definitions:
    """The asset over `accounts` (each account's names and warehouse path), writing `target`, with its
    job and its schedule (`cron`, UTC)."""
    tables = [*(entity.table for entity in ENTITIES), *(insight.name for insight in INSIGHTS), trends.NAME]

    @dg.asset(
        name=NAME,
        group_name=GROUP,
        description=(
            f"`{target}`: every account's insights, daily figures and live raw rows in one read-only DuckDB file,"
            " each table with a first column `account`; `main.accounts` says what each account contributed."
        ),
        deps=[names.key(table) for names, _ in accounts for table in tables],
        kinds={"duckdb"},
        owners=["team:data"],
    )
    def across_accounts(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        written = publish_across_accounts({str(names.account): Path(path) for names, path in accounts}, Path(target))
        if written.not_synced:
            context.log.warning(f"not synced yet, left out: {', '.join(written.not_synced)}")
        return dg.MaterializeResult(
            metadata={
                "path": dg.MetadataValue.path(str(written.target)),
                "accounts": dg.MetadataValue.json(list(written.included)),
                "not_synced": dg.MetadataValue.json(list(written.not_synced)),
                "rows": dg.MetadataValue.json({table: dict(rows) for table, rows in written.rows.items()}),
            }
        )

    job = dg.define_asset_job(
        name=JOB,
        tags=RETRY_ONCE,
        selection=dg.AssetSelection.assets(across_accounts),
        description="Rewrites the file across accounts from every account's published warehouse. Calls no API.",
        executor_def=dg.in_process_executor,
    )
    schedule = cron_schedule(JOB, cron, "The file across accounts (NEXUDUS_ACROSS_ACCOUNTS_CRON)")
    return dg.Definitions(assets=[across_accounts], jobs=[job], schedules=[schedule])
