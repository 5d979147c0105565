"""The alert sensor: failed asset checks, their recoveries, and failed runs, posted to a webhook.

It walks finished runs in the order the instance recorded their ends (`fetch_run_status_changes`,
whose storage ids every instance storage orders the same way, the run-sharded SQLite one
included) and reads each run's own check evaluations. Its state is that position, the position
inside the run being read, and the checks failing now.
"""

import datetime as dt
import json
from collections.abc import Collection, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import dagster as dg

from nexudus_assets.names import ALERTS, PLAIN_NAMES, AccountNames

#: How many finished runs the alert sensor reads per tick; the rest wait for the next tick.
RUNS_PER_TICK = 50
#: On its first tick the alert sensor looks back this far, not over the instance's whole history.
FIRST_LOOK_BACK = dt.timedelta(hours=24)
ALERT_SENSOR = "nexudus_alerts"
#: Dagster's job for assets materialized from the UI: its runs are the account's when they materialize its assets.
ASSET_JOB = "__ASSET_JOB"
RunEnd = Literal[dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE, dg.DagsterEventType.RUN_CANCELED]
#: Run ends whose check evaluations are read; only a failure is itself alerted.
FINISHED: tuple[RunEnd, ...] = (
    dg.DagsterEventType.RUN_SUCCESS,
    dg.DagsterEventType.RUN_FAILURE,
    dg.DagsterEventType.RUN_CANCELED,
)


@dataclass
class AlertState:
    #: Storage id of the last run end read to its end; None before the first tick.
    after: int | None = None
    #: The checks failing as of `after`.
    failing: list[str] = field(default_factory=list)
    #: The run being read and how many of its alerts were dealt with, when a tick stopped inside it.
    run_id: str | None = None
    handled: int = 0

    @classmethod
    def newest(cls, *texts: str | None) -> "AlertState":
        """The furthest on of the tick cursor and the progress stored after the last alert sent."""
        states = [cls(**json.loads(text)) for text in texts if text]
        if not states:
            return cls()
        return max(states, key=lambda state: (state.after or 0, state.handled))

    def dumps(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


@dataclass(frozen=True)
class Alert:
    text: str
    #: The checks failing once this alert is sent.
    failing: frozenset[str]


def _summary(metadata: Mapping[str, Any]) -> str:
    parts = []
    for key, value in metadata.items():
        shown = getattr(value, "value", value)
        parts.append(f"{key}: {', '.join(map(str, shown)) if isinstance(shown, list) else shown}")
    return "; ".join(parts)


def _finished_runs(instance: dg.DagsterInstance, after: int | None) -> list[dg.EventLogRecord]:
    """Run ends after `after`, oldest first, with no gap however the per-type reads were cut."""
    since = None if after is not None else (dt.datetime.now(dt.UTC) - FIRST_LOOK_BACK).timestamp()
    records: list[dg.EventLogRecord] = []
    horizon: int | None = None
    for event_type in FINISHED:
        found = instance.fetch_run_status_changes(
            dg.RunStatusChangeRecordsFilter(event_type=event_type, after_storage_id=after, after_timestamp=since),
            limit=RUNS_PER_TICK,
            ascending=True,
        ).records
        records += found
        if len(found) == RUNS_PER_TICK:
            # This type has more after its last record: nothing later may be read yet.
            last = found[-1].storage_id
            horizon = last if horizon is None else min(horizon, last)
    records.sort(key=lambda record: record.storage_id)
    return [record for record in records if horizon is None or record.storage_id <= horizon]


def progress_key(names: AccountNames) -> str:
    """Where the account's alert sensor records its progress after each alert, in the instance's storage."""
    return f"{names.name(ALERT_SENSOR)}.progress"


def build_alert_sensor(
    asset_keys: Collection[dg.AssetKey],
    job_names: Collection[str],
    names: AccountNames = PLAIN_NAMES,
    minimum_interval_seconds: int = 30,
) -> dg.SensorDefinition:
    """Alerts for the account's `asset_keys` and `job_names`, and for the UI's runs of its assets."""
    watched_assets = set(asset_keys)
    watched_jobs = set(job_names)
    progress = progress_key(names)

    def is_watched_run(instance: dg.DagsterInstance, run_end: dg.EventLogRecord) -> bool:
        job_name = run_end.event_log_entry.job_name
        if job_name in watched_jobs:
            return True
        if job_name != ASSET_JOB:
            return False
        run = instance.get_run_by_id(run_end.run_id)
        selection = run.asset_selection if run is not None else None
        return selection is None or not watched_assets.isdisjoint(selection)

    def alerts_of_run(
        instance: dg.DagsterInstance, run_end: dg.EventLogRecord, failing: frozenset[str]
    ) -> Iterator[Alert]:
        """The run's alerts in order: each failed check, each recovery, then the run's own failure."""
        run_id = run_end.run_id
        evaluations = instance.get_records_for_run(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        for record in evaluations.records:
            evaluation = record.event_log_entry.asset_check_evaluation
            if evaluation is None or evaluation.asset_key not in watched_assets:
                continue
            name = f"{evaluation.asset_key.to_user_string()}.{evaluation.check_name}"
            if not evaluation.passed:
                failing = failing | {name}
                yield Alert(
                    names.alert(
                        f"Nexudus check failed: {name} ({evaluation.severity.value}) in run {run_id[:8]}. "
                        f"{_summary(evaluation.metadata)}"
                    ),
                    failing,
                )
            elif name in failing:
                failing = failing - {name}
                yield Alert(names.alert(f"Nexudus check recovered: {name} passes again (run {run_id[:8]})."), failing)
        entry = run_end.event_log_entry
        if entry.dagster_event_type == dg.DagsterEventType.RUN_FAILURE and is_watched_run(instance, run_end):
            reason = (entry.dagster_event.message or "").splitlines()[0] if entry.dagster_event else ""
            yield Alert(names.alert(f"Nexudus run failed: {entry.job_name} (run {run_id[:8]}). {reason}"), failing)

    @dg.sensor(
        name=names.name(ALERT_SENSOR),
        default_status=dg.DefaultSensorStatus.RUNNING,
        minimum_interval_seconds=minimum_interval_seconds,
        description=(
            "Posts one alert per failed asset check evaluation (WARN or ERROR) and per failed run to "
            "NEXUDUS_ALERT_WEBHOOK_URL, and one recovery when a failing check passes again."
        ),
        required_resource_keys=names.resource_keys(ALERTS),
    )
    def nexudus_alerts(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        alerts = names.alerts(context)
        # The daemon saves the cursor only at the end of a tick; a daemon killed mid-tick would
        # lose it and send the tick's alerts again, so progress is also stored after every alert.
        storage = context.instance.run_storage
        state = AlertState.newest(context.cursor, storage.get_cursor_values({progress}).get(progress))
        sent = 0
        undelivered = None
        for run_end in _finished_runs(context.instance, state.after):
            handled = state.handled if run_end.run_id == state.run_id else 0
            failing = frozenset(state.failing)
            for position, alert in enumerate(alerts_of_run(context.instance, run_end, failing)):
                failing = alert.failing
                if position < handled:
                    continue  # dealt with before a tick that stopped inside this run
                try:
                    alerts.send(alert.text, context.log)
                except RuntimeError as exc:
                    undelivered = str(exc)
                    break
                sent += 1
                state.run_id, state.handled = run_end.run_id, position + 1
                storage.set_cursor_values({progress: state.dumps()})
            if undelivered:
                break
            state.after, state.run_id, state.handled, state.failing = run_end.storage_id, None, 0, sorted(failing)
        skip = f"{sent} alert(s) sent" + (f"; stopped: {undelivered}, next tick retries" if undelivered else "")
        return dg.SensorResult(skip_reason=skip, cursor=state.dumps())

    return nexudus_alerts
