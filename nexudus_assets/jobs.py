"""Jobs. Each runs in one process: DuckDB takes one writer, and the API budget is per process."""

from collections.abc import Sequence

import dagster as dg
from pydantic import Field

from nexudus_assets.assets import insights, raw
from nexudus_assets.checks import freshness_checks
from nexudus_assets.nexudus import ENTITIES
from nexudus_assets.resources import NexudusResource, WarehouseResource
from nexudus_assets.writeback.execute import run_rule
from nexudus_assets.writeback.rules import CommandRule, RuleError

SYNC_SELECTION = dg.AssetSelection.groups(raw.GROUP, insights.GROUP)
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
    selection=SYNC_SELECTION,
    description="Reads every record, marks the ones deleted upstream, then rebuilds the insights.",
    config={"ops": {entity.table: {"config": {"full_refresh": True}} for entity in ENTITIES}},
    executor_def=dg.in_process_executor,
)

nexudus_freshness = dg.define_asset_job(
    name="nexudus_freshness",
    tags=RETRY_ONCE,
    selection=dg.AssetSelection.checks(*freshness_checks),
    description="Only the `synced_recently` checks: notices a sync that stopped running. Calls no API.",
    executor_def=dg.in_process_executor,
)

COMMAND_JOB = "nexudus_command"
COMMAND_OP = "run_nexudus_command"


class CommandRunConfig(dg.Config):
    rule: str = Field(description="The rule's name in the command rules file.")
    record_ids: list[int] = Field(description="The Nexudus record ids the rule's sensor singled out.")


def build_command_job(rules: Sequence[CommandRule]) -> dg.JobDefinition:
    by_name = {rule.name: rule for rule in rules}

    @dg.op(
        name=COMMAND_OP,
        description="Runs a rule's Nexudus command on the given records: dry run unless NEXUDUS_COMMANDS_LIVE=true.",
    )
    def run_nexudus_command(
        context: dg.OpExecutionContext, config: CommandRunConfig, nexudus: NexudusResource, warehouse: WarehouseResource
    ) -> dg.Output[None]:
        rule = by_name.get(config.rule)
        if rule is None:
            raise dg.Failure(f"no command rule named {config.rule!r}; known: {', '.join(sorted(by_name)) or 'none'}")
        entity = insights.insight_by_name(rule.asset).entity
        assert entity is not None  # load_rules only admits insights of record ids
        try:
            with nexudus.get_client() as client:
                report = run_rule(
                    client, warehouse.get_connection, rule, entity, config.record_ids,
                    live=nexudus.commands_live, run_id=context.run.run_id,
                )
        except RuleError as exc:
            raise dg.Failure(description=f"Nothing was sent. {exc}") from None
        summary = {
            "rule": rule.name,
            "command": report.command_key,
            "dry_run": report.dry_run,
            "calls": report.calls,
            "succeeded": len(report.succeeded),
            "failed": len(report.failed),
            "uncertain": len(report.uncertain),
            "left_alone_within_cooldown": len(report.blocked),
            "without_partner": len(report.left_over),
        }
        context.log.info(f"{'DRY RUN: ' if report.dry_run else ''}{summary}")
        if report.failed or report.uncertain:
            raise dg.Failure(
                description=(
                    f"{rule.name}: {len(report.failed)} record(s) failed and {len(report.uncertain)} may or may not "
                    f"have been changed; all recorded in nexudus.command_runs. " + " | ".join(report.messages[:5])
                ),
                metadata=summary,
            )
        return dg.Output(None, metadata=summary)

    @dg.job(name=COMMAND_JOB, executor_def=dg.in_process_executor, description=run_nexudus_command.description)
    def nexudus_command() -> None:
        run_nexudus_command()

    return nexudus_command
