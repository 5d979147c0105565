"""The Dagster jobs end to end: simulator over HTTP, real DuckDB files, the project's own jobs."""

import datetime as dt
import time
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from nexudus_assets.assets.insights import INSIGHTS, insight_run_config
from nexudus_assets.checks import build_freshness_check, evaluate_raw_checks, raw_check_specs
from nexudus_assets.names import PLAIN_NAMES
from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, ENTITIES
from nexudus_assets.resources import (
    CommandLedgerResource,
)
from nexudus_assets.warehouse import WarehouseFiles, history_table, qualified
from nexudus_assets.writeback.rules import CommandRule
from nexudus_assets_tests.utils import Project, check_outcomes, expected_money, held_open, live_rows, metadata


@pytest.fixture
def project(start_simulator, tmp_path):
    return Project(start_simulator(seed=11, tokens=1200, contracts=150, passes=150), tmp_path / "nexudus.duckdb")


def test_the_first_sync_equals_the_simulator_field_by_field(project):
    result = project.run()
    for entity in ENTITIES:
        assert project.live_rows(entity) == project.upstream_rows(entity), entity.name
    tokens = metadata(result, "access_tokens")
    # Two pages, then both again: a second pass sees that nothing moved past the first.
    assert (tokens["rows_inserted"], tokens["rows_total"], tokens["requests"]) == (1200, 1200, 4)
    assert (tokens["pages"], tokens["verification_requests"], tokens["walk_incomplete"]) == (4, 2, "")
    assert metadata(result, "coworker_contracts")["requests"] == 1
    assert "dagster/column_schema" in metadata(result, "access_tokens")
    # The flattened display fields a list carries are columns too.
    names = project.query(f"SELECT count(*) FROM {qualified(COWORKER_CONTRACTS)} WHERE tariff_name IS NULL")
    assert names == [(0,)]


def test_an_incremental_sync_picks_up_changes_with_one_request_per_entity(project):
    project.run()
    touched = project.sim.mutate(ACCESS_TOKENS, update=10, insert=5)
    project.sim.mutate(COWORKER_CONTRACTS, update=3)
    project.sim.reset_stats()
    result = project.run()
    tokens = metadata(result, "access_tokens")
    assert (tokens["rows_inserted"], tokens["rows_updated"]) == (5, 10)
    assert metadata(result, "coworker_contracts")["rows_updated"] == 3
    assert metadata(result, "coworker_time_passes")["rows_updated"] == 0
    assert [metadata(result, e.table)["requests"] for e in ENTITIES] == [1, 1, 1]
    # Nor the command catalogue: the nightly full refresh keeps it.
    assert [path for _, path, _, _ in project.sim.request_log] == [f"/api/{entity.path}" for entity in ENTITIES]
    [query] = [q for _, path, q, _ in project.sim.request_log if path.endswith("accesstokens")]
    assert "from_AccessToken_UpdatedOn" in query
    for entity in ENTITIES:
        assert project.live_rows(entity) == project.upstream_rows(entity)
    assert set(touched["inserted"]) <= set(project.live_rows(ACCESS_TOKENS))


def test_deletions_show_after_a_full_refresh_and_leave_the_insights(project):
    project.run()
    low = sorted(project.insight_ids("low_minutes_access_tokens"))
    gone_tokens, gone_passes = low[:3], [r["Id"] for r in project.sim.records(COWORKER_TIME_PASSES)][:2]
    project.sim.delete(ACCESS_TOKENS, gone_tokens)
    project.sim.delete(COWORKER_TIME_PASSES, gone_passes)

    project.run()  # incremental: a deleted record sends no update, so nothing is marked yet
    assert set(gone_tokens) <= set(project.live_rows(ACCESS_TOKENS))

    result = project.run("nexudus_full_refresh")
    assert metadata(result, "access_tokens")["rows_deleted"] == 3
    assert metadata(result, "coworker_time_passes")["rows_deleted"] == 2
    deleted = project.query(f"SELECT id FROM {qualified(ACCESS_TOKENS)} WHERE _deleted_at IS NOT NULL ORDER BY id")
    assert [row[0] for row in deleted] == gone_tokens
    assert not set(gone_tokens) & project.insight_ids("low_minutes_access_tokens")
    for entity in ENTITIES:
        assert project.live_rows(entity) == project.upstream_rows(entity)


def test_a_run_that_fails_midway_leaves_the_previous_state_and_the_next_run_repairs(start_simulator, tmp_path):
    project = Project(
        start_simulator(seed=12, tokens=500, contracts=20, passes=20), tmp_path / "w.duckdb", page_size=100
    )
    project.run()
    before = project.live_rows(ACCESS_TOKENS)
    cursor = project.query("SELECT * FROM raw._sync_state ORDER BY entity")
    project.sim.mutate(ACCESS_TOKENS, update=300, insert=50)

    def break_after_first_page(entity, page):
        if entity == ACCESS_TOKENS and page == 2:
            project.sim.faults.error_rate = 1.0

    project.sim.on_list_page = break_after_first_page
    failed = project.run(raise_on_error=False)
    assert not failed.success
    assert project.live_rows(ACCESS_TOKENS) == before
    assert project.query("SELECT * FROM raw._sync_state ORDER BY entity") == cursor

    project.sim.on_list_page = None
    project.sim.faults.error_rate = 0.0
    project.run()
    assert project.live_rows(ACCESS_TOKENS) == project.upstream_rows(ACCESS_TOKENS)


def test_insights_equal_what_the_records_say(project):
    sim = project.sim
    as_of = sim.now
    config = {"as_of": as_of.isoformat()}
    project.run(
        run_config=insight_run_config(
            dict.fromkeys(
                (
                    "low_minutes_access_tokens",
                    "expiring_access_tokens",
                    "upcoming_contract_renewals",
                    "contracts_cancelling_soon",
                    "monthly_recurring_revenue_by_tariff",
                    "expiring_time_passes",
                    "time_pass_usage",
                ),
                config,
            )
        )
    )
    tokens = [ACCESS_TOKENS.model.model_validate(r) for r in sim.records(ACCESS_TOKENS)]
    contracts = [COWORKER_CONTRACTS.model.model_validate(r) for r in sim.records(COWORKER_CONTRACTS)]
    passes = [COWORKER_TIME_PASSES.model.model_validate(r) for r in sim.records(COWORKER_TIME_PASSES)]

    def valid(t):
        return (t.valid_from is None or t.valid_from <= as_of) and (t.valid_to is None or t.valid_to > as_of)

    def within(moment, days):
        return moment is not None and as_of < moment <= as_of + dt.timedelta(days=days)

    active = [c for c in contracts if c.active is True and c.cancelled is False]
    expected = {
        "low_minutes_access_tokens": {
            t.id for t in tokens if valid(t) and t.minutes_left is not None and t.minutes_left < 60
        },
        "expiring_access_tokens": {
            t.id for t in tokens if valid(t) and t.valid_to is not None and t.valid_to <= as_of + dt.timedelta(days=7)
        },
        "upcoming_contract_renewals": {c.id for c in active if within(c.renewal_date, 30)},
        "contracts_cancelling_soon": {c.id for c in contracts if within(c.cancellation_date, 30)},
        "expiring_time_passes": {
            p.id
            for p in passes
            if p.used is False and (p.remaining_uses is None or p.remaining_uses > 0) and within(p.expire_date, 14)
        },
        "time_pass_usage": {p.time_pass_id for p in passes},
    }
    for name, ids in expected.items():
        assert ids, f"the data gives {name} nothing to find: the test would prove nothing"
        assert project.insight_ids(name) == ids, name

    # Per month of each plan's invoicing period, the plan's price where the contract has none.
    revenue: dict[int, Decimal] = defaultdict(Decimal)
    served = {record["Id"]: record for record in sim.records(COWORKER_CONTRACTS)}
    for c in active:
        if c.start_date is None or c.start_date <= as_of:
            value, _ = expected_money(sim, served[c.id])
            assert value is not None, c.id
            revenue[c.tariff_id] += value
    stored = dict(
        project.query("SELECT id, monthly_recurring_revenue FROM insights.monthly_recurring_revenue_by_tariff")
    )
    assert stored == dict(revenue)


def test_every_check_passes_on_good_data(project):
    result = project.run()
    outcomes = check_outcomes(result)
    assert len(outcomes) == sum(len(raw_check_specs(entity, dg.AssetKey(entity.table))) for entity in ENTITIES)
    assert [key for key, e in outcomes.items() if not e.passed] == []


def test_each_row_check_fails_on_a_crafted_bad_record_and_errors_block_the_insights(project):
    sim = project.sim
    token = dict(sim.records(ACCESS_TOKENS)[0])
    contract = dict(sim.records(COWORKER_CONTRACTS)[0])
    time_pass = dict(sim.records(COWORKER_TIME_PASSES)[0])
    bad = {
        ("access_tokens", "minutes_left_within_included"): sim.put_raw(
            ACCESS_TOKENS, {**token, "Id": 1, "MinutesIncluded": 60, "MinutesLeft": 500}
        ),
        ("access_tokens", "valid_window_ordered"): sim.put_raw(
            ACCESS_TOKENS, {**token, "Id": 2, "ValidFrom": "2026-05-01T00:00:00", "ValidTo": "2026-04-01T00:00:00"}
        ),
        ("access_tokens", "required_fields_present"): sim.put_raw(
            ACCESS_TOKENS, {**token, "Id": 3, "AccessCode": None}
        ),
        ("coworker_contracts", "renewal_after_start"): sim.put_raw(
            COWORKER_CONTRACTS,
            {**contract, "Id": 4, "StartDate": "2026-05-01T00:00:00", "RenewalDate": "2026-01-01T00:00:00"},
        ),
        ("coworker_contracts", "tariff_present"): sim.put_raw(
            COWORKER_CONTRACTS, {**contract, "Id": 5, "TariffId": None}
        ),
        ("coworker_time_passes", "remaining_uses_within_total"): sim.put_raw(
            COWORKER_TIME_PASSES, {**time_pass, "Id": 6, "TotalUses": 2, "RemainingUses": 5}
        ),
    }
    # A missing tariff is also a missing required field.
    bad[("coworker_contracts", "required_fields_present")] = bad[("coworker_contracts", "tariff_present")]
    result = project.run(raise_on_error=False)
    outcomes = check_outcomes(result)
    for key, record_id in bad.items():
        assert not outcomes[key].passed, key
        assert outcomes[key].metadata["first_offending_ids"].value == [record_id], key
    failing = {key for key, e in outcomes.items() if not e.passed}
    assert failing == set(bad), "a check failed on good data"
    # ERROR checks block what depends on them; the time passes (WARN only) still flow through.
    materialized = {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}
    assert "low_minutes_access_tokens" not in materialized
    assert "upcoming_contract_renewals" not in materialized
    assert "expiring_time_passes" in materialized


def invoke_check(project, entity, name: str) -> dg.AssetCheckResult:
    with project.warehouse.working_read_connection() as conn:
        [(run_id,)] = conn.execute(
            "SELECT run_id FROM raw._sync_log WHERE entity = ? ORDER BY finished_at DESC LIMIT 1", [entity.table]
        ).fetchall()
        [result] = [r for r in evaluate_raw_checks(conn, entity, run_id) if r.check_name == name]
    return result


def synced_recently(project, entity) -> dg.AssetCheckResult:
    check = build_freshness_check(entity, 3, PLAIN_NAMES)
    with dg.build_op_context(resources={"warehouse": project.warehouse}) as context:
        return check(context)


def test_ids_unique_not_null_fails_when_the_key_is_broken(project):
    project.run()
    assert invoke_check(project, ACCESS_TOKENS, "ids_unique_not_null").passed
    table = qualified(ACCESS_TOKENS)
    with project.warehouse.get_connection() as conn:  # a table that lost its primary key and holds a twin
        conn.execute(
            f"CREATE OR REPLACE TABLE {table} AS SELECT * FROM {table} UNION ALL (SELECT * FROM {table} LIMIT 1)"
        )
    outcome = invoke_check(project, ACCESS_TOKENS, "ids_unique_not_null")
    assert not outcome.passed and outcome.metadata["offending_rows"].value == 1


@pytest.fixture
def machine_in_tokyo(monkeypatch):
    # The age of a sync is counted in UTC whatever the machine's zone.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def test_freshness_and_row_count_checks_fail_when_their_history_says_so(project, machine_in_tokyo):
    project.run()
    assert synced_recently(project, COWORKER_CONTRACTS).passed
    with project.warehouse.get_connection() as conn:
        conn.execute("UPDATE raw._sync_log SET finished_at = finished_at - INTERVAL 30 HOUR")
    assert not synced_recently(project, COWORKER_CONTRACTS).passed
    # The scheduled checks-only job sees it too, with no sync and no API call.
    project.sim.reset_stats()
    stale = project.run("nexudus_freshness")
    assert {key for key, e in check_outcomes(stale).items() if not e.passed} == {
        (entity.table, "synced_recently") for entity in ENTITIES
    }
    assert project.sim.stats["requests"] == 0

    lost = [r["Id"] for r in project.sim.records(COWORKER_CONTRACTS)][:4]
    with project.warehouse.get_connection() as conn:  # rows vanish locally, with no deletion recorded
        conn.execute(f"DELETE FROM {qualified(COWORKER_CONTRACTS)} WHERE id IN ({','.join(map(str, lost))})")
    result = project.run()
    outcome = check_outcomes(result)[("coworker_contracts", "row_count_stable")]
    assert not outcome.passed and outcome.metadata["unexplained_drop"].value == 4
    assert check_outcomes(result)[("access_tokens", "row_count_stable")].passed


def test_insight_windows_are_open_at_as_of_and_closed_at_the_far_end(project):
    sim = project.sim
    as_of = dt.datetime(2026, 6, 1, 12, 0)
    day = dt.timedelta(days=1)

    def twin(entity, new_id, **changes):
        record = {**sim.records(entity)[0], "Id": new_id, **changes}
        sim.put_raw(entity, record)

    for new_id, moment in (
        (9_000_001, as_of),
        (9_000_002, as_of + 14 * day),
        (9_000_003, as_of + 14 * day + dt.timedelta(minutes=1)),
    ):
        twin(COWORKER_TIME_PASSES, new_id, ExpireDate=moment.isoformat(), Used=False, RemainingUses=None)
    for new_id, moment in ((9_000_011, as_of), (9_000_012, as_of + 30 * day), (9_000_013, as_of + 31 * day)):
        twin(COWORKER_CONTRACTS, new_id, RenewalDate=moment.isoformat(), Active=True, Cancelled=False)
    for new_id, valid_to in ((9_000_021, as_of), (9_000_022, as_of + dt.timedelta(minutes=1))):
        twin(ACCESS_TOKENS, new_id, ValidFrom=None, ValidTo=valid_to.isoformat(), MinutesLeft=5, MinutesIncluded=60)
    config = {"as_of": as_of.isoformat()}
    project.run(
        run_config=insight_run_config(
            dict.fromkeys(("low_minutes_access_tokens", "upcoming_contract_renewals", "expiring_time_passes"), config)
        )
    )
    crafted = range(9_000_000, 9_000_100)
    assert set(crafted) & project.insight_ids("expiring_time_passes") == {9_000_002}
    assert set(crafted) & project.insight_ids("upcoming_contract_renewals") == {9_000_012}
    assert set(crafted) & project.insight_ids("low_minutes_access_tokens") == {9_000_022}


def test_as_of_defaults_to_the_start_of_the_run_in_utc(project):
    before = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    result = project.run()
    after = dt.datetime.now(dt.UTC).replace(tzinfo=None)
    moments = {
        dt.datetime.fromisoformat(metadata(result, name)["as_of"])
        for name in ("low_minutes_access_tokens", "upcoming_contract_renewals", "expiring_time_passes")
    }
    assert len(moments) == 1, "the insights of one run must share one instant"
    assert before - dt.timedelta(seconds=1) <= moments.pop() <= after


@pytest.fixture
def small_project(start_simulator, tmp_path):
    return Project(start_simulator(seed=13, tokens=200, contracts=40, passes=40), tmp_path / "warehouse.duckdb")


def test_an_analyst_holding_the_warehouse_read_write_neither_fails_nor_delays_two_syncs(start_simulator, tmp_path):
    # A one-second wait at most: a sync that waited for the analyst would fail, not just slow down.
    project = Project(
        start_simulator(seed=14, tokens=300, contracts=40, passes=40),
        tmp_path / "warehouse.duckdb",
        lock_timeout_seconds=1,
    )
    project.run()
    first_count = len(project.upstream_rows(ACCESS_TOKENS))
    with held_open(Path(project.database)) as analyst:
        for _ in range(2):
            project.sim.mutate(ACCESS_TOKENS, update=20, insert=10)
            project.sim.mutate(COWORKER_CONTRACTS, update=5, insert=2)
            assert project.run().success
            # The rule sensors' reader keeps working while the analyst holds the file.
            assert len(project.live_rows(ACCESS_TOKENS)) == len(project.upstream_rows(ACCESS_TOKENS))
        assert analyst.query(f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)}") == [(first_count,)]
    with duckdb.connect(project.database, read_only=True) as fresh:
        for entity in ENTITIES:
            assert live_rows(fresh, entity) == project.upstream_rows(entity), entity.name


def step_failures(result) -> list[str]:
    """Each failed step's error with its causes: Dagster wraps what the asset raised."""
    messages = []
    for event in result.all_events:
        if event.is_step_failure:
            error, texts = event.event_specific_data.error, []
            while error is not None:
                texts.append(error.message)
                error = error.cause
            messages.append(" | ".join(texts))
    return messages


def test_a_process_holding_the_working_file_fails_the_sync_after_the_wait_naming_it(start_simulator, tmp_path):
    project = Project(
        start_simulator(seed=15, tokens=50, contracts=10, passes=10),
        tmp_path / "warehouse.duckdb",
        lock_timeout_seconds=1,
    )
    project.run()
    working = WarehouseFiles(Path(project.database)).working
    with held_open(working) as intruder:
        failed = project.run(raise_on_error=False)
    assert not failed.success
    messages = step_failures(failed)
    assert messages and all(f"(PID {intruder.pid})" in message for message in messages), messages
    assert project.run().success


def test_a_corrupt_warehouse_fails_every_step_at_once_saying_so(small_project):
    Path(small_project.database).write_bytes(b"\x00garbage" * 4096)
    failed = small_project.run(raise_on_error=False)
    assert not failed.success
    messages = step_failures(failed)
    assert messages and all("not a valid DuckDB database file" in message for message in messages), messages


@pytest.mark.parametrize("file_name", ["warehouse.duckdb", "nexudus.duckdb"])
def test_the_file_opened_directly_answers_every_table_by_schema_and_name(start_simulator, tmp_path, file_name):
    project = Project(start_simulator(seed=16, tokens=100, contracts=20, passes=20), tmp_path / file_name)
    project.run()
    with duckdb.connect(project.database) as direct:  # as `duckdb data/warehouse.duckdb` opens it
        tables = direct.execute(
            "SELECT schema_name, table_name FROM duckdb_tables() WHERE NOT table_name LIKE '\\_%' ESCAPE '\\'"
        ).fetchall()
        assert ("raw", "access_tokens") in tables and ("insights", "low_minutes_access_tokens") in tables
        for schema, table in tables:
            direct.execute(f"SELECT count(*) FROM {schema}.{table}").fetchall()
        assert direct.execute("SELECT count(*) FROM raw.access_tokens").fetchone() == (100,)
        assert direct.execute("SELECT count(*) FROM raw.access_tokens_history").fetchone() == (100,)
        assert direct.execute("SELECT count(*) FROM raw._sync_log").fetchone()[0] == len(ENTITIES)


# ---------------------------------------------------------------- what analysts ask


def set_token(sim, token_id: int, minutes_left: int, minutes_included: int = 1000) -> None:
    """A token valid for a long while, with these minutes; bumps UpdatedOn so the next sync reads it."""
    sim.update(
        ACCESS_TOKENS,
        [token_id],
        {
            "MinutesLeft": minutes_left,
            "MinutesIncluded": minutes_included,
            "ValidFrom": None,
            "ValidTo": (sim.now + dt.timedelta(days=365)).isoformat(),
        },
    )


def test_tokens_running_out_are_forecast_from_their_history(start_simulator, tmp_path):
    project = Project(start_simulator(seed=17, tokens=60, contracts=5, passes=5), tmp_path / "warehouse.duckdb")
    running_out, unchanged, topped_up, more_included, slow = (r["Id"] for r in project.sim.records(ACCESS_TOKENS)[:5])
    steps = {
        running_out: [(500, 1000), (400, 1000), (300, 1000)],
        unchanged: [(300, 1000)] * 3,
        topped_up: [(500, 1000), (600, 1000), (300, 1000)],
        more_included: [(500, 1000), (400, 2000), (300, 2000)],
        slow: [(900, 1000), (880, 1000), (860, 1000)],  # 40 a day: 21 days left, past the 7-day horizon
    }
    for step in range(3):
        for token_id, values in steps.items():
            if step == 0 or values[step] != values[step - 1]:
                set_token(project.sim, token_id, *values[step])
        result = project.run()

    forecast = {
        row[0]: row[1:]
        for row in project.query(
            "SELECT id, minutes_left, minutes_used, minutes_per_day, days_until_exhaustion, predicted_exhaustion_at"
            " FROM insights.access_tokens_running_out"
        )
    }
    assert set(forecast) == {running_out}
    as_of = dt.datetime.fromisoformat(metadata(result, "access_tokens_running_out")["as_of"])
    # 200 minutes used over minutes of history: the span counts as one day, so 200 a day.
    assert forecast[running_out] == (300, 200, Decimal("200.00"), Decimal("1.50"), as_of + dt.timedelta(days=1.5))

    # Looked at three weeks on, with a two-week look-back, the versions that show the use are gone.
    later = {"as_of": (as_of + dt.timedelta(days=21)).isoformat(), "lookback_days": 14, "horizon_days": 30}
    project.run(run_config=insight_run_config({"access_tokens_running_out": later}))
    assert project.insight_ids("access_tokens_running_out") == set()
    # A longer horizon lists the slow one too.
    wider = {"horizon_days": 30}
    project.run(run_config=insight_run_config({"access_tokens_running_out": wider}))
    assert project.insight_ids("access_tokens_running_out") == {running_out, slow}
    # Deleted upstream, a token's versions are all closed and still in the look-back: it is not listed.
    project.sim.delete(ACCESS_TOKENS, [running_out])
    project.run("nexudus_full_refresh", run_config=insight_run_config({"access_tokens_running_out": wider}))
    assert project.insight_ids("access_tokens_running_out") == {slow}


def shift_history(project, days: int) -> None:
    """Move every version `days` into the past, as if the syncs had happened then."""
    with project.warehouse.get_connection() as conn:
        for entity in ENTITIES:
            conn.execute(
                f"UPDATE {history_table(entity)} SET _valid_from = _valid_from - to_days(?),"
                " _valid_to = _valid_to - to_days(?)",
                [days, days],
            )


def run_metrics(project, day: dt.date):
    return project.defs.resolve_job_def("nexudus_account_metrics").execute_in_process(
        instance=project.instance, partition_key=day.isoformat()
    )


def test_daily_account_metrics_come_from_the_history_as_of_the_end_of_each_day(small_project):
    project, sim = small_project, small_project.sim
    today = dt.datetime.now(dt.UTC).date()
    day = today - dt.timedelta(days=1)

    def at_hour(hour: int) -> str:
        return dt.datetime.combine(day, dt.time(hour)).isoformat()

    # Something for each count to find on the day.
    sim.put_raw(
        COWORKER_CONTRACTS,
        {
            **sim.records(COWORKER_CONTRACTS)[0],
            "Id": 9_000_001,
            "Active": True,
            "Cancelled": False,
            "StartDate": at_hour(9),
            "CancellationDate": at_hour(15),
        },
    )
    sim.put_raw(
        COWORKER_TIME_PASSES,
        {**sim.records(COWORKER_TIME_PASSES)[0], "Id": 9_000_002, "Used": True, "UsedDate": at_hour(10)},
    )
    project.run()
    tokens = sim.records(ACCESS_TOKENS)
    drained = [t for t in tokens if (t["MinutesLeft"] or 0) >= 10][:4]
    for record in drained:
        sim.update(ACCESS_TOKENS, [record["Id"]], {"MinutesLeft": record["MinutesLeft"] - 7})
    topped = next(t for t in tokens if t not in drained)
    sim.update(ACCESS_TOKENS, [topped["Id"]], {"MinutesLeft": (topped["MinutesLeft"] or 0) + 100})
    project.run()
    shift_history(project, 1)

    result = run_metrics(project, day)
    run_metrics(project, day)  # again: the day's rows are replaced, not added to

    start, end = dt.datetime.combine(day, dt.time()), dt.datetime.combine(today, dt.time())
    contracts = [COWORKER_CONTRACTS.model.model_validate(r) for r in sim.records(COWORKER_CONTRACTS)]
    passes = [COWORKER_TIME_PASSES.model.model_validate(r) for r in sim.records(COWORKER_TIME_PASSES)]

    def on_the_day(moment):
        return moment is not None and start <= moment < end

    # The currency is a display field: list answers carry it, the simulator's stored records do not.
    tariff_currency = dict(project.query(f"SELECT id, tariff_currency_code FROM {qualified(COWORKER_CONTRACTS)}"))
    pass_currency = dict(project.query(f"SELECT id, time_pass_currency_code FROM {qualified(COWORKER_TIME_PASSES)}"))
    served = {record["Id"]: record for record in sim.records(COWORKER_CONTRACTS)}
    expected: dict = defaultdict(lambda: [Decimal(0), 0, 0, 0, 0, 0, 0])
    for c in contracts:
        figures = expected[tariff_currency[c.id]]
        if c.active and not c.cancelled and (c.start_date is None or c.start_date < end):
            value, _ = expected_money(sim, served[c.id])
            figures[0] += value or 0
            figures[1] += 1
            figures[6] += value is None  # the contract put verbatim has no plan fields: left out
        figures[2] += on_the_day(c.start_date)
        figures[3] += on_the_day(c.cancellation_date)
    for p in passes:
        expected[pass_currency[p.id]][4] += on_the_day(p.used_date)
    expected[None][5] = 7 * len(drained)  # the top-up is not subtracted
    rows = project.query("SELECT * FROM insights.account_metrics_daily WHERE day = ?", [day])
    stored = {row[1]: [row[2], *row[3:-1]] for row in rows}
    assert stored == expected
    assert [row[-1] for row in rows] == [False] * len(rows), "a day after the first sync comes from the history"
    assert expected[None][5] == 28
    assert sum(figures[6] for figures in expected.values()) == 1, "the verbatim contract's value is unknown"
    assert all(any(figures[index] for figures in expected.values()) for index in range(5)), "a figure found nothing"

    shown = metadata(result, "account_metrics_daily")
    assert shown["minutes_consumed"] == 28 and shown["active_contracts"] == sum(f[1] for f in expected.values())
    [event] = result.asset_materializations_for_node("account_metrics_daily")
    for currency, figures in expected.items():
        if currency is not None:
            value = event.metadata[f"monthly_recurring_revenue_{currency}"]
            assert isinstance(value, dg.FloatMetadataValue) and value.value == float(figures[0])
    assert isinstance(event.metadata["passes_used"], dg.IntMetadataValue)

    # The day before the first sync is reconstructed from the records' dates; token minutes are unknown then.
    before = run_metrics(project, day - dt.timedelta(days=1))
    reconstructed = project.query(
        "SELECT currency, active_contracts, minutes_consumed, reconstructed"
        " FROM insights.account_metrics_daily WHERE day = ?",
        [day - dt.timedelta(days=1)],
    )
    assert all(flag for *_, flag in reconstructed) and (None, 0, None, True) in reconstructed
    assert sum(active for _, active, _, _ in reconstructed) > 0
    shown = metadata(before, "account_metrics_daily")
    assert shown["reconstructed"] is True and "minutes_consumed" not in shown
    assert shown["dagster/partition_row_count"] == len(reconstructed)
    assert project.query("SELECT count(DISTINCT day) FROM insights.account_metrics_daily") == [(2,)]


def test_the_daily_metrics_are_not_in_the_hourly_sync_and_have_a_daily_schedule(small_project):
    sync = {
        key.to_user_string()
        for key in small_project.defs.resolve_job_def("nexudus_sync").asset_layer.selected_asset_keys
    }
    assert "account_metrics_daily" not in sync and "access_tokens_running_out" in sync
    schedule = small_project.defs.resolve_schedule_def("nexudus_account_metrics_schedule")
    assert (schedule.cron_schedule, schedule.job_name) == ("30 0 * * *", "nexudus_account_metrics")


def test_every_insight_describes_each_of_its_columns_before_and_after_it_runs(small_project):
    project = small_project
    tables = [*(insight.name for insight in INSIGHTS), "account_metrics_daily"]
    declared = {}
    for name in tables:
        spec = project.defs.resolve_assets_def(name).specs_by_key[dg.AssetKey(name)]
        schema = spec.metadata["dagster/column_schema"]
        assert all(column.description for column in schema.columns), name
        declared[name] = [(column.name, column.type, column.description) for column in schema.columns]
    result = project.run()
    run_metrics(project, dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1))
    for name in tables:
        found = project.query(
            "SELECT column_name, data_type, comment FROM duckdb_columns()"
            " WHERE schema_name = 'insights' AND table_name = ? ORDER BY column_index",
            [name],
        )
        assert found == declared[name], name
        assert project.query(
            "SELECT comment FROM duckdb_tables() WHERE schema_name = 'insights' AND table_name = ?", [name]
        ) == [(project.defs.resolve_assets_def(name).specs_by_key[dg.AssetKey(name)].description,)]
        if name != "account_metrics_daily":
            shown = metadata(result, name)["dagster/column_schema"]
            assert [(c.name, c.type, c.description) for c in shown.columns] == declared[name], name


def test_rule_sensors_read_while_an_analyst_holds_the_file_and_say_when_nothing_is_synced(start_simulator, tmp_path):
    rule = CommandRule(
        name="top_up", asset="low_minutes_access_tokens", command="ACCESSTOKEN_ADD_MINUTES", parameters={"Minutes": 120}
    )
    project = Project(
        start_simulator(seed=18, tokens=80, contracts=5, passes=5), tmp_path / "warehouse.duckdb", rules=[rule]
    )
    project.run()
    sensor = project.defs.resolve_sensor_def("nexudus_rule_top_up")

    def tick():
        with dg.build_sensor_context(
            instance=project.instance,
            resources={"warehouse": project.warehouse, "alerts": project.alerts, "ledger": CommandLedgerResource()},
        ) as context:
            return sensor.evaluate_tick(context)

    low = project.insight_ids("low_minutes_access_tokens")
    assert low, "no low-minute tokens: the sensor would have nothing to ask for"
    with held_open(Path(project.database)):
        [request] = tick().run_requests
    assert set(request.run_config["ops"]["run_nexudus_command"]["config"]["record_ids"]) == low

    # The Dagster instance remembers a materialization, but the warehouse is gone (a new machine, a
    # different NEXUDUS_DUCKDB_PATH): the sensor says so instead of blaming a lock.
    files = WarehouseFiles(Path(project.database))
    files.published.unlink()
    files.working.unlink()
    skipped = tick()
    assert not skipped.run_requests and "not synced yet" in skipped.skip_message
