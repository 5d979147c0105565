"""The reliability suite: injected faults, killed runs, bad input and secrets.

Everything here is real: the simulator is an HTTP server on 127.0.0.1, the project's own Dagster jobs
run (in this process, or as `dagster job execute` subprocesses) against DuckDB files in tmp_path, and
the expected data is the simulator's records read through the project's models.

The fast cases run with `make test`. The `slow` ones are the same properties over longer runs and
more kill points; they are meant for `make bench` (see the marker in pyproject.toml).
"""

from __future__ import annotations

import base64
import datetime as dt
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, quote_plus

import dagster as dg
import pydantic
import pytest
from pydantic_core import to_jsonable_python

from nexudus_assets.definitions import build_defs, resources_from_env
from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, ENTITIES, Entity
from nexudus_assets.nexudus.errors import AuthenticationError
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME, Simulator, SimulatorServer
from nexudus_assets.warehouse import connect, qualified
from nexudus_assets_tests.utils import Project, Running, check_outcomes

REPO = Path(__file__).resolve().parents[1]
#: Columns the warehouse adds to every record; the rest must equal what the API holds.
WAREHOUSE_COLUMNS = ("_synced_at", "_deleted_at")
#: 5xx, throttling, dropped connections and latency jitter at once. Retry-After 0 keeps the 409s
#: fast; the slow variant uses 1.
FAULTS = {
    "error_rate": 0.08,
    "throttle_rate": 0.08,
    "retry_after": 0,
    "drop_rate": 0.03,
    "latency_ms": 1,
    "jitter_ms": 4,
}


# -- the code location, run in this process ------------------------------------------------------


def failure_text(run: dg.ExecuteInProcessResult | Iterable[dg.DagsterEvent], *, stacks: bool = False) -> str:
    """The error messages of a failed run, causes included, as the Dagster UI shows them."""
    texts: list[str] = []
    for event in run.all_events if isinstance(run, dg.ExecuteInProcessResult) else run:
        error = getattr(event.event_specific_data, "error", None)
        if error is not None and stacks:
            texts.append(error.to_string())
        while error is not None:
            texts.append(error.message.strip())
            error = error.cause or error.context
    return "\n".join(dict.fromkeys(texts))  # the step's error comes again with the run's failure


# -- what the warehouse holds, and what it should hold ---------------------------------------------


@dataclass(frozen=True)
class TableState:
    """One entity in the warehouse: its live rows, its cursor and how many syncs it logged."""

    rows: dict[int, dict[str, Any]]
    high_water_mark: dt.datetime | None
    syncs_logged: int


def _fetch(conn, sql: str, params: list | None = None) -> list[dict[str, Any]]:
    cursor = conn.execute(sql, params or [])
    names = [d[0] for d in cursor.description]
    return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]


def _table_exists(conn, schema: str, table: str) -> bool:
    query = "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = ?"
    return conn.execute(query, [schema, table]).fetchone()[0] > 0


def read_warehouse(database: Path, *, read_only: bool = True) -> dict[str, TableState]:
    """Every entity's live rows (every data column, `_extra` parsed), cursor and sync count.

    Also asserts that no id appears twice, deleted rows included.
    """
    if not database.exists():  # a run killed before it created the file
        return {entity.table: TableState({}, None, 0) for entity in ENTITIES}
    conn = connect(str(database), read_only=read_only)
    try:
        states = {}
        for entity in ENTITIES:
            if not _table_exists(conn, "raw", entity.table):
                states[entity.table] = TableState({}, None, 0)
                continue
            twins = conn.execute(f"SELECT id FROM {qualified(entity)} GROUP BY id HAVING count(*) > 1").fetchall()
            assert twins == [], f"{entity.table}: duplicate ids {twins[:5]}"
            rows = {}
            for row in _fetch(conn, f"SELECT * FROM {qualified(entity)} WHERE _deleted_at IS NULL"):
                for name in WAREHOUSE_COLUMNS:
                    del row[name]
                row["_extra"] = json.loads(row["_extra"]) if row["_extra"] is not None else None
                rows[row["id"]] = row
            hwm = None
            logged = 0
            if _table_exists(conn, "raw", "_sync_state"):
                found = conn.execute(
                    "SELECT high_water_mark FROM raw._sync_state WHERE entity = ?", [entity.table]
                ).fetchall()
                hwm = found[0][0] if found else None
                logged = conn.execute("SELECT count(*) FROM raw._sync_log WHERE entity = ?", [entity.table]).fetchone()[
                    0
                ]
            states[entity.table] = TableState(rows, hwm, logged)
        return states
    finally:
        conn.close()


def deleted_ids(database: Path, entity: Entity) -> set[int]:
    conn = connect(str(database), read_only=True)
    try:
        rows = conn.execute(f"SELECT id FROM {qualified(entity)} WHERE _deleted_at IS NOT NULL").fetchall()
        return {record_id for (record_id,) in rows}
    finally:
        conn.close()


def rejected_records(database: Path) -> list[dict[str, Any]]:
    conn = connect(str(database), read_only=True)
    try:
        rows = _fetch(conn, "SELECT entity, record_id, reason, raw_json, run_id FROM raw._rejected_records")
    finally:
        conn.close()
    for row in rows:
        row["raw"] = json.loads(row.pop("raw_json"))
    return rows


def served_display_fields(sim: Simulator, entity: Entity) -> dict[int, dict[str, Any]]:
    """The flattened display fields, as the simulator's list answers carry them (records() lacks them)."""
    display: dict[int, dict[str, Any]] = {}
    page = 1
    while True:
        (_, envelope), _ = sim.list_page(entity, {"page": str(page), "size": "1000"})
        for raw in envelope["Records"]:
            try:
                record = entity.model.model_validate(raw)
            except pydantic.ValidationError:
                continue
            display[record.id] = {name: getattr(record, name) for name in entity.model.display_fields}
        if not envelope["Records"] or not envelope["HasNextPage"]:
            return display
        page += 1


def expected_rows(sim: Simulator, entity: Entity) -> dict[int, dict[str, Any]]:
    """What the live table must hold: every simulator record that fits the model, every column.

    Documented fields come from `sim.records()` through the model; display fields from the list
    answers; `_extra` is the fields the model does not know.
    """
    display = served_display_fields(sim, entity)
    rows = {}
    for raw in sim.records(entity):
        try:
            record = entity.model.model_validate(raw)
        except pydantic.ValidationError:
            continue  # quarantined: the tests that inject such records check them one by one
        row = {
            name: getattr(record, name) for name in entity.model.model_fields if name not in entity.model.display_fields
        }
        row.update(display[record.id])
        row["_extra"] = to_jsonable_python(record.model_extra) if record.model_extra else None
        rows[record.id] = row
    return rows


def describe_difference(actual: dict[int, dict], expected: dict[int, dict], limit: int = 5) -> str:
    """A short account of how two {id: row} maps differ, for assertion messages."""
    missing = sorted(expected.keys() - actual.keys())
    extra = sorted(actual.keys() - expected.keys())
    changed = []
    for record_id in sorted(actual.keys() & expected.keys()):
        columns = sorted(
            name
            for name in expected[record_id].keys() | actual[record_id].keys()
            if actual[record_id].get(name) != expected[record_id].get(name)
        )
        if columns:
            first = columns[0]
            changed.append(
                f"{record_id}.{first}: {actual[record_id].get(first)!r:.80} != {expected[record_id].get(first)!r:.80}"
                + (f" (+{len(columns) - 1} more columns)" if len(columns) > 1 else "")
            )
    return (
        f"missing {len(missing)} {missing[:limit]}, unexpected {len(extra)} {extra[:limit]}, "
        f"different {len(changed)} {changed[:limit]}"
    )


def assert_warehouse_equals_simulator(database: Path, sim: Simulator) -> None:
    state = read_warehouse(database)
    for entity in ENTITIES:
        actual, expected = state[entity.table].rows, expected_rows(sim, entity)
        assert actual == expected, f"{entity.table}: {describe_difference(actual, expected)}"
        # The display fields were compared with what the list answers carry; make sure that was not
        # a comparison of NULLs: wherever the simulator sets one, the warehouse has it.
        for name in entity.model.display_fields:
            served = {record_id for record_id, row in expected.items() if row[name] is not None}
            assert served, f"{entity.table}.{name}: the simulator served no value, nothing was compared"
            assert {record_id for record_id in served if actual[record_id][name] is not None} == served


def list_requests(sim: Simulator, entity: Entity) -> list[tuple[str, str, dict[str, str], int]]:
    path = f"/api/{entity.path}"
    return [entry for entry in sim.request_log if entry[1].lower() == path]


def set_faults(sim: Simulator, **faults: Any) -> None:
    sim.faults.update(faults)


def utc_stamp_now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


# == 1. injected faults ==============================================================================


def assert_every_fault_kind_hit(sim: Simulator) -> None:
    by_status = sim.stats["by_status"]
    # Status 0 is the simulator's mark for a connection it dropped without answering.
    hits = {"HTTP 500": by_status.get(500, 0), "HTTP 409": by_status.get(409, 0), "dropped": by_status.get(0, 0)}
    assert all(hits.values()), f"a fault never happened, so the test proves nothing about it: {hits}"


def assert_throttling_is_logged(database: Path, sim: Simulator, run_id: str) -> None:
    """Each entity's `_sync_log` row counts the 409s its list requests got."""
    conn = connect(str(database), read_only=True)
    try:
        query = "SELECT entity, throttled FROM raw._sync_log WHERE run_id = ?"
        logged = dict(conn.execute(query, [run_id]).fetchall())
    finally:
        conn.close()
    answered = {e.table: sum(1 for *_, status in list_requests(sim, e) if status == 409) for e in ENTITIES}
    assert logged == answered


def run_sync_under_faults(running, tmp_path, *, rounds: int, faults: dict[str, Any], page_size: int) -> None:
    sim = running.sim
    database = tmp_path / "w.duckdb"
    project = Project(running, database, page_size=page_size)
    set_faults(sim, **faults)

    result = project.run()
    assert_every_fault_kind_hit(sim)
    assert_warehouse_equals_simulator(database, sim)
    assert_throttling_is_logged(database, sim, result.run_id)
    assert rejected_records(database) == []

    for _ in range(rounds):
        sim.mutate(ACCESS_TOKENS, update=60, insert=25)
        sim.mutate(COWORKER_CONTRACTS, update=15, insert=5)
        sim.mutate(COWORKER_TIME_PASSES, update=15, insert=5)
        sim.reset_stats()
        result = project.run()
        assert_warehouse_equals_simulator(database, sim)
        assert_throttling_is_logged(database, sim, result.run_id)

    # Deletions, then a full refresh under the same faults: a page lost to a fault must never turn
    # into records marked deleted, and every real deletion must be found.
    gone = {
        ACCESS_TOKENS: sim.mutate(ACCESS_TOKENS, update=20, delete=7)["deleted"],
        COWORKER_TIME_PASSES: sim.mutate(COWORKER_TIME_PASSES, update=5, delete=3)["deleted"],
    }
    sim.reset_stats()
    result = project.run("nexudus_full_refresh")
    assert_warehouse_equals_simulator(database, sim)
    assert_throttling_is_logged(database, sim, result.run_id)
    for entity in ENTITIES:
        assert deleted_ids(database, entity) == set(gone.get(entity, [])), entity.table


def test_a_sync_through_5xx_409_dropped_connections_and_jitter_equals_the_simulator_exactly(start_simulator, tmp_path):
    # Page size 25 turns 800 records into ~35 list requests per run, so every kind of fault happens.
    running = start_simulator(seed=41, tokens=500, contracts=150, passes=150)
    run_sync_under_faults(running, tmp_path, rounds=0, faults=FAULTS, page_size=25)


@pytest.mark.slow
def test_many_syncs_through_faults_stay_equal_to_the_simulator(start_simulator, tmp_path):
    running = start_simulator(seed=42, tokens=6000, contracts=800, passes=800)
    faults = {**FAULTS, "retry_after": 1, "error_rate": 0.1, "drop_rate": 0.05}
    run_sync_under_faults(running, tmp_path, rounds=6, faults=faults, page_size=50)


def test_intermittent_malformed_and_html_pages_are_retried_until_the_sync_completes(start_simulator, tmp_path):
    running = start_simulator(seed=43, tokens=500, contracts=60, passes=60)
    sim = running.sim
    set_faults(sim, malformed_rate=0.1, html_rate=0.05)
    database = tmp_path / "w.duckdb"
    Project(running, database, page_size=25).run()
    assert_warehouse_equals_simulator(database, sim)
    # Only these two faults are on, so a list page asked for twice was retried after a bad body.
    asked = [(path, tuple(sorted(query.items()))) for _, path, query, _ in sim.request_log if "commands" not in path]
    assert len(asked) > len(set(asked)), "no page was malformed or HTML: the test proves nothing"


# == 3. bad input ====================================================================================


@pytest.mark.parametrize(
    ("fault", "what_came_back"),
    [("malformed_rate", r"malformed JSON"), ("html_rate", r"HTML|text/html")],
    ids=["malformed-json", "html-with-200"],
)
def test_a_page_that_is_not_json_fails_the_sync_naming_what_came_back_and_keeps_the_previous_state(
    start_simulator, tmp_path, fault, what_came_back
):
    running = start_simulator(seed=44, tokens=300, contracts=20, passes=20)
    sim = running.sim
    database = tmp_path / "w.duckdb"
    project = Project(running, database, page_size=100)
    # Only the tokens asset: every other API step would wait out the same five retries.
    tokens_only = ["access_tokens"]
    project.run(assets=tokens_only)
    before = read_warehouse(database)
    sim.mutate(ACCESS_TOKENS, update=150, insert=20)  # two pages for the incremental sync

    def break_after_the_first_page(entity, page):
        # Page 1 arrives and is staged; every answer after it is bad, retries included.
        if entity == ACCESS_TOKENS:
            setattr(sim.faults, fault, 1.0)

    sim.on_list_page = break_after_the_first_page
    failed = project.run(raise_on_error=False, assets=tokens_only)
    assert not failed.success
    text = failure_text(failed)
    assert "accesstokens" in text, text[-2000:]
    assert re.search(what_came_back, text), f"the error does not say what came back:\n{text[-2000:]}"
    assert read_warehouse(database) == before

    sim.on_list_page = None
    setattr(sim.faults, fault, 0.0)
    project.run(assets=tokens_only)
    assert read_warehouse(database)["access_tokens"].rows == expected_rows(sim, ACCESS_TOKENS)


@dataclass
class BadInput:
    sim: Simulator
    database: Path
    result: dg.ExecuteInProcessResult
    ids: dict[str, int]
    records: dict[str, dict[str, Any]]


#: 100,000 characters with quotes, backslashes, newlines and non-ASCII, so nothing can get re-encoded.
LONG_DESCRIPTION = ('Front desk "guest" WiFi \\ ünïcødé ☕ 東京\n' * 3000)[:100_000]


@pytest.fixture(scope="module")
def bad_input(tmp_path_factory) -> BadInput:
    """One sync of an account holding one record of each kind of bad input, injected verbatim.

    Module-scoped: one sync serves the assertions below (each xdist worker builds its own).
    """
    # Enough good tokens that the two quarantined stay under the share of a sync the
    # `rejected_within_limit` check allows (1%).
    sim = Simulator(seed=45, tokens=300, contracts=20, passes=20)
    token = sim.records(ACCESS_TOKENS)[0]
    contract = sim.records(COWORKER_CONTRACTS)[0]
    # Valid but for the one thing each record is about (minutes within included, window ordered).
    base = {
        **token,
        "MinutesIncluded": 600,
        "MinutesLeft": 300,
        "ValidFrom": "2026-01-01T00:00:00",
        "ValidTo": "2026-12-31T00:00:00",
    }
    records = {
        "without_id": {key: value for key, value in base.items() if key != "Id"} | {"AccessCode": "NOID1"},
        "string_numbers": {**base, "Id": 10_900_001, "MinutesLeft": "45"},
        "impossible_date": {**base, "Id": 10_900_002, "ValidTo": "2024-02-30T00:00:00"},
        "unknown_fields": {**base, "Id": 10_900_003, "FavouriteColour": "teal", "DoorZones": [1, 2, {"Floor": "3"}]},
        "long_string": {**base, "Id": 10_900_004, "Description": LONG_DESCRIPTION},
        "negative_minutes": {**base, "Id": 10_900_005, "MinutesLeft": -30},
    }
    string_contract = {**contract, "Id": 20_900_001, "Price": "99.50", "Quantity": "2"}
    ids = {name: sim.put_raw(ACCESS_TOKENS, record) for name, record in records.items()}
    ids["string_contract"] = sim.put_raw(COWORKER_CONTRACTS, string_contract)
    records["string_contract"] = string_contract
    database = tmp_path_factory.mktemp("bad_input") / "w.duckdb"
    with SimulatorServer(sim) as server:
        result = Project(Running(sim, server.base_url), database, page_size=25).run(raise_on_error=False)
    return BadInput(sim, database, result, ids, records)


def test_bad_records_do_not_fail_the_sync_and_every_other_record_is_synced_exactly(bad_input):
    assert bad_input.result.success
    assert_warehouse_equals_simulator(bad_input.database, bad_input.sim)
    quarantined = {(r["entity"], r["record_id"]) for r in rejected_records(bad_input.database)}
    assert quarantined == {("access_tokens", None), ("access_tokens", bad_input.ids["impossible_date"])}
    rejected_share = check_outcomes(bad_input.result)[("access_tokens", "rejected_within_limit")]
    assert rejected_share.passed and rejected_share.metadata["rejected"].value == 2


def test_a_record_without_an_id_is_quarantined_with_its_raw_json(bad_input):
    [rejected] = [r for r in rejected_records(bad_input.database) if r["record_id"] is None]
    assert rejected["entity"] == "access_tokens"
    assert rejected["raw"] == bad_input.records["without_id"]
    assert "Id" in rejected["reason"], rejected["reason"]


def test_numbers_sent_as_strings_are_accepted_as_numbers(bad_input):
    tables = read_warehouse(bad_input.database)
    token = tables["access_tokens"].rows[bad_input.ids["string_numbers"]]
    assert token["minutes_left"] == 45 and isinstance(token["minutes_left"], int)
    contract = tables["coworker_contracts"].rows[bad_input.ids["string_contract"]]
    assert (contract["price"], contract["quantity"]) == (Decimal("99.50"), 2)


def test_an_impossible_date_is_quarantined_naming_the_record_and_the_field(bad_input):
    record_id = bad_input.ids["impossible_date"]
    [rejected] = [r for r in rejected_records(bad_input.database) if r["record_id"] == record_id]
    assert str(record_id) in rejected["reason"] and "ValidTo" in rejected["reason"], rejected["reason"]
    assert rejected["raw"] == bad_input.records["impossible_date"]
    assert record_id not in read_warehouse(bad_input.database)["access_tokens"].rows


def test_fields_the_model_does_not_know_are_kept_in_extra(bad_input):
    row = read_warehouse(bad_input.database)["access_tokens"].rows[bad_input.ids["unknown_fields"]]
    assert row["_extra"] == {"FavouriteColour": "teal", "DoorZones": [1, 2, {"Floor": "3"}]}


def test_a_100_kb_string_is_stored_intact(bad_input):
    row = read_warehouse(bad_input.database)["access_tokens"].rows[bad_input.ids["long_string"]]
    assert len(row["description"]) == 100_000
    assert row["description"] == LONG_DESCRIPTION


def test_negative_minutes_are_stored_and_the_warn_check_names_the_record(bad_input):
    record_id = bad_input.ids["negative_minutes"]
    assert read_warehouse(bad_input.database)["access_tokens"].rows[record_id]["minutes_left"] == -30
    outcome = check_outcomes(bad_input.result)[("access_tokens", "minutes_left_within_included")]
    assert not outcome.passed
    assert outcome.severity == dg.AssetCheckSeverity.WARN
    assert outcome.metadata["first_offending_ids"].value == [record_id]
    # A WARN check does not block: the insights built on the tokens were still materialized.
    materialized = {e.asset_key.to_user_string() for e in bad_input.result.get_asset_materialization_events()}
    assert "low_minutes_access_tokens" in materialized


def test_a_record_broken_upstream_keeps_its_last_good_version_and_is_not_marked_deleted(start_simulator, tmp_path):
    running = start_simulator(seed=46, tokens=40, contracts=10, passes=10)
    sim = running.sim
    database = tmp_path / "w.duckdb"
    project = Project(running, database)
    tokens_only = ["access_tokens"]  # the other entities have nothing to do with it
    project.run(assets=tokens_only)
    victim = sim.records(ACCESS_TOKENS)[7]
    good = read_warehouse(database)["access_tokens"].rows[victim["Id"]]
    sim.put_raw(ACCESS_TOKENS, {**victim, "ValidTo": "2025-13-01T00:00:00", "UpdatedOn": utc_stamp_now()})

    # One record of the few an incremental sync reads, or of 40: past the share the ERROR check
    # allows, which names the field.
    incremental = project.run(assets=tokens_only, raise_on_error=False)
    assert read_warehouse(database)["access_tokens"].rows[victim["Id"]] == good
    # Not in the listing as a valid record is not gone: a full refresh must not mark it deleted.
    full = project.run("nexudus_full_refresh", assets=tokens_only, raise_on_error=False)
    for result in (incremental, full):
        outcome = check_outcomes(result)[("access_tokens", "rejected_within_limit")]
        assert not outcome.passed and "ValidTo" in outcome.metadata["most_common_reason"].value
    assert read_warehouse(database)["access_tokens"].rows[victim["Id"]] == good
    assert deleted_ids(database, ACCESS_TOKENS) == set()
    reasons = [r["reason"] for r in rejected_records(database) if r["record_id"] == victim["Id"]]
    assert len(reasons) == 2 and all("ValidTo" in reason for reason in reasons), reasons


def test_a_list_shorter_than_its_total_items_still_syncs_every_record_and_deletes_nothing(
    start_simulator, tmp_path, caplog
):
    running = start_simulator(seed=47, tokens=120, contracts=30, passes=30)
    sim = running.sim
    sim.faults.total_items_inflation = 7  # every list claims 7 more records (and a page more) than it has
    database = tmp_path / "w.duckdb"
    project = Project(running, database, page_size=25)
    caplog.set_level(logging.WARNING)

    project.run()
    assert_warehouse_equals_simulator(database, sim)
    warned = any("although the server announced" in r.getMessage() for r in caplog.records)
    assert warned, "the short list went unnoticed"
    # What was not read may be older than what was: the cursor stays where it was (nowhere yet).
    assert {table: state.high_water_mark for table, state in read_warehouse(database).items()} == {
        entity.table: None for entity in ENTITIES
    }
    project.run("nexudus_full_refresh", assets=[entity.table for entity in ENTITIES])  # the insights add nothing here
    assert_warehouse_equals_simulator(database, sim)
    for entity in ENTITIES:
        assert deleted_ids(database, entity) == set(), entity.table


# == 2. killed runs ==================================================================================


def dagster_env(base_url: str, database: Path, home: Path, **extra: str) -> dict[str, str]:
    """The environment of `dagster job execute` against the simulator, with its own DAGSTER_HOME."""
    home.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "local" / "dagster.yaml", home / "dagster.yaml")
    env = {key: value for key, value in os.environ.items() if not key.startswith(("NEXUDUS_", "DAGSTER_"))}
    env.update(
        NEXUDUS_BASE_URL=base_url,
        NEXUDUS_USERNAME=DEFAULT_USERNAME,
        NEXUDUS_PASSWORD=DEFAULT_PASSWORD,
        NEXUDUS_DUCKDB_PATH=str(database),
        NEXUDUS_PACING="off",
        DAGSTER_HOME=str(home),
        **extra,
    )
    return env


@pytest.fixture
def start_job():
    """Starts `dagster job execute` runs; any still running when the test ends is killed."""
    started: list[subprocess.Popen] = []

    def start(env: dict[str, str], log: Path, job: str = "nexudus_sync") -> subprocess.Popen:
        command = [sys.executable, "-m", "dagster", "job", "execute", "-m", "nexudus_assets.definitions", "-j", job]
        with log.open("ab") as out:
            started.append(subprocess.Popen(command, env=env, cwd=REPO, stdout=out, stderr=subprocess.STDOUT))
        return started[-1]

    yield start
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait()


def kill_after_request(process: subprocess.Popen, sim: Simulator, request: int, delay: float, limit: float = 120):
    """SIGKILL the run `delay` seconds after the simulator answered its `request`-th request.

    Returns what happened: "killed", or "finished" when the run ended before that moment.
    """
    deadline = time.monotonic() + limit
    while sim.stats["requests"] < request:
        if process.poll() is not None:
            return "finished"
        assert time.monotonic() < deadline, f"the run made {sim.stats['requests']} requests in {limit}s"
        time.sleep(0.005)
    time.sleep(delay)
    if process.poll() is not None:
        return "finished"
    process.send_signal(signal.SIGKILL)
    process.wait()
    return "killed"


def expected_state(sim: Simulator) -> dict[str, tuple[dict[int, dict], dt.datetime | None]]:
    """What each entity holds after a complete sync: the simulator's rows and their newest UpdatedOn."""
    state = {}
    for entity in ENTITIES:
        rows = expected_rows(sim, entity)
        state[entity.table] = (rows, max((r["updated_on"] for r in rows.values()), default=None))
    return state


def assert_previous_or_new(after: dict[str, TableState], before: dict[str, TableState], new: dict) -> dict[str, str]:
    """Each entity is wholly the state before the run or wholly the state a complete run gives."""
    outcome = {}
    for entity in ENTITIES:
        now, previous = after[entity.table], before[entity.table]
        new_rows, new_hwm = new[entity.table]
        if now.rows:
            newest = max(r["updated_on"] for r in now.rows.values())
            assert now.high_water_mark is None or now.high_water_mark <= newest, (
                f"{entity.table}: the high-water mark {now.high_water_mark} is ahead of the newest row {newest}"
            )
        state = (now.rows, now.high_water_mark, now.syncs_logged)
        if state == (previous.rows, previous.high_water_mark, previous.syncs_logged):
            outcome[entity.table] = "previous"
        elif state == (new_rows, new_hwm, previous.syncs_logged + 1):  # rows, cursor and log in one transaction
            outcome[entity.table] = "new"
        else:
            raise AssertionError(
                f"{entity.table} is neither the previous nor the new state: "
                f"vs previous {describe_difference(now.rows, previous.rows)} "
                f"(cursor {now.high_water_mark} vs {previous.high_water_mark}, "
                f"syncs {now.syncs_logged} vs {previous.syncs_logged}); "
                f"vs new {describe_difference(now.rows, new_rows)} (cursor vs {new_hwm})"
            )
    return outcome


def mutate_all(sim: Simulator, *, deletions: bool) -> None:
    sim.mutate(ACCESS_TOKENS, update=100, insert=30, delete=4 if deletions else 0)
    sim.mutate(COWORKER_CONTRACTS, update=30, insert=5)  # contracts have no DELETE in the API
    sim.mutate(COWORKER_TIME_PASSES, update=30, insert=10, delete=3 if deletions else 0)


def run_kill_trials(
    start_simulator, start_job, tmp_path: Path, *, seed: int, trials: int, first_run_too: bool, full_refreshes: bool
) -> list[dict]:
    """Kill `dagster job execute` at seeded random moments; check the warehouse after each kill and
    after the run that follows it."""
    rng = random.Random(seed)
    running = start_simulator(seed=seed, tokens=400, contracts=100, passes=100)
    sim = running.sim
    database = tmp_path / "w.duckdb"
    project = Project(running, database, page_size=50)
    if not first_run_too:
        project.run()
    # Roughly how many requests a run makes; the kill lands after a random one of them.
    requests_per_run = 15
    outcomes = []
    for trial in range(trials):
        full = full_refreshes and trial % 2 == 1
        if trial or not first_run_too:
            mutate_all(sim, deletions=full)
        before, new = read_warehouse(database), expected_state(sim)

        sim.faults.latency_ms = 30  # with Dagster's own work between steps, the run lasts a few seconds
        sim.reset_stats()
        # A fresh DAGSTER_HOME per run: a killed run's leftover pool slot is the subject of its own test.
        env = dagster_env(running.base_url, database, tmp_path / f"home-{trial}", NEXUDUS_PAGE_SIZE="50")
        process = start_job(env, tmp_path / f"run-{trial}.log", "nexudus_full_refresh" if full else "nexudus_sync")
        request, delay = rng.randint(1, requests_per_run), rng.uniform(0, 0.6)
        what = kill_after_request(process, sim, request, delay)
        sim.faults.latency_ms = 0

        after = read_warehouse(database, read_only=False)  # opens as the next run would, replaying the WAL
        states = assert_previous_or_new(after, before, new)
        outcomes.append(
            {"trial": trial, "full": full, "after_request": request, "delay": round(delay, 3), "run": what, **states}
        )

        # Then the account changes again and a complete run repairs everything.
        mutate_all(sim, deletions=False)
        sim.reset_stats()
        project.run("nexudus_full_refresh" if full else "nexudus_sync")
        requests_per_run = max(sim.stats["requests"], 3)
        assert_warehouse_equals_simulator(database, sim)
    print("kill trials:", *outcomes, sep="\n  ")
    return outcomes


def test_a_sync_killed_at_a_random_point_leaves_each_table_previous_or_new_and_the_next_run_repairs(
    start_simulator, start_job, tmp_path
):
    # Two trials: the first run killed (no previous state at all), then an incremental one.
    run_kill_trials(start_simulator, start_job, tmp_path, seed=51, trials=2, first_run_too=True, full_refreshes=False)


@pytest.mark.slow
def test_many_syncs_and_full_refreshes_killed_at_random_points_never_corrupt_the_warehouse(
    start_simulator, start_job, tmp_path
):
    outcomes = run_kill_trials(
        start_simulator, start_job, tmp_path, seed=53, trials=12, first_run_too=True, full_refreshes=True
    )
    assert sum(o["run"] == "killed" for o in outcomes) >= 8, "too few runs were killed to mean anything"


def test_a_run_killed_while_it_holds_the_account_does_not_block_the_next_run(start_simulator, start_job, tmp_path):
    # A pacing client claims the account for its process (nexudus/lease.py) so that two processes
    # never spend one budget together. The claim must die with the process: the next run, on the
    # same instance, waits for nobody. Every API step makes at least three requests (page size 25),
    # so a kill just after the second answer lands while the first step talks to the account.
    running = start_simulator(seed=54, tokens=300, contracts=60, passes=60)
    sim = running.sim
    database = tmp_path / "w.duckdb"
    env = dagster_env(running.base_url, database, tmp_path / "dagster_home", NEXUDUS_PAGE_SIZE="25")
    env["NEXUDUS_PACING"] = "on"
    sim.faults.latency_ms = 100
    killed = start_job(env, tmp_path / "killed.log")
    assert kill_after_request(killed, sim, request=2, delay=0.05) == "killed"
    sim.faults.latency_ms = 0

    log = tmp_path / "next.log"
    following = start_job(env, log)
    try:
        following.wait(timeout=120)
    except subprocess.TimeoutExpired:
        following.kill()
        following.wait()
    text = log.read_text(errors="replace")
    tail = "\n".join(text.splitlines()[-8:])
    assert following.returncode == 0, f"the run after the killed one did not finish ({following.returncode}):\n{tail}"
    assert "waiting for another process" not in text
    assert_warehouse_equals_simulator(database, sim)


# == 4. credentials never appear =====================================================================

#: Distinctive, and with characters that URL, form and JSON encoding would each change.
SECRET_PASSWORD = "Rel!ab1lity-S3cret/pa$$+word=7f3a"
WRONG_PASSWORD = "Wr0ng&Guess-9d1e/x+y="


def secret_forms(password: str, tokens: Iterable[str] = ()) -> dict[str, str]:
    """Every spelling of a secret a leak could take: as is, URL- and form-encoded, inside Basic auth."""
    forms = {
        "password": password,
        "password (url-encoded)": quote(password, safe=""),
        "password (form-encoded)": quote_plus(password),
        "password (JSON-escaped)": json.dumps(password)[1:-1],
        "Basic credentials": base64.b64encode(f"{DEFAULT_USERNAME}:{password}".encode()).decode(),
    }
    forms.update({f"token #{i}": token for i, token in enumerate(tokens)})
    return {name: value for name, value in forms.items() if name == "password" or value != password}


def find_leaks(haystacks: dict[str, str | bytes], secrets: dict[str, str]) -> list[str]:
    leaks = []
    for where, text in haystacks.items():
        for name, secret in secrets.items():
            needle = secret.encode() if isinstance(text, bytes) else secret
            if needle and needle in text:
                leaks.append(f"the {name} is in {where}")
    return leaks


def file_contents(*roots: Path) -> dict[str, bytes]:
    files = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file():
                files[str(path)] = path.read_bytes()
    return files


def warehouse_contents(database: Path) -> dict[str, str]:
    """Every value of every table, as text: DuckDB compresses strings on disk, so the file's bytes
    alone could hide a secret."""
    conn = connect(str(database), read_only=True)
    try:
        tables = conn.execute(
            "SELECT table_schema, table_name FROM information_schema.tables WHERE table_catalog = current_database()"
        ).fetchall()
        return {
            f"the warehouse table {schema}.{table}": repr(
                conn.execute(f'SELECT * FROM "{schema}"."{table}"').fetchall()
            )
            for schema, table in tables
        }
    finally:
        conn.close()


def run_with_env_resources(monkeypatch, base_url: str, database: Path, instance, *, password: str, auth: str):
    """The job wired exactly as in production: `resources_from_env()`, secrets in EnvVars."""
    for name, value in {
        "NEXUDUS_BASE_URL": base_url,
        "NEXUDUS_USERNAME": DEFAULT_USERNAME,
        "NEXUDUS_PASSWORD": password,
        "NEXUDUS_AUTH": auth,
        "NEXUDUS_PAGE_SIZE": "25",
        "NEXUDUS_PACING": "off",
        "NEXUDUS_DUCKDB_PATH": str(database),
    }.items():
        monkeypatch.setenv(name, value)
    defs = build_defs(resources_from_env(), ())
    return defs.resolve_job_def("nexudus_sync").execute_in_process(instance=instance)


def instance_texts(instance, run_id: str) -> dict[str, str]:
    texts = {
        f"event {i} ({entry.dagster_event_type or 'log'})": dg.serialize_value(entry)
        for i, entry in enumerate(instance.all_logs(run_id))
    }
    texts["the run record"] = dg.serialize_value(instance.get_run_by_id(run_id))
    return texts


def test_no_secret_reaches_logs_events_instance_storage_or_the_warehouse(
    start_simulator, tmp_path, monkeypatch, caplog, capfd
):
    running = start_simulator(
        seed=61, tokens=150, contracts=20, passes=20, password=SECRET_PASSWORD, access_token_ttl=3
    )
    sim = running.sim
    # Retries log warnings: one more place for a leak. Rare enough that no retried request outlives
    # a three-second token after the sign-in that preceded it.
    sim.faults.error_rate = 0.2
    happened = []

    def stall_then_revoke(entity, page):
        # Sign-in, refresh and re-sign-in all happen: a page answered after a stall outlives the
        # three-second bearer token (the client, told a lifetime under a minute, assumes an hour, so
        # the server's 401 is what tells it), and a revocation (a password change) refuses every
        # token issued so far, refresh tokens included.
        if entity == ACCESS_TOKENS and page == 2 and "stall" not in happened:
            happened.append("stall")
            time.sleep(3.2)
        if entity == ACCESS_TOKENS and page == 4 and "revoke" not in happened:
            happened.append("revoke")
            sim.revoke_tokens()

    sim.on_list_page = stall_then_revoke
    caplog.set_level(logging.DEBUG)
    home, database = tmp_path / "dagster_home", tmp_path / "w.duckdb"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        result = run_with_env_resources(
            monkeypatch, running.base_url, database, instance, password=SECRET_PASSWORD, auth="bearer"
        )
        events = instance_texts(instance, result.run_id)
    assert result.success and happened == ["stall", "revoke"]
    # One sign-in for the run's shared session, a refresh after the stall, and after the
    # revocation's 401 a refused refresh then a password grant; and some 500s, retried.
    stats = sim.stats
    assert stats["by_path"].get("/api/token", 0) >= 4, stats
    assert stats["by_status"].get(401, 0) >= 1 and stats["by_status"].get(500, 0) >= 1, stats
    tokens = sim.issued_tokens()
    captured = capfd.readouterr()
    haystacks: dict[str, str | bytes] = {
        "the Python logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        **events,
        **file_contents(tmp_path),  # the instance, both warehouse files, the ledger
        **warehouse_contents(database),
    }
    assert len(events) > 50 and any(str(home) in name for name in haystacks), "nothing to scan"
    assert {"the warehouse table raw.access_tokens", "the warehouse table raw._sync_log"} <= haystacks.keys()
    assert find_leaks(haystacks, secret_forms(SECRET_PASSWORD, tokens)) == []


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_a_refused_sign_in_fails_clearly_without_echoing_either_password(
    start_simulator, tmp_path, monkeypatch, caplog, capfd, auth
):
    running = start_simulator(seed=62, tokens=20, contracts=5, passes=5, password=SECRET_PASSWORD)
    caplog.set_level(logging.DEBUG)
    home, database = tmp_path / "dagster_home", tmp_path / "w.duckdb"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        with pytest.raises(AuthenticationError) as raised:
            run_with_env_resources(
                monkeypatch, running.base_url, database, instance, password=WRONG_PASSWORD, auth=auth
            )
        [run] = instance.get_runs()
        entries = instance.all_logs(run.run_id)
        events = instance_texts(instance, run.run_id)
    assert run.status == dg.DagsterRunStatus.FAILURE
    text = failure_text([entry.dagster_event for entry in entries if entry.dagster_event], stacks=True)
    # Clear: it says the sign-in was refused and where the credentials come from.
    assert "NEXUDUS_PASSWORD" in text or "sign-in refused" in text, text[-2000:]
    captured = capfd.readouterr()
    haystacks: dict[str, str | bytes] = {
        "the failure messages": text,
        "the raised exception": "".join(traceback.format_exception(raised.value)),
        "the Python logs": caplog.text,
        "stdout": captured.out,
        "stderr": captured.err,
        **events,
        **file_contents(tmp_path),  # the instance, both warehouse files, the ledger
        **(warehouse_contents(database) if database.exists() else {}),
    }
    secrets = {**secret_forms(WRONG_PASSWORD), **{f"real {k}": v for k, v in secret_forms(SECRET_PASSWORD).items()}}
    assert find_leaks(haystacks, secrets) == []
