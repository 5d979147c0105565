"""The code location loads, and its asset graph is what the README promises (a snapshot)."""

import datetime as dt
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import dagster as dg

from nexudus_assets.definitions import defs, load_defs
from nexudus_assets.settings import Settings

PROJECT = Path(__file__).resolve().parent.parent

RAW = {"access_tokens", "coworker_contracts", "coworker_time_passes"}
LINEAGE = {
    "low_minutes_access_tokens": {"access_tokens"},
    "expiring_access_tokens": {"access_tokens"},
    "upcoming_contract_renewals": {"coworker_contracts"},
    "contracts_cancelling_soon": {"coworker_contracts"},
    "monthly_recurring_revenue_by_tariff": {"coworker_contracts"},
    "expiring_time_passes": {"coworker_time_passes"},
    "time_pass_usage": {"coworker_time_passes"},
    "access_tokens_running_out": {"access_tokens"},
}
TRENDS = {"account_metrics_daily": RAW}
CHECKS = {
    "access_tokens": {
        "ids_unique_not_null",
        "required_fields_present",
        "synced_recently",
        "row_count_stable",
        "rejected_within_limit",
        "deletions_within_limit",
        "minutes_left_within_included",
        "valid_window_ordered",
    },
    "coworker_contracts": {
        "ids_unique_not_null",
        "required_fields_present",
        "synced_recently",
        "row_count_stable",
        "rejected_within_limit",
        "deletions_within_limit",
        "renewal_after_start",
        "tariff_present",
    },
    "coworker_time_passes": {
        "ids_unique_not_null",
        "required_fields_present",
        "synced_recently",
        "row_count_stable",
        "rejected_within_limit",
        "deletions_within_limit",
        "remaining_uses_within_total",
    },
}


def test_defs_validate():
    dg.Definitions.validate_loadable(defs)


def test_the_cli_validates_the_code_location():
    finished = subprocess.run(
        [sys.executable, "-m", "dagster", "definitions", "validate", "-m", "nexudus_assets.definitions"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert finished.returncode == 0, finished.stderr[-2000:]


def test_loading_the_definitions_warns_of_nothing():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded = load_defs(Settings.from_env())
        dg.Definitions.validate_loadable(loaded)
        loaded.get_repository_def().get_all_jobs()
    assert [f"{w.category.__name__}: {w.message}" for w in caught] == []


def test_dg_checks_the_project_without_a_warning(tmp_path):
    """`dg check defs`, as `make lint` runs it: the project as pyproject.toml's [tool.dg] names it."""
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(PROJECT / "dagster.yaml", home / "dagster.yaml")
    finished = subprocess.run(
        [str(Path(sys.executable).parent / "dg"), "check", "defs"],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=PROJECT,
        env={**os.environ, "VIRTUAL_ENV": sys.prefix, "DAGSTER_HOME": str(home)},
    )
    output = finished.stdout + finished.stderr
    assert finished.returncode == 0, output[-2000:]
    assert "All definitions loaded successfully" in output
    assert "warning" not in output.lower(), output[-2000:]


def test_the_raw_assets_show_freshness_on_the_sync_age_limit():
    graph = load_defs(Settings(max_sync_age_hours=5)).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        policy = graph.get(key).freshness_policy
        if key.to_user_string() in RAW:
            assert isinstance(policy, dg.FreshnessPolicy)
            assert policy.fail_window.to_timedelta() == dt.timedelta(hours=5)
        else:
            assert policy is None, key


def test_every_asset_links_to_the_line_that_defines_it():
    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        [reference] = graph.get(key).metadata["dagster/code_references"].code_references
        source = Path(reference.file_path)
        assert source.is_relative_to(PROJECT / "nexudus_assets"), reference
        line = source.read_text().splitlines()[reference.line_number - 1]
        assert line.lstrip().startswith(("def ", "@")), (key, line)


def test_with_a_repository_configured_the_assets_link_to_git():
    settings = Settings.from_env(
        {"NEXUDUS_SOURCE_GIT_URL": "https://github.com/example/nexudus-assets", "NEXUDUS_SOURCE_GIT_BRANCH": "prod"}
    )
    graph = load_defs(settings).resolve_asset_graph()
    [reference] = graph.get(dg.AssetKey("access_tokens")).metadata["dagster/code_references"].code_references
    assert isinstance(reference, dg.UrlCodeReference)
    assert reference.url.startswith(
        "https://github.com/example/nexudus-assets/tree/prod/nexudus_assets/assets/raw.py#L"
    )


def test_asset_graph_snapshot():
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == RAW | {"nexudus_commands"} | set(LINEAGE) | set(TRENDS)
    assert graph.get(dg.AssetKey("nexudus_commands")).group_name == "nexudus_raw"
    for name, parents in LINEAGE.items():
        node = graph.get(dg.AssetKey(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents
        assert node.group_name == "nexudus_insights"
        assert node.description
    for name, parents in TRENDS.items():
        node = graph.get(dg.AssetKey(name))
        assert {p.to_user_string() for p in node.parent_keys} == parents
        assert node.group_name == "nexudus_trends" and node.partitions_def is not None
    for name in RAW:
        node = graph.get(dg.AssetKey(name))
        assert node.group_name == "nexudus_raw"
        assert node.kinds == {"nexudus", "duckdb"}
        assert node.owners == ["team:data"]
        assert "dagster/column_schema" in node.metadata
    checks: dict[str, set[str]] = {}
    for key in graph.asset_check_keys:
        checks.setdefault(key.asset_key.to_user_string(), set()).add(key.name)
    assert checks == CHECKS


def test_jobs_and_schedules():
    assert {job.name for job in defs.resolve_all_job_defs() if not job.name.startswith("__")} == {
        "nexudus_sync",
        "nexudus_full_refresh",
        "nexudus_freshness",
        "nexudus_account_metrics",
        "nexudus_command",
    }
    for name in (
        "nexudus_sync_schedule",
        "nexudus_full_refresh_schedule",
        "nexudus_freshness_schedule",
        "nexudus_account_metrics_schedule",
    ):
        schedule = defs.resolve_schedule_def(name)
        assert schedule.default_status == dg.DefaultScheduleStatus.RUNNING
    sensors = {sensor.name: sensor for sensor in defs.sensors}
    assert set(sensors) == {"nexudus_alerts", "nexudus_rule_top_up_low_minutes", "nexudus_rule_extend_expiring_passes"}
    assert all(sensor.default_status == dg.DefaultSensorStatus.RUNNING for sensor in sensors.values())


def test_the_command_catalogue_is_refreshed_nightly_not_hourly():
    def assets_of(job: str) -> set[str]:
        return {key.to_user_string() for key in defs.resolve_job_def(job).asset_layer.selected_asset_keys}

    hourly, nightly = assets_of("nexudus_sync"), assets_of("nexudus_full_refresh")
    assert hourly == RAW | set(LINEAGE)
    assert nightly == hourly | {"nexudus_commands"}
