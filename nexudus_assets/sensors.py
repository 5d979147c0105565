"""Sensors: one per command rule, and the alert sensor."""

import datetime as dt
import json
from collections.abc import Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb

from nexudus_assets.alerts import build_alert_sensor
from nexudus_assets.assets.insights import insight_by_name
from nexudus_assets.jobs import (
    COMMAND_JOB,
    COMMAND_OP,
    DRY_RUN_REASON_TAG,
    approved_config,
    earlier_live_run,
    unapproved_reason,
    unapproved_run_in_progress,
)
from nexudus_assets.names import ALERTS, LEDGER, PLAIN_NAMES, WAREHOUSE, AccountNames
from nexudus_assets.nexudus import Entity
from nexudus_assets.warehouse import INSIGHTS_SCHEMA, WarehouseBusyError, WarehouseError, WarehouseNotSyncedError
from nexudus_assets.warehouse.catalogue import read_catalogue
from nexudus_assets.writeback.execute import cooldown_key, update_key
from nexudus_assets.writeback.ledger import LedgerError, existing_ledger
from nexudus_assets.writeback.plan import FieldUpdate, changes_for, check_rule, check_update
from nexudus_assets.writeback.rules import CommandRule, RuleError


@dataclass
class RuleSensorState:
    """A rule sensor's cursor: the last materialization dealt with, and the trouble last alerted."""

    #: Storage id of the insight's last materialization dealt with.
    after: int | None = None
    #: What stops the rule now, as last alerted (None: it runs); a recovery is alerted when it clears.
    trouble: str | None = None

    @classmethod
    def loads(cls, cursor: str | None) -> "RuleSensorState":
        if not cursor:
            return cls()
        if cursor.isdigit():  # the cursor before it held the trouble too
            return cls(after=int(cursor))
        return cls(**json.loads(cursor))

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Trouble:
    """Why a rule cannot run. `kind` decides whether it is news: one alert per kind until it clears."""

    kind: str
    text: str


def build_command_sensor(
    rule: CommandRule,
    *,
    commands_live: bool,
    names: AccountNames = PLAIN_NAMES,
    minimum_interval_seconds: int = 60,
) -> dg.SensorDefinition:
    """`commands_live`: NEXUDUS_COMMANDS_LIVE as the code location loaded it for the account."""
    insight = insight_by_name(rule.asset)
    entity = insight.entity
    assert entity is not None
    approved_config(rule)  # a rule pinning config the insight does not take fails the definitions
    update_fields = check_update(rule, entity, insight.columns) if rule.update is not None else None
    what = f"set {', '.join(rule.update)} by PUT" if rule.update is not None else f"run {rule.command}"
    dry_run_reason = rule.dry_run_reason(commands_live)
    mode = f"Dry runs only ({dry_run_reason})." if dry_run_reason is not None else "LIVE: sends to Nexudus."

    job_name = names.name(COMMAND_JOB)
    key = names.key(rule.asset)

    @dg.sensor(
        name=names.name(f"nexudus_rule_{rule.name}"),
        # By name: a sensor holding the job's definition is rebuilt when the definitions bind
        # the job's resources, and Dagster 1.13 then warns that sensor owners are in beta.
        job_name=job_name,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description=(
            f"On each new materialization of `{rule.asset}` made with the config the rule approves, asks "
            f"`{job_name}` to {what} on its records, less those the command ledger shows actioned the same way in "
            f"the last {rule.cooldown_hours:g} h, or out of attempts. Alerts when it cannot run, and when it can again."
            f" {mode}"
        ),
        required_resource_keys=names.resource_keys(WAREHOUSE, LEDGER, ALERTS),
    )
    def _rule_sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        warehouse, ledger, alerts = names.warehouse(context), names.ledger(context), names.alerts(context)
        state = RuleSensorState.loads(context.cursor)

        def finish(
            trouble: Trouble | None, skip: str | None, *, after: int | None, requests: Sequence[dg.RunRequest] = ()
        ) -> dg.SensorResult:
            """Alert a new trouble or a recovery; the cursor moves only once the alert is delivered."""
            try:
                if trouble is not None and trouble.kind != state.trouble:
                    alerts.send(
                        names.alert(f"Nexudus write-back rule {rule.name} cannot run: {trouble.text}"), context.log
                    )
                elif trouble is None and state.trouble is not None:
                    alerts.send(names.alert(f"Nexudus write-back rule {rule.name} runs again."), context.log)
            except RuntimeError as undelivered:
                return dg.SensorResult(skip_reason=f"{skip or trouble}; the alert was not delivered ({undelivered})")
            next_state = RuleSensorState(after=after, trouble=trouble.kind if trouble else None)
            return dg.SensorResult(run_requests=list(requests), skip_reason=skip, cursor=next_state.dumps())

        latest = context.instance.fetch_materializations(key, limit=1).records
        if not latest:
            return dg.SensorResult(skip_reason=f"{rule.asset} has not been materialized yet")
        storage_id = latest[0].storage_id
        if state.after is not None and state.after >= storage_id:
            return dg.SensorResult(skip_reason=f"no new materialization of {rule.asset}")
        refusal = unapproved_reason(context.instance, rule, latest[0], names)
        if refusal is not None:
            # Past it: this materialization is never acted on. The next approved one may be.
            trouble = Trouble(f"unapproved:{storage_id}", f"{refusal}; nothing is sent for it")
            return finish(trouble, f"Not running. {trouble.text}", after=storage_id)
        if warehouse.has_unpublished_changes():
            # A run publishes once its execution ends, after recording its materializations:
            # until then the published table may be the one before this materialization.
            return dg.SensorResult(skip_reason="a run has not published the warehouse yet; the next tick looks again")
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        try:
            with warehouse.read_only_connection() as conn:
                rows = conn.execute(f"SELECT * FROM {INSIGHTS_SCHEMA}.{rule.asset} ORDER BY id")
                columns = [column[0] for column in rows.description]
                records = {row[0]: dict(zip(columns, row, strict=True)) for row in rows.fetchall()}
                catalogue = read_catalogue(conn, entity) if rule.command is not None else None
        except WarehouseNotSyncedError:
            return dg.SensorResult(skip_reason="the warehouse is not synced yet; the next tick looks again")
        except WarehouseBusyError as exc:
            # A moment's contention while a run publishes, not trouble: the next tick retries.
            return dg.SensorResult(skip_reason=f"the warehouse is busy now ({exc}); the next tick retries")
        except (duckdb.Error, WarehouseError) as exc:
            # The cursor stays: the next tick retries, and alerts nothing more until it works.
            trouble = Trouble("warehouse", f"the warehouse cannot be read ({exc})")
            return finish(trouble, f"Not running: {trouble.text}; the next tick retries", after=state.after)
        widening = unapproved_run_in_progress(context.instance, rule, names)
        if widening is not None:
            # What was read may be that run's table. Its materialization is alerted when it is recorded.
            return dg.SensorResult(skip_reason=f"Not yet: {widening}; the next tick looks again")
        try:
            blocked = _blocked(
                ledger.location(warehouse.database),
                earlier_live_run(context.instance, names),
                rule,
                entity,
                update_fields,
                records,
                now,
            )
        except LedgerError as exc:
            trouble = Trouble("ledger", str(exc))
            return finish(trouble, f"Not running: {exc}; the next tick retries", after=state.after)
        if catalogue is not None:
            try:
                check_rule(rule, catalogue)
            except RuleError as exc:
                return finish(Trouble("catalogue", str(exc)), f"Not running. {exc}", after=storage_id)
        pending = [record_id for record_id in records if record_id not in blocked]
        if not pending:
            skip = f"{len(records)} record(s) in {rule.asset}, all actioned within the cooldown or out of attempts"
            return finish(None, skip, after=storage_id)
        tags = {"nexudus/rule": rule.name, "nexudus/records": str(len(pending))}
        if dry_run_reason is not None:
            tags[DRY_RUN_REASON_TAG] = dry_run_reason
            context.log.info(f"{rule.name}: a dry run for {len(pending)} record(s): {dry_run_reason}")
        else:
            context.log.info(f"{rule.name}: a LIVE run for {len(pending)} record(s): commands go to Nexudus")
        request = dg.RunRequest(
            # One run per materialization, however often the daemon retries the tick.
            run_key=f"{rule.name}:{storage_id}",
            run_config={"ops": {names.name(COMMAND_OP): {"config": {"rule": rule.name, "record_ids": pending}}}},
            tags=tags,
        )
        return finish(None, None, after=storage_id, requests=[request])

    return _rule_sensor


def _blocked(
    ledger_path: Path,
    live_run: str | None,
    rule: CommandRule,
    entity: Entity,
    update_fields: Sequence[FieldUpdate] | None,
    records: Mapping[int, Mapping[str, Any]],
    now: dt.datetime,
) -> set[int]:
    """The records the ledger says to leave alone now; LedgerError when it cannot be read, or is missing
    although `live_run` (a live command run of the account) recorded in it."""
    command_ledger = existing_ledger(ledger_path, used_before_by=live_run)
    if command_ledger is None:
        return set()  # no ledger yet, and none expected: nothing is blocked
    cooldown = dt.timedelta(hours=rule.cooldown_hours)
    if update_fields is None:
        return command_ledger.blocked_ids(
            cooldown_key(rule, entity), cooldown=cooldown, max_attempts=rule.max_attempts, now=now
        )
    keys = {}
    for record_id, row in records.items():
        try:
            keys[record_id] = update_key(entity, changes_for(rule, entity, update_fields, record_id, row))
        except RuleError:
            continue  # requested all the same: the job refuses it, records why and says so
    return command_ledger.blocked_each(keys, cooldown=cooldown, max_attempts=rule.max_attempts, now=now)


def build_sensors(
    rules: Sequence[CommandRule],
    asset_keys: Collection[dg.AssetKey],
    job_names: Collection[str],
    names: AccountNames,
    *,
    commands_live: bool,
    minimum_interval_seconds: int | None = None,
) -> list[dg.SensorDefinition]:
    """The account's sensors; `minimum_interval_seconds` overrides every sensor's own interval (60 s for
    rules, 30 s for alerts)."""
    interval = {"minimum_interval_seconds": minimum_interval_seconds} if minimum_interval_seconds else {}
    return [
        *(build_command_sensor(rule, commands_live=commands_live, names=names, **interval) for rule in rules),
        build_alert_sensor(asset_keys, job_names, names, **interval),
    ]
