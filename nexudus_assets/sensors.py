"""Sensors: one per command rule, and one that alerts on failed checks and failed runs."""

import datetime as dt
import json
from collections.abc import Collection, Sequence

import dagster as dg
import duckdb
from dagster._core.event_api import RunStatusChangeRecordsFilter

from nexudus_assets.assets.insights import INSIGHTS_SCHEMA, insight_by_name
from nexudus_assets.jobs import COMMAND_OP
from nexudus_assets.resources import AlertWebhookResource, WarehouseResource
from nexudus_assets.warehouse.catalogue import read_catalogue
from nexudus_assets.warehouse.ledger import blocked_ids
from nexudus_assets.writeback.plan import check_rule
from nexudus_assets.writeback.rules import CommandRule, RuleError

#: How many events the alert sensor reads per tick; the rest wait for the next tick.
EVENTS_PER_TICK = 200
#: On its first tick the alert sensor looks back this far, not over the instance's whole history.
FIRST_LOOK_BACK = dt.timedelta(hours=24)


def build_command_sensor(rule: CommandRule, job: dg.JobDefinition) -> dg.SensorDefinition:
    entity = insight_by_name(rule.asset).entity
    assert entity is not None

    @dg.sensor(
        name=f"nexudus_rule_{rule.name}",
        job=job,
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=60,
        description=(
            f"On each new materialization of `{rule.asset}`, asks `{job.name}` to run {rule.command} on its "
            f"records, less those actioned in the last {rule.cooldown_hours:g} h or out of attempts."
        ),
    )
    def _rule_sensor(context: dg.SensorEvaluationContext, warehouse: WarehouseResource) -> dg.SensorResult:
        latest = context.instance.fetch_materializations(dg.AssetKey(rule.asset), limit=1).records
        if not latest:
            return dg.SensorResult(skip_reason=f"{rule.asset} has not been materialized yet")
        storage_id = latest[0].storage_id
        if context.cursor and int(context.cursor) >= storage_id:
            return dg.SensorResult(skip_reason=f"no new materialization of {rule.asset}")
        now = dt.datetime.now(dt.UTC).replace(tzinfo=None)
        try:
            with warehouse.read_only_connection() as conn:
                ids = [row[0] for row in conn.execute(f"SELECT id FROM {INSIGHTS_SCHEMA}.{rule.asset} ORDER BY id").fetchall()]
                blocked = blocked_ids(
                    conn, rule.name, cooldown=dt.timedelta(hours=rule.cooldown_hours),
                    max_attempts=rule.max_attempts, now=now,
                )
                catalogue = read_catalogue(conn, entity)
        except duckdb.Error as exc:
            # A run holds the file (DuckDB has one writer): the cursor stays, the next tick retries.
            return dg.SensorResult(skip_reason=f"the warehouse cannot be read now ({type(exc).__name__}); next tick retries")
        cursor = str(storage_id)
        if catalogue is not None:
            try:
                check_rule(rule, catalogue)
            except RuleError as exc:
                return dg.SensorResult(skip_reason=f"Not running. {exc}", cursor=cursor)
        pending = [record_id for record_id in ids if record_id not in blocked]
        if not pending:
            return dg.SensorResult(
                skip_reason=f"{len(ids)} record(s) in {rule.asset}, all actioned within the cooldown or out of attempts",
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


def _summary(metadata: dict) -> str:
    parts = []
    for key, value in metadata.items():
        shown = getattr(value, "value", value)
        parts.append(f"{key}: {', '.join(map(str, shown)) if isinstance(shown, list) else shown}")
    return "; ".join(parts)


#: Where the alert sensor records its progress after each alert, in the instance's storage.
PROGRESS_KEY = "nexudus_alerts.progress"


def _newest_state(cursor: str | None, stored: dict[str, str]) -> dict:
    """The further on of the tick cursor and the progress stored after the last alert sent."""
    states = [json.loads(value) for value in (cursor, stored.get(PROGRESS_KEY)) if value]
    if not states:
        return {"after": None, "failing": []}
    return max(states, key=lambda state: state["after"] or 0)


def build_alert_sensor(asset_keys: Collection[dg.AssetKey], job_names: Collection[str]) -> dg.SensorDefinition:
    watched_assets = set(asset_keys)
    watched_jobs = set(job_names)

    @dg.sensor(
        name="nexudus_alerts",
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=30,
        description=(
            "Posts one alert per failed asset check evaluation (WARN or ERROR) and per failed run to "
            "NEXUDUS_ALERT_WEBHOOK_URL, and one recovery when a failing check passes again."
        ),
    )
    def nexudus_alerts(context: dg.SensorEvaluationContext, alerts: AlertWebhookResource) -> dg.SensorResult:
        # The state is the last event handled and the checks failing now. The daemon saves it as
        # the cursor at the end of a tick; a daemon killed mid-tick would lose it and send the
        # tick's alerts again, so it is also written to the instance after every alert sent.
        state = _newest_state(context.cursor, context.instance.run_storage.get_cursor_values({PROGRESS_KEY}))
        failing = set(state["failing"])
        since = None if state["after"] else (dt.datetime.now(dt.UTC) - FIRST_LOOK_BACK).timestamp()
        # Dagster 1.13 has no fetch_* query for check evaluations; run failures have one.
        records = list(
            context.instance.get_event_records(
                dg.EventRecordsFilter(
                    event_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, after_cursor=state["after"], after_timestamp=since
                ),
                limit=EVENTS_PER_TICK,
                ascending=True,
            )
        )
        records += context.instance.fetch_run_status_changes(
            RunStatusChangeRecordsFilter(
                event_type=dg.DagsterEventType.RUN_FAILURE, after_storage_id=state["after"], after_timestamp=since
            ),
            limit=EVENTS_PER_TICK,
            ascending=True,
        ).records
        records.sort(key=lambda record: record.storage_id)
        sent = 0
        undelivered = None
        for record in records[:EVENTS_PER_TICK]:
            entry = record.event_log_entry
            text, now_failing = None, failing
            evaluation = entry.asset_check_evaluation
            if evaluation is not None and evaluation.asset_key in watched_assets:
                name = f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}"
                if not evaluation.passed:
                    now_failing = failing | {name}
                    text = (
                        f":warning: Nexudus check failed: {name} ({evaluation.severity.value}) in run "
                        f"{entry.run_id[:8]}. {_summary(evaluation.metadata)}"
                    )
                elif name in failing:
                    now_failing = failing - {name}
                    text = f":white_check_mark: Nexudus check recovered: {name} passes again (run {entry.run_id[:8]})."
            elif entry.dagster_event_type == dg.DagsterEventType.RUN_FAILURE and entry.job_name in watched_jobs:
                reason = (entry.dagster_event.message or "").splitlines()[0] if entry.dagster_event else ""
                text = f":x: Nexudus run failed: {entry.job_name} (run {entry.run_id[:8]}). {reason}"
            if text:
                try:
                    alerts.send(text, context.log)
                except RuntimeError as exc:
                    undelivered = str(exc)
                    break
                sent += 1
            failing = now_failing
            state["after"] = record.storage_id
            if text:
                state["failing"] = sorted(failing)
                context.instance.run_storage.set_cursor_values({PROGRESS_KEY: json.dumps(state)})
        state["failing"] = sorted(failing)
        skip = f"{sent} alert(s) sent" + (f"; stopped: {undelivered}, next tick retries" if undelivered else "")
        return dg.SensorResult(skip_reason=skip, cursor=json.dumps(state))

    return nexudus_alerts


def build_sensors(
    rules: Sequence[CommandRule], command_job: dg.JobDefinition, asset_keys: Collection[dg.AssetKey],
    job_names: Collection[str],
) -> list[dg.SensorDefinition]:
    return [*(build_command_sensor(rule, command_job) for rule in rules), build_alert_sensor(asset_keys, job_names)]
