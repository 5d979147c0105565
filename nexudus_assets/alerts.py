"""The alert sensor: failed asset checks, their recoveries, and failed runs, posted to a webhook."""

import datetime as dt
import json
from collections.abc import Collection

import dagster as dg
from dagster._core.event_api import RunStatusChangeRecordsFilter

from nexudus_assets.resources import AlertWebhookResource

#: How many events the alert sensor reads per tick; the rest wait for the next tick.
EVENTS_PER_TICK = 200
#: On its first tick the alert sensor looks back this far, not over the instance's whole history.
FIRST_LOOK_BACK = dt.timedelta(hours=24)


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
