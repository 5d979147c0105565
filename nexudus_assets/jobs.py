"""Jobs. Each runs in one process: DuckDB takes one writer, and the API budget is per process."""

from collections.abc import Sequence
from typing import Any

import dagster as dg
import duckdb
from pydantic import Field

from nexudus_assets.assets import command_catalogue, insights, raw, trends
from nexudus_assets.checks import freshness_check_keys
from nexudus_assets.names import API, LEDGER, PLAIN_NAMES, WAREHOUSE, AccountNames
from nexudus_assets.nexudus import ENTITIES, Entity
from nexudus_assets.warehouse import INSIGHTS_SCHEMA, WarehouseError, qualified
from nexudus_assets.writeback.execute import CommandReport, SeenRecord, run_rule, run_update
from nexudus_assets.writeback.ledger import LedgerError, open_ledger
from nexudus_assets.writeback.rules import CommandRule, RuleError, Scalar

#: A deployment with run retries on (deploy/dagster.yaml) retries these jobs once: they only read
#: Nexudus and rewrite the warehouse. The command job has no such tag: its commands cannot be undone.
RETRY_ONCE = {"dagster/max_retries": "1"}

SYNC_JOB = "nexudus_sync"
FULL_REFRESH_JOB = "nexudus_full_refresh"
FRESHNESS_JOB = "nexudus_freshness"
METRICS_JOB = "nexudus_account_metrics"


def build_asset_jobs(names: AccountNames) -> list[Any]:
    """Every job of the account (as `define_asset_job` makes them) but the command job, which is built
    from the command rules."""
    freshness_checks = dg.AssetSelection.checks(*freshness_check_keys(names))
    #: `synced_recently` always passes right after a sync: it runs on its own schedule instead.
    full_sync = dg.AssetSelection.groups(names.name(raw.GROUP), names.name(insights.GROUP)) - freshness_checks
    #: The command catalogue changes with Nexudus releases, not by the hour, and commands are checked
    #: against the live one before they run: the nightly full refresh keeps the stored copy current.
    sync = full_sync - dg.AssetSelection.assets(names.key(command_catalogue.NAME))
    full_refresh = {"ops": {names.name(entity.table): {"config": {"full_refresh": True}} for entity in ENTITIES}}
    metrics = dg.AssetSelection.assets(names.key(trends.NAME))
    # (job, selection, description, retried once, config)
    jobs: list[tuple[str, dg.AssetSelection, str, bool, dict[str, Any] | None]] = [
        (SYNC_JOB, sync, "Incremental sync of every entity, then the insights, with their checks.", True, None),
        (
            FULL_REFRESH_JOB,
            full_sync,
            "Reads every record and the command catalogue, marks the records deleted upstream, then rebuilds"
            " the insights.",
            True,
            full_refresh,
        ),
        (
            FRESHNESS_JOB,
            freshness_checks,
            "Only the `synced_recently` checks: notices a sync that stopped running. Calls no API.",
            True,
            None,
        ),
        # The daily figures on their own: one cheap query per day, no API call, so not in the hourly sync.
        (
            METRICS_JOB,
            metrics,
            "The account's figures per day (a partition, or a range of them in one run), from the synced history;"
            " days before the first sync reconstructed from the records' dates. Calls no API.",
            False,
            None,
        ),
    ]
    return [
        dg.define_asset_job(
            name=names.name(job),
            tags={**(RETRY_ONCE if retried else {}), **names.tags},
            selection=selection,
            description=description,
            config=config,
            executor_def=dg.in_process_executor,
        )
        for job, selection, description, retried, config in jobs
    ]


COMMAND_JOB = "nexudus_command"
COMMAND_OP = "run_nexudus_command"
#: On every run of the command job: "true" when NEXUDUS_COMMANDS_LIVE=true, so that its rules with
#: `live: true` send commands to Nexudus. A live run that started is the Dagster instance's
#: evidence that a ledger existed, should it go missing.
LIVE_TAG = "nexudus/live"
#: On a rule sensor's run request that will record instead of sending: why.
DRY_RUN_REASON_TAG = "nexudus/dry_run_reason"
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


def _seen_records(conn: Any, rule: CommandRule, entity: Entity) -> tuple[dict[int, SeenRecord], list[str]]:
    """The insight's rows by id, with each record's `updated_on` as the warehouse holds it, and its columns."""
    cursor = conn.execute(
        f"SELECT i.*, t.updated_on AS _seen_updated_on FROM {INSIGHTS_SCHEMA}.{rule.asset} AS i "
        f"LEFT JOIN {qualified(entity)} AS t USING (id)"
    )
    names = [column[0] for column in cursor.description]
    seen = {}
    for row in cursor.fetchall():
        values = dict(zip(names, row, strict=True))
        updated_on = values.pop("_seen_updated_on")
        seen[values["id"]] = SeenRecord(columns=values, updated_on=updated_on)
    return seen, names[:-1]


def earlier_live_run(instance: dg.DagsterInstance, names: AccountNames, this_run_id: str | None = None) -> str | None:
    """Evidence that the account's ledger existed: a live command run of the account (other than this one)."""
    records = instance.get_run_records(
        dg.RunsFilter(job_name=names.name(COMMAND_JOB), tags={LIVE_TAG: "true"}, statuses=_STARTED), limit=2
    )
    earlier = [record.dagster_run.run_id for record in records if record.dagster_run.run_id != this_run_id]
    return f"live command run {earlier[0]} of this Dagster instance" if earlier else None


def approved_config(rule: CommandRule) -> dict[str, Scalar | None]:
    """The insight config the rule acts on: the insight's defaults, with what the rule pins.

    RuleError when the rule pins a field the insight's config does not have.
    """
    config_type = insights.insight_by_name(rule.asset).config
    unknown = sorted(set(rule.insight_config) - set(config_type.model_fields))
    if unknown:
        raise RuleError(
            f"rule {rule.name!r}: insight_config names {', '.join(unknown)}, which {rule.asset} does not take; "
            f"it takes {', '.join(config_type.model_fields)}"
        )
    return config_type.model_validate(rule.insight_config).model_dump()


def _config_differs(rule: CommandRule, run: dg.DagsterRun, names: AccountNames) -> str | None:
    """How the run's config for the rule's insight differs from what the rule approves; None when it does not."""
    [group] = insights.insight_run_config({rule.asset: {}}, names)["ops"]
    ops: Any = run.run_config.get("ops", {})
    given = ops.get(group, {}).get("config", {}).get(rule.asset, {})
    used = insights.insight_by_name(rule.asset).config.model_validate(given).model_dump()
    approved = approved_config(rule)
    changed = sorted(name for name in approved if used.get(name) != approved[name])
    return ", ".join(f"{name}={used.get(name)!r} (approved: {approved[name]!r})" for name in changed) or None


def unapproved_reason(
    instance: dg.DagsterInstance, rule: CommandRule, materialization: dg.EventLogRecord, names: AccountNames
) -> str | None:
    """Why the rule must not act on this materialization of its insight; None when it may.

    Read from the run that made it, as the instance recorded the run's config at launch:
    materialization metadata can be reported by anyone with the UI, without a run, saying
    anything; a run's config is what its step computed with.
    """
    run = instance.get_run_by_id(materialization.run_id) if materialization.run_id else None
    if run is None:
        return f"this materialization of {rule.asset} was reported, not made by a run"
    differs = _config_differs(rule, run, names)
    return f"run {run.run_id[:8]} materialized {rule.asset} with {differs}" if differs else None


def unapproved_run_in_progress(instance: dg.DagsterInstance, rule: CommandRule, names: AccountNames) -> str | None:
    """A run going now with config the rule does not approve: once it has published (it does when
    it ends), what was read may be its table before its materialization is found."""
    going = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED])
    )
    key = names.key(rule.asset)
    for record in going:
        run = record.dagster_run
        if run.job_name == names.name(COMMAND_JOB) or (
            run.asset_selection is not None and key not in run.asset_selection
        ):
            continue
        differs = _config_differs(rule, run, names)
        if differs is not None:
            return f"run {run.run_id[:8]} may be rewriting {rule.asset} with {differs}"
    return None


def build_command_job(
    rules: Sequence[CommandRule], *, live: bool, names: AccountNames = PLAIN_NAMES
) -> dg.JobDefinition:
    """`live`: NEXUDUS_COMMANDS_LIVE as the code location loaded it for the account; it tags every run of the job."""
    by_name = {rule.name: rule for rule in rules}

    @dg.op(
        name=names.name(COMMAND_OP),
        description=(
            "Runs a rule's Nexudus command on the given records: a dry run unless NEXUDUS_COMMANDS_LIVE=true "
            "and the rule says `live: true`."
        ),
        required_resource_keys=names.resource_keys(API, WAREHOUSE, LEDGER),
    )
    def run_nexudus_command(context: dg.OpExecutionContext, config: CommandRunConfig) -> dg.Output[None]:
        nexudus_api, warehouse, ledger = names.api(context), names.warehouse(context), names.ledger(context)
        if nexudus_api.commands_live and context.run.tags.get(LIVE_TAG) != "true":
            raise dg.Failure(
                "Nothing was sent. Live commands are switched on for this run only; set NEXUDUS_COMMANDS_LIVE=true "
                "for the code location, so that its runs are tagged as live."
            )
        ledger_path = ledger.location(warehouse.database)
        try:
            # First, before anything can fail: a run tagged live has always opened (or made) the ledger.
            command_ledger = open_ledger(
                ledger_path,
                used_before_by=earlier_live_run(context.instance, names, context.run_id),
                account=nexudus_api.account(),
            )
            command_ledger.account_recorded()  # another account's ledger: refused before anything is read or sent
        except LedgerError as exc:
            raise dg.Failure(description=f"Nothing was sent. {exc}") from None
        rule = by_name.get(config.rule)
        if rule is None:
            raise dg.Failure(f"no command rule named {config.rule!r}; known: {', '.join(sorted(by_name)) or 'none'}")
        entity = insights.insight_by_name(rule.asset).entity
        assert entity is not None  # load_rules only admits insights of record ids
        key = names.key(rule.asset)
        latest = context.instance.fetch_materializations(key, limit=1).records
        refusal = (
            unapproved_reason(context.instance, rule, latest[0], names) if latest else f"{rule.asset} was never made"
        )
        try:
            with warehouse.read_only_connection() as conn:
                seen, columns = _seen_records(conn, rule, entity)
        except (duckdb.Error, WarehouseError) as exc:
            raise dg.Failure(
                description=f"Nothing was sent. {rule.asset} cannot be read to confirm the records: {exc}"
            ) from None
        # Read again after the table: a materialization recorded meanwhile may be of other config.
        now_latest = context.instance.fetch_materializations(key, limit=1).records
        if refusal is None and now_latest[0].storage_id != latest[0].storage_id:
            refusal = f"{rule.asset} was materialized again while it was read; the rule's sensor looks at it next"
        if refusal is not None:
            raise dg.Failure(description=f"Nothing was sent. Not approved by rule {rule.name!r}: {refusal}")
        dry_run_reason = rule.dry_run_reason(nexudus_api.commands_live)
        if dry_run_reason is not None:
            context.log.info(f"DRY RUN of rule {rule.name!r}: {dry_run_reason}; nothing is sent to Nexudus")
        try:
            with nexudus_api.get_client() as client:
                report: CommandReport
                if rule.update is not None:
                    report = run_update(
                        client,
                        command_ledger,
                        rule,
                        entity,
                        config.record_ids,
                        seen=seen,
                        columns=columns,
                        live=dry_run_reason is None,
                        run_id=context.run.run_id,
                    )
                else:
                    report = run_rule(
                        client,
                        command_ledger,
                        rule,
                        entity,
                        config.record_ids,
                        insight_ids=set(seen),
                        live=dry_run_reason is None,
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
            **({"dry_run_reason": dry_run_reason} if dry_run_reason is not None else {}),
            "calls": report.calls,
            "succeeded": len(report.succeeded),
            "failed": len(report.failed),
            "uncertain": len(report.uncertain),
            "unconfirmed": len(report.unconfirmed),
            "changed_since_the_insight": len(report.stale),
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
        if report.unconfirmed:
            context.log.warning(
                f"{rule.name}: {len(report.unconfirmed)} record(s) got an answer that does not say whether the "
                "command worked; recorded `uncertain`, they are not sent again within the cooldown"
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
        name=names.name(COMMAND_JOB),
        executor_def=dg.in_process_executor,
        description=run_nexudus_command.description,
        tags={LIVE_TAG: "true" if live else "false", **names.tags},
    )
    def nexudus_command() -> None:
        run_nexudus_command()

    return nexudus_command
