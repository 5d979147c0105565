"""Drift is loud (records rejected, records marked deleted) and money is right on the shapes live
accounts send (a null `Price`, weekly and multi-month plans)."""

import datetime as dt
import re
import signal
from collections import defaultdict
from decimal import Decimal

import httpx
import pytest

from nexudus_assets.assets.insights import insight_run_config
from nexudus_assets.assets.trends import COLUMNS as METRICS_COLUMNS
from nexudus_assets.checks import DELETED_SHARE, REJECTED_SHARE
from nexudus_assets.definitions import build_defs
from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, ENTITIES
from nexudus_assets.settings import Settings
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets.simulator.process import running_simulator
from nexudus_assets_tests.test_alerts import Sensor
from nexudus_assets_tests.test_sync_assets import shift_history
from nexudus_assets_tests.utils import Project, check_outcomes, expected_money

TOKEN_INSIGHTS = {"low_minutes_access_tokens", "expiring_access_tokens", "access_tokens_running_out"}
PASS_INSIGHTS = {"expiring_time_passes", "time_pass_usage"}


@pytest.fixture
def project(start_simulator, tmp_path):
    return Project(start_simulator(seed=31, tokens=200, contracts=40, passes=40), tmp_path / "w.duckdb")


def materialized(result) -> set[str]:
    return {e.asset_key.to_user_string() for e in result.get_asset_materialization_events()}


def with_settings(project: Project, **environ: str) -> Project:
    """The project's code location built from these environment variables, as a deployment loads it."""
    project.defs = build_defs(
        {"nexudus_api": project.nexudus_api, "warehouse": project.warehouse, "alerts": project.alerts},
        (),
        Settings.from_env(environ),
    )
    return project


def test_good_syncs_pass_the_drift_checks(project):
    outcomes = check_outcomes(project.run())
    for entity in ENTITIES:
        for name in (REJECTED_SHARE, DELETED_SHARE):
            assert outcomes[(entity.table, name)].passed, (entity.table, name)
    rejected = outcomes[("access_tokens", REJECTED_SHARE)].metadata
    assert (rejected["rejected"].value, rejected["received"].value, rejected["rejected_percent"].value) == (0, 200, 0)


def test_schema_drift_fails_the_error_check_names_the_reason_and_blocks_the_insights(project):
    project.run()
    project.sim.faults.schema_drift = True  # MinutesLeft: "10 min", Quantity: "2 seats", ...
    result = project.run("nexudus_full_refresh", raise_on_error=False)
    assert not result.success
    outcomes = check_outcomes(result)
    for entity in ENTITIES:
        outcome = outcomes[(entity.table, REJECTED_SHARE)]
        assert not outcome.passed and outcome.severity.value == "ERROR", entity.table
        assert outcome.metadata["rejected_percent"].value == 100.0
    tokens = outcomes[("access_tokens", REJECTED_SHARE)]
    reason = tokens.metadata["most_common_reason"].value
    assert reason.startswith("field 'MinutesLeft': "), reason
    assert tokens.metadata["most_common_reason_records"].value == 200
    assert "200 of 200 records rejected" in tokens.description and reason in tokens.description
    # Nothing was marked deleted: a record rejected is still there upstream.
    assert all(outcomes[(entity.table, DELETED_SHARE)].passed for entity in ENTITIES)
    assert not (TOKEN_INSIGHTS | PASS_INSIGHTS | {"monthly_recurring_revenue_by_tariff"}) & materialized(result)


def test_a_share_rejected_under_the_limit_passes_and_the_limit_is_a_setting(project):
    token = dict(project.sim.records(ACCESS_TOKENS)[0])
    project.sim.put_raw(ACCESS_TOKENS, {**token, "Id": 9, "MinutesLeft": "10 min"})  # 1 of 201: 0.5%
    passed = check_outcomes(project.run())[("access_tokens", REJECTED_SHARE)]
    assert passed.passed and passed.metadata["rejected"].value == 1

    strict = with_settings(project, NEXUDUS_MAX_REJECTED_PERCENT="0.1")
    result = strict.run("nexudus_full_refresh", raise_on_error=False)
    failed = check_outcomes(result)[("access_tokens", REJECTED_SHARE)]
    assert not failed.passed and failed.metadata["limit_percent"].value == 0.1
    assert not TOKEN_INSIGHTS & materialized(result)
    assert materialized(result) >= PASS_INSIGHTS, "the other tables' insights are not blocked"


def test_a_full_refresh_deleting_more_than_the_limit_warns_without_blocking(project):
    project.run()
    tokens = [record["Id"] for record in project.sim.records(ACCESS_TOKENS)]
    project.sim.delete(ACCESS_TOKENS, tokens[:25])  # 12.5%
    project.sim.delete(COWORKER_TIME_PASSES, [r["Id"] for r in project.sim.records(COWORKER_TIME_PASSES)][:2])
    result = project.run("nexudus_full_refresh")
    outcomes = check_outcomes(result)
    warned = outcomes[("access_tokens", DELETED_SHARE)]
    assert not warned.passed and warned.severity.value == "WARN"
    assert (warned.metadata["deleted"].value, warned.metadata["live_rows_before"].value) == (25, 200)
    assert warned.metadata["deleted_percent"].value == 12.5
    assert outcomes[("coworker_time_passes", DELETED_SHARE)].passed  # 2 of 40: 5%
    assert materialized(result) >= TOKEN_INSIGHTS


def test_the_deletion_limit_is_a_setting(project):
    project.run()
    project.sim.delete(ACCESS_TOKENS, [record["Id"] for record in project.sim.records(ACCESS_TOKENS)][:25])
    outcomes = check_outcomes(with_settings(project, NEXUDUS_MAX_DELETED_PERCENT="20").run("nexudus_full_refresh"))
    assert outcomes[("access_tokens", DELETED_SHARE)].passed


def test_both_drift_checks_alert_through_the_alert_sensor(start_simulator, tmp_path, dagster_instance, webhook):
    running = start_simulator(seed=32, tokens=100, contracts=10, passes=10)
    project = Project(running, tmp_path / "w.duckdb", webhook=webhook.url, instance=dagster_instance)
    sensor = Sensor(project)
    sensor.tick()
    project.run()
    project.sim.delete(ACCESS_TOKENS, [record["Id"] for record in project.sim.records(ACCESS_TOKENS)][:20])
    project.run("nexudus_full_refresh")
    sensor.tick()
    [deleted] = webhook.texts()
    assert f"access_tokens.{DELETED_SHARE} (WARN)" in deleted and "deleted_percent: 20.0" in deleted

    project.sim.faults.schema_drift = True
    project.run("nexudus_full_refresh", raise_on_error=False)
    sensor.tick()
    texts = webhook.texts()[1:]
    [tokens] = [text for text in texts if f"access_tokens.{REJECTED_SHARE} (ERROR)" in text]
    assert "rejected_percent: 100.0" in tokens and "most_common_reason: field 'MinutesLeft'" in tokens
    assert any("recovered" in text and DELETED_SHARE in text for text in texts)
    assert any("run failed: nexudus_full_refresh" in text for text in texts)
    for entity in ENTITIES:
        assert any(f"{entity.table}.{REJECTED_SHARE} (ERROR)" in text for text in texts), entity.table


# ------------------------------------------------------------------ money on live shapes

RENEWALS = "upcoming_contract_renewals"
REVENUE = "monthly_recurring_revenue_by_tariff"


@pytest.fixture
def money_project(start_simulator, tmp_path):
    return Project(start_simulator(seed=33, tokens=20, contracts=300, passes=20), tmp_path / "w.duckdb")


def active_started(contract, as_of) -> bool:
    return (
        contract.active is True
        and contract.cancelled is False
        and (contract.start_date is None or contract.start_date <= as_of)
    )


def test_monthly_values_use_the_plans_price_and_invoicing_period(money_project):
    project, sim = money_project, money_project.sim
    as_of = sim.now
    run_config = insight_run_config(
        {
            RENEWALS: {"as_of": as_of.isoformat(), "renewal_window_days": 120},
            "contracts_cancelling_soon": {"as_of": as_of.isoformat(), "cancellation_window_days": 60},
            REVENUE: {"as_of": as_of.isoformat()},
        }
    )
    project.run(run_config=run_config)
    served = {record["Id"]: record for record in sim.records(COWORKER_CONTRACTS)}
    money = {record_id: expected_money(sim, record) for record_id, record in served.items()}
    # The account has every shape, or the comparison below would prove nothing.
    assert {period for _, period in money.values()} >= {
        "weekly",
        "every 2 weeks",
        "monthly",
        "every 3 months",
        "every 12 months",
    }
    assert any(record["Price"] is None for record in served.values())

    renewals = project.query(
        f"SELECT id, effective_price, price_source, billing_period, monthly_value FROM insights.{RENEWALS}"
    )
    assert len(renewals) > 20
    for record_id, effective_price, price_source, billing_period, monthly_value in renewals:
        record = served[record_id]
        tariff = sim.world.tariff_by_id[record["TariffId"]]
        own = record["Price"] is not None
        assert price_source == ("contract" if own else "tariff"), record_id
        assert effective_price == Decimal(str(record["Price"] if own else tariff.price)), record_id
        assert (monthly_value, billing_period) == money[record_id], record_id
    cancelling = project.query("SELECT id, billing_period, monthly_value FROM insights.contracts_cancelling_soon")
    assert cancelling and all((value, period) == money[i] for i, period, value in cancelling)

    contracts = [COWORKER_CONTRACTS.model.model_validate(r) for r in served.values()]
    revenue: dict[int, Decimal] = defaultdict(Decimal)
    for contract in contracts:
        if active_started(contract, as_of):
            revenue[contract.tariff_id] += money[contract.id][0]
    stored = project.query(
        f"SELECT id, billing_period, monthly_recurring_revenue, contracts_value_unknown FROM insights.{REVENUE}"
    )
    assert {row[0]: row[2] for row in stored} == dict(revenue)
    periods = {tariff.id: money_period(tariff) for tariff in sim.world.tariffs}
    assert all(period == periods[tariff_id] and unknown == 0 for tariff_id, period, _, unknown in stored)
    weekly = sim.world.tariffs[0]
    assert weekly.invoice_every == 0 and weekly.invoice_every_weeks == 1
    # A weekly plan of 40 a week is 173.3333 a month per seat, not 40.
    assert revenue[weekly.id] > 40 * sum(1 for c in contracts if c.tariff_id == weekly.id and active_started(c, as_of))


def money_period(tariff) -> str:
    if tariff.invoice_every == 1:
        return "monthly"
    if tariff.invoice_every > 1:
        return f"every {tariff.invoice_every} months"
    return "weekly" if tariff.invoice_every_weeks == 1 else f"every {tariff.invoice_every_weeks} weeks"


#: Contracts whose plan fields say too little, or nothing usable, put verbatim.
ODD_PLANS = {
    "no_period": ({"Price": 100.0}, {"TariffInvoiceEvery": None, "TariffInvoiceEveryWeeks": None}),
    "half_month": ({"Price": 100.0}, {"TariffInvoiceEvery": "1.5", "TariffInvoiceEveryWeeks": 0}),
    "zero_and_zero": ({"Price": 120.0}, {"TariffInvoiceEvery": 0, "TariffInvoiceEveryWeeks": 0}),
    "words": ({"Price": 120.0}, {"TariffInvoiceEvery": "monthly", "TariffInvoiceEveryWeeks": "n/a"}),
    "no_price_at_all": ({"Price": None}, {"TariffPrice": "ask us", "TariffInvoiceEvery": 1}),
    "plan_price_as_text": ({"Price": None}, {"TariffPrice": " 99.50 ", "TariffInvoiceEvery": "3"}),
}


def test_an_unknown_price_or_period_is_said_and_left_out_of_the_sums_and_text_fails_nothing(money_project):
    project, sim = money_project, money_project.sim
    base = next(r for r in sim.records(COWORKER_CONTRACTS) if r["Quantity"] == 2)
    renewal = (sim.now + dt.timedelta(days=10)).replace(microsecond=0).isoformat()
    ids = {}
    for offset, (name, (own, plan)) in enumerate(ODD_PLANS.items()):
        record = {
            **base,
            "Id": 9_100_000 + offset,
            "TariffId": 1_399_999,
            "TariffName": "Odd plan",
            "TariffCurrencyCode": "EUR",
            "TariffPrice": 50.0,
            "Active": True,
            "Cancelled": False,
            "CancellationDate": None,
            "StartDate": "2024-01-01T00:00:00",
            "RenewalDate": renewal,
            **own,
            **plan,
        }
        ids[name] = sim.put_raw(COWORKER_CONTRACTS, record)
    config = {"as_of": sim.now.isoformat()}
    result = project.run(run_config=insight_run_config({RENEWALS: config, REVENUE: config}))
    assert {RENEWALS, REVENUE} <= materialized(result)
    rows = {
        row[0]: row[1:]
        for row in project.query(
            f"SELECT id, price_source, billing_period, monthly_value FROM insights.{RENEWALS} WHERE tariff_id = 1399999"
        )
    }
    assert rows == {
        ids["no_period"]: ("contract", "unknown", None),
        ids["half_month"]: ("contract", "unknown", None),
        ids["zero_and_zero"]: ("contract", "unknown", None),
        ids["words"]: ("contract", "unknown", None),
        ids["no_price_at_all"]: ("unknown", "monthly", None),
        ids["plan_price_as_text"]: ("tariff", "every 3 months", Decimal("66.3333")),
    }
    for name, record_id in ids.items():
        value, period = expected_money(sim, sim.get(COWORKER_CONTRACTS, record_id))
        assert rows[record_id][1:] == (period, value), name
    [odd] = project.query(
        f"SELECT billing_period, contracts, monthly_recurring_revenue, contracts_value_unknown"
        f" FROM insights.{REVENUE} WHERE id = 1399999"
    )
    assert odd == ("every 3 months, monthly, unknown", 6, Decimal("66.3333"), 5)


def test_a_metrics_table_an_earlier_version_wrote_gains_the_new_column_and_keeps_its_days(money_project):
    project = money_project
    project.run()
    shift_history(project, 1)  # as if the sync had run yesterday, the last day with a partition
    yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
    added_since = ("contracts_value_unknown", "reconstructed")
    earlier_columns = {name: kind for name, (kind, _) in METRICS_COLUMNS.items() if name not in added_since}
    with project.warehouse.get_connection() as conn:
        conn.execute("CREATE SCHEMA IF NOT EXISTS insights")
        conn.execute(
            "CREATE TABLE insights.account_metrics_daily ("
            + ", ".join(f"{name} {kind}" for name, kind in earlier_columns.items())
            + ")"
        )
        conn.execute(
            "INSERT INTO insights.account_metrics_daily VALUES (DATE '2026-01-05', 'EUR', 123.5, 3, 0, 0, 0, 0)"
        )
    project.defs.resolve_job_def("nexudus_account_metrics").execute_in_process(
        instance=project.instance, partition_key=yesterday.isoformat()
    )
    kept = project.query(
        "SELECT monthly_recurring_revenue, contracts_value_unknown, reconstructed FROM insights.account_metrics_daily"
        " WHERE day = DATE '2026-01-05'"
    )
    assert kept == [(Decimal("123.5"), None, None)]
    counted = project.query(
        "SELECT currency, contracts_value_unknown, monthly_recurring_revenue FROM insights.account_metrics_daily"
        " WHERE day = ? AND currency IS NOT NULL",
        [yesterday],
    )
    assert {currency for currency, _, _ in counted} == {"EUR", "GBP"}
    assert all(unknown == 0 and revenue > 0 for _, unknown, revenue in counted)


def test_the_simulator_process_sends_drifted_records_when_told():
    arguments = ["--tokens", "3", "--contracts", "2", "--passes", "2", "--schema-drift"]
    with running_simulator(arguments) as simulator:
        auth = (DEFAULT_USERNAME, DEFAULT_PASSWORD)
        tokens = httpx.get(f"{simulator.base_url}/{ACCESS_TOKENS.path}", auth=auth).json()["Records"]
        contracts = httpx.get(f"{simulator.base_url}/{COWORKER_CONTRACTS.path}", auth=auth).json()["Records"]
        simulator.process.send_signal(signal.SIGTERM)
        assert simulator.process.wait(timeout=5) == 0
    assert len(tokens) == 3 and all(re.fullmatch(r"\d+ min", token["MinutesLeft"]) for token in tokens)
    assert all(re.fullmatch(r"\d+ seats", contract["Quantity"]) for contract in contracts)
