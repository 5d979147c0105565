"""Sensors: one per command rule, and the alert sensor."""

import datetime as dt
from collections.abc import Collection, Sequence

import dagster as dg
import duckdb

from nexudus_assets.alerts import build_alert_sensor
from nexudus_assets.assets.insights import INSIGHTS_SCHEMA, insight_by_name
from nexudus_assets.jobs import COMMAND_OP
from nexudus_assets.resources import CommandLedgerResource, WarehouseResource
from nexudus_assets.warehouse import WarehouseError, WarehouseNotSyncedError
from nexudus_assets.warehouse.catalogue import read_catalogue
from nexudus_assets.writeback.execute import cooldown_key
from nexudus_assets.writeback.ledger import CommandLedger, LedgerError
from nexudus_assets.writeback.plan import check_rule
from nexudus_assets.writeback.rules import CommandRule, RuleError


def build_command_sensor(
    rule: CommandRule, job: dg.JobDefinition, minimum_interval_seconds: int = 60
) -> dg.SensorDefinition:
    entity = insight_by_name(rule.asset).entity
    assert entity is not None

    @dg.sensor(
        name=f"nexudus_rule_{rule.name}",
        job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description=(
            f"On each new materialization of `{rule.asset}`, asks `{job.name}` to run {rule.command} on its "
            f"records, less those the command ledger shows actioned with the same command and parameters in the "
            f"last {rule.cooldown_hours:g} h, or out of attempts."
        ),
    )
    def _rule_sensor(
        context: dg.SensorEvaluationContext, warehouse: WarehouseResource, ledger: CommandLedgerResource
    ) -> dg.SensorResult:
        latest = context.instance.fetch_materializations(dg.AssetKey(rule.asset), limit=1).records
        if not latest:
            return dg.SensorResult(skip_reason=f"{rule.asset} has not been materialized yet")
        storage_id = latest[0].storage_id
        if context.cursor and int(context.cursor) >= storage_id:
            return dg.SensorResult(skip_reason=f"no new materialization of {rule.asset}")
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        try:
            with warehouse.read_only_connection() as conn:
                ids = [
                    row[0]
                    for row in conn.execute(f"SELECT id FROM {INSIGHTS_SCHEMA}.{rule.asset} ORDER BY id").fetchall()
                ]
                catalogue = read_catalogue(conn, entity)
        except WarehouseNotSyncedError:
            return dg.SensorResult(skip_reason="the warehouse is not synced yet; the next tick looks again")
        except (duckdb.Error, WarehouseError) as exc:
            # Held read-write by someone while a run writes: the cursor stays, the next tick retries.
            return dg.SensorResult(skip_reason=f"the warehouse cannot be read now ({exc}); next tick retries")
        ledger_path = ledger.location(warehouse.database)
        blocked: set[int] = set()
        # No ledger yet: nothing is blocked. The command job decides whether one may be created.
        if ledger_path.exists():
            try:
                blocked = CommandLedger(ledger_path).blocked_ids(
                    cooldown_key(rule, entity),
                    cooldown=dt.timedelta(hours=rule.cooldown_hours),
                    max_attempts=rule.max_attempts,
                    now=now,
                )
            except LedgerError as exc:
                return dg.SensorResult(skip_reason=f"Not running: {exc}; the next tick retries")
        cursor = str(storage_id)
        if catalogue is not None:
            try:
                check_rule(rule, catalogue)
            except RuleError as exc:
                return dg.SensorResult(skip_reason=f"Not running. {exc}", cursor=cursor)
        pending = [record_id for record_id in ids if record_id not in blocked]
        if not pending:
            return dg.SensorResult(
                skip_reason=(
                    f"{len(ids)} record(s) in {rule.asset}, all actioned within the cooldown or out of attempts"
                ),
                cursor=cursor,
            )
        return dg.SensorResult(
            run_requests=[
                dg.RunRequest(
                    # One run per materialization, however often the daemon retries the tick.
                    run_key=f"{rule.name}:{storage_id}",
                    run_config={"ops": {COMMAND_OP: {"config": {"rule": rule.name, "record_ids": pending}}}},
                    tags={"nexudus/rule": rule.name, "nexudus/records": str(len(pending))},
                )
            ],
            cursor=cursor,
        )

    return _rule_sensor


def build_sensors(
    rules: Sequence[CommandRule],
    command_job: dg.JobDefinition,
    asset_keys: Collection[dg.AssetKey],
    job_names: Collection[str],
    minimum_interval_seconds: int | None = None,
) -> list[dg.SensorDefinition]:
    """`minimum_interval_seconds` overrides every sensor's own interval (60 s for rules, 30 s for alerts)."""
    interval = {"minimum_interval_seconds": minimum_interval_seconds} if minimum_interval_seconds else {}
    return [
        *(build_command_sensor(rule, command_job, **interval) for rule in rules),
        build_alert_sensor(asset_keys, job_names, **interval),
    ]
