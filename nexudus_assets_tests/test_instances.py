"""The `dagster_instance` fixture: both storages keep runs and events, each where it says it does."""

import os
from pathlib import Path

import dagster as dg
import psycopg2
import pytest
from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage, PostgresScheduleStorage

from nexudus_assets_tests.postgres import PostgresMissingError, server_bin_dir

GREETING = "hello from a tiny job"


@dg.asset
def tiny_asset(context: dg.AssetExecutionContext) -> int:
    context.log.info(GREETING)
    return 1


tiny_job = dg.define_asset_job("tiny_job", selection=[tiny_asset])
tiny_defs = dg.Definitions(assets=[tiny_asset], jobs=[tiny_job])


def postgres_row_count(table: str) -> int:
    connection = psycopg2.connect(
        host=os.environ["DAGSTER_POSTGRES_HOST"],
        port=os.environ["DAGSTER_POSTGRES_PORT"],
        user=os.environ["DAGSTER_POSTGRES_USER"],
        password=os.environ["DAGSTER_POSTGRES_PASSWORD"],
        dbname=os.environ["DAGSTER_POSTGRES_DB"],
    )
    try:
        with connection.cursor() as cursor:
            cursor.execute(f"SELECT count(*) FROM {table}")
            return cursor.fetchone()[0]
    finally:
        connection.close()


def test_a_job_runs_and_its_run_and_events_are_read_back(dagster_instance):
    result = tiny_defs.resolve_job_def("tiny_job").execute_in_process(instance=dagster_instance)

    assert result.success
    run = dagster_instance.get_run_by_id(result.run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.SUCCESS
    logs = dagster_instance.all_logs(result.run_id)
    assert GREETING in [entry.user_message for entry in logs]
    assert dg.DagsterEventType.RUN_SUCCESS in [entry.dagster_event_type for entry in logs]
    materialization = dagster_instance.get_latest_materialization_event(dg.AssetKey("tiny_asset"))
    assert materialization is not None and materialization.run_id == result.run_id


@pytest.mark.parametrize("dagster_instance", ["postgres"], indirect=True)
def test_postgres_storage_keeps_everything_in_the_tests_own_database(dagster_instance):
    result = tiny_defs.resolve_job_def("tiny_job").execute_in_process(instance=dagster_instance)

    assert isinstance(dagster_instance.run_storage, PostgresRunStorage)
    assert isinstance(dagster_instance.event_log_storage, PostgresEventLogStorage)
    assert isinstance(dagster_instance.schedule_storage, PostgresScheduleStorage)
    assert postgres_row_count("runs") == 1
    assert postgres_row_count("event_logs") == len(dagster_instance.all_logs(result.run_id))
    assert not (Path(os.environ["DAGSTER_HOME"]) / "history").exists()


@pytest.mark.parametrize("dagster_instance", ["sqlite"], indirect=True)
def test_sqlite_storage_is_run_sharded_as_in_dagster_dev(dagster_instance):
    result = tiny_defs.resolve_job_def("tiny_job").execute_in_process(instance=dagster_instance)

    history = Path(os.environ["DAGSTER_HOME"]) / "history"
    assert (history / "runs.db").is_file()
    assert (history / "runs" / f"{result.run_id}.db").is_file()
    assert not isinstance(dagster_instance.run_storage, PostgresRunStorage)


@pytest.mark.parametrize("dagster_instance", ["postgres"], indirect=True)
def test_an_event_is_written_to_postgres_and_read_back(dagster_instance):
    # dagster-postgres sends NOTIFY with every event it stores; with SQLAlchemy 2.1 that failed.
    dagster_instance.report_runless_asset_event(
        dg.AssetMaterialization("reported", metadata={"rows": dg.MetadataValue.int(3)})
    )

    event = dagster_instance.get_latest_materialization_event(dg.AssetKey("reported"))
    assert event is not None
    assert event.asset_materialization.metadata["rows"] == dg.MetadataValue.int(3)


def test_a_machine_without_postgresql_is_told_how_to_get_it(tmp_path):
    with pytest.raises(PostgresMissingError, match="make test"):
        server_bin_dir(tmp_path)


def test_the_highest_installed_version_is_used(tmp_path):
    for version in ("9", "15", "13"):
        bin_dir = tmp_path / version / "bin"
        bin_dir.mkdir(parents=True)
        (bin_dir / "initdb").touch()

    assert server_bin_dir(tmp_path) == tmp_path / "15" / "bin"
