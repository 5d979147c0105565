"""Jobs. Each runs in one process: DuckDB takes one writer, and the API budget is per process."""

from collections.abc import Sequence
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field

from nexudus_assets.assets import insights, raw, trends
from nexudus_assets.assets.command_catalogue import command_catalogue
from nexudus_assets.checks import FRESHNESS_CHECK_KEYS
from nexudus_assets.nexudus import ENTITIES
from nexudus_assets.resources import CommandLedgerResource, NexudusApiResource, WarehouseResource
from nexudus_assets.warehouse import WarehouseError
from nexudus_assets.writeback.execute import run_rule
from nexudus_assets.writeback.ledger import LedgerError, open_ledger
from nexudus_assets.writeback.rules import CommandRule, RuleError

#: `synced_recently` always passes right after a sync: it runs on its own schedule instead.
FULL_SYNC_SELECTION = dg.AssetSelection.groups(raw.GROUP, insights.GROUP) - dg.AssetSelection.checks(
    *FRESHNESS_CHECK_KEYS
)
#: The command catalogue changes with Nexudus releases, not by the hour, and commands are checked
#: against the live one before they run: the nightly full refresh keeps the stored copy current.
SYNC_SELECTION = FULL_SYNC_SELECTION - dg.AssetSelection.assets(command_catalogue)
#: A deployment with run retries on (deploy/dagster.yaml) retries these jobs once: they only read
#: Nexudus and rewrite the warehouse. The command job has no such tag: its commands cannot be undone.
RETRY_ONCE = {"dagster/max_retries": "1"}

nexudus_sync = dg.define_asset_job(
    name="nexudus_sync",
    tags=RETRY_ONCE,
    selection=SYNC_SELECTION,
    description="Incremental sync of every entity, then the insights, with their checks.",
    executor_def=dg.in_process_executor,
)

nexudus_full_refresh = dg.define_asset_job(
    name="nexudus_full_refresh",
    tags=RETRY_ONCE,
    selection=FULL_SYNC_SELECTION,
    description=(
        "Reads every record and the command catalogue, marks the records deleted upstream, then rebuilds the insights."
    ),
    config={"ops": {entity.table: {"config": {"full_refresh": True}} for entity in ENTITIES}},
    executor_def=dg.in_process_executor,
)

nexudus_freshness = dg.define_asset_job(
    name="nexudus_freshness",
    tags=RETRY_ONCE,
    selection=dg.AssetSelection.checks(*FRESHNESS_CHECK_KEYS),
    description="Only the `synced_recently` checks: notices a sync that stopped running. Calls no API.",
    executor_def=dg.in_process_executor,
)

#: The daily figures on their own: one cheap query per day, no API call, so not in the hourly sync.
nexudus_account_metrics = dg.define_asset_job(
    name="nexudus_account_metrics",
    selection=dg.AssetSelection.assets(trends.NAME),
    description="The account's figures for one day (a partition), from the synced history. Calls no API.",
    executor_def=dg.in_process_executor,
)

#: Every job but the command job, which is built from the command rules.
ASSET_JOBS = (nexudus_sync, nexudus_full_refresh, nexudus_freshness, nexudus_account_metrics)

COMMAND_JOB = "nexudus_command"
COMMAND_OP = "run_nexudus_command"
#: On every run of the command job: "true" when it sends commands to Nexudus. A live run that
#: started is the Dagster instance's evidence that a ledger existed, should it go missing.
LIVE_TAG = "nexudus/live"
_STARTED = [
    dg.DagsterRunStatus.STARTED,
    dg.DagsterRunStatus.SUCCESS,
    dg.DagsterRunStatus.FAILURE,
    dg.DagsterRunStatus.CANCELING,
    dg.DagsterRunStatus.CANCELED,
]


class CommandRunConfig(dg.Config):
    rule: str = Field(description="The rule's name in the command rules file.")
    record_ids: list[int] = Field(description="The Nexudus record ids the rule's sensor singled out.")


def _earlier_live_run(context: dg.OpExecutionContext) -> str | None:
    records = context.instance.get_run_records(
        dg.RunsFilter(job_name=COMMAND_JOB, tags={LIVE_TAG: "true"}, statuses=_STARTED), limit=2
    )
    earlier = [record.dagster_run.run_id for record in records if record.dagster_run.run_id != context.run_id]
    return f"live command run {earlier[0]} of this Dagster instance" if earlier else None


def build_command_job(rules: Sequence[CommandRule], *, live: bool) -> dg.JobDefinition:
    """`live`: NEXUDUS_COMMANDS_LIVE as the code location loaded it; it tags every run of the job."""
    by_name = {rule.name: rule for rule in rules}

    @dg.op(
        name=COMMAND_OP,
        description="Runs a rule's Nexudus command on the given records: dry run unless NEXUDUS_COMMANDS_LIVE=true.",
    )
    def run_nexudus_command(
        context: dg.OpExecutionContext,
        config: CommandRunConfig,
        nexudus_api: NexudusApiResource,
        warehouse: WarehouseResource,
        ledger: CommandLedgerResource,
    ) -> dg.Output[None]:
        if nexudus_api.commands_live and context.run.tags.get(LIVE_TAG) != "true":
            raise dg.Failure(
                "Nothing was sent. Live commands are switched on for this run only; set NEXUDUS_COMMANDS_LIVE=true "
                "for the code location, so that its runs are tagged as live."
            )
        ledger_path = ledger.location(warehouse.database)
        try:
            # First, before anything can fail: a run tagged live has always opened (or made) the ledger.
            command_ledger = open_ledger(ledger_path, used_before_by=_earlier_live_run(context))
        except LedgerError as exc:
            raise dg.Failure(description=f"Nothing was sent. {exc}") from None
        rule = by_name.get(config.rule)
        if rule is None:
            raise dg.Failure(f"no command rule named {config.rule!r}; known: {', '.join(sorted(by_name)) or 'none'}")
        entity = insights.insight_by_name(rule.asset).entity
        assert entity is not None  # load_rules only admits insights of record ids
        try:
            with warehouse.read_only_connection() as conn:
                rows = conn.execute(f"SELECT id FROM {insights.INSIGHTS_SCHEMA}.{rule.asset}").fetchall()
        except (duckdb.Error, WarehouseError) as exc:
            raise dg.Failure(
                description=f"Nothing was sent. {rule.asset} cannot be read to confirm the records: {exc}"
            ) from None
        try:
            with nexudus_api.get_client() as client:
                report = run_rule(
                    client,
                    command_ledger,
                    rule,
                    entity,
                    config.record_ids,
                    insight_ids={row[0] for row in rows},
                    live=nexudus_api.commands_live,
                    run_id=context.run.run_id,
                )
        except RuleError as exc:
            raise dg.Failure(description=f"Nothing was sent. {exc}") from None
        except LedgerError as exc:
            raise dg.Failure(
                description=f"Stopped before the next call. {exc}. The calls made so far are in the ledger."
            ) from None
        summary: dict[str, Any] = {
            "rule": rule.name,
            "command": report.command_key,
            "dry_run": report.dry_run,
            "calls": report.calls,
            "succeeded": len(report.succeeded),
            "failed": len(report.failed),
            "uncertain": len(report.uncertain),
            "left_alone_within_cooldown": len(report.blocked),
            "without_partner": len(report.left_over),
            "refused_not_in_insight": len(report.refused),
            "ledger": str(ledger_path),
        }
        context.log.info(f"{'DRY RUN: ' if report.dry_run else ''}{summary}")
        if report.refused:
            context.log.warning(
                f"{rule.name}: {len(report.refused)} record(s) asked for are not in {rule.asset} now and were refused: "
                f"{report.refused[:20]}"
            )
        if report.failed or report.uncertain:
            raise dg.Failure(
                description=(
                    f"{rule.name}: {len(report.failed)} record(s) failed and {len(report.uncertain)} may or may not "
                    f"have been changed; all recorded in the command ledger {ledger_path}. "
                    + " | ".join(report.messages[:5])
                ),
                metadata=summary,
            )
        return dg.Output(None, metadata=summary)

    @dg.job(
        name=COMMAND_JOB,
        executor_def=dg.in_process_executor,
        description=run_nexudus_command.description,
        tags={LIVE_TAG: "true" if live else "false"},
    )
    def nexudus_command() -> None:
        run_nexudus_command()

    return nexudus_command
