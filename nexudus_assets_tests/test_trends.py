"""`account_metrics_daily` from day one: days before the first sync reconstructed from the records'
own dates, days after it from the history, a backfill over both in one run."""

import datetime as dt
from collections import defaultdict
from decimal import Decimal

import dagster as dg

from nexudus_assets.assets.trends import COLUMNS, default_start_date
from nexudus_assets.nexudus import COWORKER_CONTRACTS, COWORKER_TIME_PASSES
from nexudus_assets.resources import WarehouseResource
from nexudus_assets_tests.test_sync_assets import shift_history
from nexudus_assets_tests.utils import Project, expected_money

METRICS = dg.AssetKey("account_metrics_daily")
#: The tags `dagster asset materialize --partition-range` and a single-run backfill give their run.
RANGE_START, RANGE_END = "dagster/asset_partition_range_start", "dagster/asset_partition_range_end"


def reconstructed_figures(sim, day: dt.date) -> dict[str | None, tuple[Decimal, int, int, int, int]]:
    """Per currency: (revenue, active, new, cancelled, passes used) on `day`, worked out from the
    simulator's records as the first sync served them (nothing changed since)."""
    start = dt.datetime.combine(day, dt.time())
    end = start + dt.timedelta(days=1)
    figures: dict = defaultdict(lambda: [Decimal(0), 0, 0, 0, 0])
    for record in sim.records(COWORKER_CONTRACTS):
        contract = COWORKER_CONTRACTS.model.model_validate(record)
        currency = sim.world.tariff_by_id[contract.tariff_id].business.currency
        began = contract.start_date or contract.created_on
        if contract.cancellation_date is not None:
            still_running = contract.cancellation_date >= end
        else:
            still_running = bool(contract.active) and not contract.cancelled
        row = figures[currency]
        if began is not None and began < end and still_running:
            value, _ = expected_money(sim, record)
            row[0] += value or 0
            row[1] += 1
        row[2] += contract.start_date is not None and start <= contract.start_date < end
        row[3] += contract.cancellation_date is not None and start <= contract.cancellation_date < end
    for record in sim.records(COWORKER_TIME_PASSES):
        time_pass = COWORKER_TIME_PASSES.model.model_validate(record)
        currency = sim.world.time_pass_by_id[time_pass.time_pass_id].business.currency
        figures[currency][4] += time_pass.used_date is not None and start <= time_pass.used_date < end
    return {currency: tuple(row) for currency, row in figures.items()}


def test_one_backfill_run_reaches_before_the_first_sync_with_figures_from_the_records_dates(
    start_simulator, tmp_path, dagster_instance
):
    project = Project(
        start_simulator(seed=21, tokens=40, contracts=120, passes=80),
        tmp_path / "warehouse.duckdb",
        instance=dagster_instance,
    )
    project.run()
    shift_history(project, 3)  # as if the first sync had run three days ago
    today = dt.datetime.now(dt.UTC).date()
    first, last = today - dt.timedelta(days=60), today - dt.timedelta(days=1)
    days = [first + dt.timedelta(days=n) for n in range((last - first).days + 1)]
    assets = project.defs.resolve_assets_def("account_metrics_daily")
    assert assets.backfill_policy == dg.BackfillPolicy.single_run()

    result = project.defs.resolve_job_def("nexudus_account_metrics").execute_in_process(
        instance=project.instance, tags={RANGE_START: first.isoformat(), RANGE_END: last.isoformat()}
    )

    runs = project.instance.get_runs(filters=dg.RunsFilter(job_name="nexudus_account_metrics"))
    assert [run.run_id for run in runs] == [result.run_id], "the whole range is one run"
    names = list(COLUMNS)
    stored: dict = defaultdict(dict)
    for row in project.query("SELECT * FROM insights.account_metrics_daily ORDER BY day"):
        values = dict(zip(names, row, strict=True))
        stored[values["day"]][values["currency"]] = values
    assert sorted(stored) == days
    # The first sync was three days ago: the days that ended before it are reconstructed, the rest are not.
    history_begins = today - dt.timedelta(days=3)
    reconstructed_days = [day for day in days if day < history_begins]
    for day in days:
        assert {row["reconstructed"] for row in stored[day].values()} == {day in reconstructed_days}, day
    for day in reconstructed_days:
        expected = reconstructed_figures(project.sim, day)
        found = {
            currency: (
                row["monthly_recurring_revenue"],
                row["active_contracts"],
                row["new_contracts"],
                row["cancelled_contracts"],
                row["passes_used"],
            )
            for currency, row in stored[day].items()
            if currency is not None
        }
        assert found == expected, day
        assert stored[day][None]["minutes_consumed"] is None, "token minutes before the first sync are unknown"
    oldest = reconstructed_days[0]
    oldest_figures = reconstructed_figures(project.sim, oldest).values()
    assert all(revenue > 0 and active > 0 for revenue, active, *_ in oldest_figures), "a year back is not empty"
    assert sum(row["new_contracts"] for day in reconstructed_days for row in stored[day].values()) > 0
    assert sum(row["passes_used"] for day in reconstructed_days for row in stored[day].values()) > 0

    # One materialization per day, each with its own figures and row count.
    events = {
        event.partition: event.metadata
        for event in (e.materialization for e in result.get_asset_materialization_events())
        if event.asset_key == METRICS
    }
    assert sorted(events) == [day.isoformat() for day in days]
    for day in days:
        shown = events[day.isoformat()]
        rows = stored[day]
        assert shown["dagster/partition_row_count"].value == len(rows)
        assert shown["reconstructed"].value is (day in reconstructed_days)
        assert shown["active_contracts"].value == sum(row["active_contracts"] for row in rows.values())
        for currency, row in rows.items():
            if currency is not None:
                revenue = shown[f"monthly_recurring_revenue_{currency}"].value
                assert revenue == float(row["monthly_recurring_revenue"])
        assert ("minutes_consumed" in shown) is (day not in reconstructed_days)
    recorded = project.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=METRICS, asset_partitions=[oldest.isoformat()]), limit=1
    ).records
    assert recorded[0].asset_materialization is not None
    assert recorded[0].asset_materialization.metadata["reconstructed"].value is True


def test_the_first_partition_is_a_year_before_the_first_sync_or_before_today_without_one(start_simulator, tmp_path):
    warehouse = WarehouseResource(database=str(tmp_path / "warehouse.duckdb"))
    today = dt.date(2026, 12, 2)
    assert default_start_date(warehouse, today) == "2025-12-02", "nothing synced yet"
    project = Project(start_simulator(seed=22, tokens=5, contracts=5, passes=5), warehouse.database)
    project.run()
    shift_history(project, 40)
    synced_on = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=40)
    assert default_start_date(warehouse, today) == (synced_on - dt.timedelta(days=365)).isoformat()
