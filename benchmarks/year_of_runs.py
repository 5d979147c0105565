"""A year of hourly runs on the SQLite instance `dagster dev` uses, and what it costs the UI and sensors.

One real hourly run of `nexudus_sync` is recorded, then copied under new run ids an hour apart,
back over the year (runs, every event, one SQLite file per run as that storage keeps them; the
copies are older than the template but were written after it, so they have higher storage ids).
Then:
- a tick of the alert sensor with its cursor at the newest run, and one of a rule sensor;
- the asset page of `access_tokens` through `dagster-webserver`'s GraphQL (its latest
  materializations and its checks' latest executions, as the UI's asset page asks for them).

`python benchmarks/year_of_runs.py HOME RUNS` builds HOME (with the repo's dagster.yaml) and prints
JSON; the warehouse and the simulator come from the NEXUDUS_* variables, as for a job.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import sqlite3
import socket
import statistics
import subprocess
import sys
import time
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any

import dagster as dg
import httpx

REPO = Path(__file__).resolve().parent.parent
HOUR = 3600.0

ASSET_PAGE = """
query AssetPage($key: AssetKeyInput!) {
  assetOrError(assetKey: $key) {
    ... on Asset {
      assetMaterializations(limit: 100) { runId timestamp }
      definition {
        assetChecksOrError { ... on AssetChecks { checks { name executionForLatestMaterialization { status } } } }
      }
    }
  }
}"""


def record_template_run(home: Path) -> str:
    """Runs the hourly job once, as a process, into `home`; returns its run id."""
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    subprocess.run(
        [sys.executable, "-m", "dagster", "job", "execute", "-m", "nexudus_assets.definitions", "-j", "nexudus_sync"],
        env=env, cwd=REPO, check=True, capture_output=True, timeout=900,
    )
    with dg.DagsterInstance.from_config(str(home)) as instance:
        return instance.get_runs(limit=1)[0].run_id


def _rows(conn: sqlite3.Connection, sql: str, params: tuple[Any, ...]) -> tuple[list[str], list[tuple[Any, ...]]]:
    cursor = conn.execute(sql, params)
    return [column[0] for column in cursor.description], cursor.fetchall()


def _insert(conn: sqlite3.Connection, table: str, columns: list[str], rows: list[tuple[Any, ...]]) -> None:
    if rows:
        names = ", ".join(f'"{name}"' for name in columns)
        conn.executemany(f"INSERT INTO {table} ({names}) VALUES ({', '.join('?' * len(columns))})", rows)


def _shifted(value: Any, hours: int) -> Any:
    """A timestamp column, `hours` earlier: SQLite keeps them as text, floats or datetimes."""
    if isinstance(value, float):
        return value - hours * HOUR
    if isinstance(value, str) and len(value) >= 19 and value[4] == "-":
        moment = dt.datetime.fromisoformat(value) - dt.timedelta(hours=hours)
        return moment.isoformat(sep=" ")
    return value


def copy_runs(home: Path, template_id: str, runs: int) -> dict[str, Any]:
    """`runs - 1` copies of the template run, an hour apart back over the year, as the storage keeps them.

    Going through Dagster's storage costs about 0.75 s a run (a transaction per event, a new
    database file per run), 2 hours for a year; so the rows are copied with SQLite itself: the
    run and its tags, its own event database, and its rows in the index (events, check
    executions, asset event tags) with their ids mapped.
    """
    history = home / "history"
    started = time.monotonic()
    with closing(sqlite3.connect(history / "runs.db")) as runs_db, closing(
        sqlite3.connect(history / "runs" / "index.db")
    ) as index:
        run_columns, [run_row] = _rows(runs_db, "SELECT * FROM runs WHERE run_id = ?", (template_id,))
        tag_columns, tag_rows = _rows(runs_db, "SELECT * FROM run_tags WHERE run_id = ?", (template_id,))
        event_columns, event_rows = _rows(index, "SELECT * FROM event_logs WHERE run_id = ? ORDER BY id", (template_id,))
        check_columns, check_rows = _rows(
            index, "SELECT * FROM asset_check_executions WHERE run_id = ?", (template_id,)
        )
        event_ids = [row[0] for row in event_rows]
        tag_event_columns, tag_event_rows = _rows(
            index, f"SELECT * FROM asset_event_tags WHERE event_id IN ({','.join('?' * len(event_ids))})",
            tuple(event_ids),
        )
        next_event_id = index.execute("SELECT max(id) FROM event_logs").fetchone()[0] + 1
        for hours in range(1, runs):
            run_id = str(uuid.uuid4())

            def renamed(row: tuple[Any, ...], columns: list[str]) -> list[Any]:
                values = []
                for name, value in zip(columns, row, strict=True):
                    if isinstance(value, str) and template_id in value:
                        value = value.replace(template_id, run_id)
                    if name in {"timestamp", "create_timestamp", "update_timestamp", "start_time", "end_time",
                                "evaluation_event_timestamp", "event_timestamp"}:
                        value = _shifted(value, hours)
                    values.append(value)
                return values

            run = renamed(run_row, run_columns)
            run[run_columns.index("id")] = None
            _insert(runs_db, "runs", run_columns, [tuple(run)])
            _insert(runs_db, "run_tags", tag_columns[1:], [tuple(renamed(row, tag_columns)[1:]) for row in tag_rows])
            new_ids = {old: next_event_id + position for position, old in enumerate(event_ids)}
            next_event_id += len(event_ids)
            def copies(rows: list[tuple[Any, ...]], columns: list[str], *, own_id: bool) -> list[tuple[Any, ...]]:
                """The rows renamed and shifted; event ids mapped to the copies' own."""
                copied = []
                for row in rows:
                    values = renamed(row, columns)
                    values[0] = new_ids[row[0]] if own_id else None  # a fresh id, or the mapped event's
                    for name in ("event_id", "evaluation_event_storage_id", "materialization_event_storage_id"):
                        if name in columns:
                            at = columns.index(name)
                            values[at] = new_ids.get(values[at], values[at])
                    copied.append(tuple(values))
                return copied

            _insert(index, "event_logs", event_columns, copies(event_rows, event_columns, own_id=True))
            _insert(index, "asset_check_executions", check_columns, copies(check_rows, check_columns, own_id=False))
            _insert(index, "asset_event_tags", tag_event_columns,
                    copies(tag_event_rows, tag_event_columns, own_id=False))
            shard = history / "runs" / f"{run_id}.db"
            shutil.copyfile(history / "runs" / f"{template_id}.db", shard)
            with closing(sqlite3.connect(shard)) as own:
                own.execute(
                    "UPDATE event_logs SET run_id = ?, event = replace(event, ?, ?)", (run_id, template_id, run_id)
                )
                own.commit()
            if hours % 500 == 0:
                runs_db.commit()
                index.commit()
        runs_db.commit()
        index.commit()
    return {"runs": runs, "index_events_per_run": len(event_rows), "copy_s": time.monotonic() - started}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _median_tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, cursor: str | None,
                 resources: dict[str, Any], rounds: int) -> float:
    timings = []
    for _ in range(rounds):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context:
            begun = time.perf_counter()
            sensor.evaluate_tick(context)
            timings.append(time.perf_counter() - begun)
    return statistics.median(timings)


def time_sensor_ticks(home: Path, rounds: int = 5) -> dict[str, float]:
    """The ticks the daemon pays every interval: the alert sensor with one new run, and with none."""
    from nexudus_assets.alerts import AlertState
    from nexudus_assets.definitions import defs, resources_from_env

    resources = resources_from_env()
    with dg.DagsterInstance.from_config(str(home)) as instance:
        newest, before = instance.fetch_run_status_changes(dg.DagsterEventType.RUN_SUCCESS, limit=2).records
        alerts = defs.resolve_sensor_def("nexudus_alerts")
        rule = defs.resolve_sensor_def("nexudus_rule_top_up_low_minutes")
        return {
            "alert_tick_one_new_run_s": _median_tick(
                alerts, instance, AlertState(after=before.storage_id).dumps(), resources, rounds
            ),
            "alert_tick_nothing_new_s": _median_tick(
                alerts, instance, AlertState(after=newest.storage_id).dumps(), resources, rounds
            ),
            "rule_tick_s": _median_tick(rule, instance, None, resources, rounds),
        }


def time_asset_page(home: Path, rounds: int = 5) -> dict[str, float]:
    port = free_port()
    env = {**os.environ, "DAGSTER_HOME": str(home)}
    webserver = subprocess.Popen(
        [sys.executable, "-m", "dagster_webserver", "-h", "127.0.0.1", "-p", str(port),
         "-m", "nexudus_assets.definitions"],
        env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}/graphql"
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/server_info", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("dagster-webserver did not start")
            time.sleep(0.5)
        timings = []
        for _ in range(rounds):
            begun = time.perf_counter()
            answer = httpx.post(
                url, json={"query": ASSET_PAGE, "variables": {"key": {"path": ["access_tokens"]}}}, timeout=120
            ).json()
            timings.append(time.perf_counter() - begun)
            if answer.get("errors"):
                raise RuntimeError(f"the asset page query failed: {answer['errors']}")
        shown = len(answer["data"]["assetOrError"]["assetMaterializations"])
        return {"asset_page_first_s": timings[0], "asset_page_s": statistics.median(timings[1:]),
                "asset_page_materializations": shown}
    finally:
        webserver.terminate()
        webserver.wait(timeout=30)


def main() -> None:
    home, runs = Path(sys.argv[1]), int(sys.argv[2])
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "dagster.yaml", home / "dagster.yaml")
    template = record_template_run(home)
    figures: dict[str, Any] = copy_runs(home, template, runs)
    figures.update(time_sensor_ticks(home))
    figures.update(time_asset_page(home))
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
