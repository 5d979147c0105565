"""Runs launched from the command line (`make demo`, scripts/run_job.py) as the UI launches them:
with their repository origin, so the UI lists them under their job."""

import datetime as dt
import os
from pathlib import Path

import dagster as dg
import pytest

from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets_tests.deployment import LOCATION, REPOSITORY, Deployment
from nexudus_assets_tests.utils import Running
from scripts.run_job import launch

pytestmark = pytest.mark.processes

JOB_RUNS = """query JobRuns($params: PipelineSelector!) { pipelineOrError(params: $params) {
    __typename ... on Pipeline { runs { runId status } } } }"""


def code_location_env(running: Running, tmp_path: Path) -> dict[str, str]:
    return {
        **os.environ,
        "NEXUDUS_BASE_URL": running.base_url,
        "NEXUDUS_USERNAME": DEFAULT_USERNAME,
        "NEXUDUS_PASSWORD": DEFAULT_PASSWORD,
        "NEXUDUS_PACING": "off",
        "NEXUDUS_DUCKDB_PATH": str(tmp_path / "data" / "warehouse.duckdb"),
    }


def test_a_launched_sync_carries_its_origin_and_shows_on_its_job_page(
    dagster_instance: dg.DagsterInstance, running: Running, tmp_path: Path
) -> None:
    env = code_location_env(running, tmp_path)
    log_path = tmp_path / "launch.log"
    with log_path.open("w") as log:
        run = launch("nexudus_sync", env=env, tags={"nexudus/demo": "true"}, output=log)
    assert run.status == dg.DagsterRunStatus.SUCCESS, log_path.read_text()[-3000:]
    origin = run.remote_job_origin
    assert origin is not None and origin.job_name == "nexudus_sync"
    assert origin.repository_origin.get_label() == f"{REPOSITORY}@{LOCATION}"
    [listed] = dagster_instance.get_runs(dg.RunsFilter(job_name="nexudus_sync"))
    assert listed.run_id == run.run_id and listed.tags["nexudus/demo"] == "true"
    # Its materializations are the asset pages' latest.
    [latest] = dagster_instance.fetch_materializations(dg.AssetKey("access_tokens"), limit=1).records
    assert latest.run_id == run.run_id

    # One day of the account metrics, as the README runs it; today has no partition until it ends.
    today = dt.datetime.now(dt.UTC).date()
    with pytest.raises(ValueError, match=f"'{today}' is not a partition of nexudus_account_metrics"):
        launch("nexudus_account_metrics", env=env, partition=today.isoformat())
    day = (today - dt.timedelta(days=1)).isoformat()
    with log_path.open("a") as log:
        metrics = launch("nexudus_account_metrics", env=env, partition=day, output=log)
    assert metrics.status == dg.DagsterRunStatus.SUCCESS, log_path.read_text()[-3000:]
    [day_made] = dagster_instance.fetch_materializations(dg.AssetKey("account_metrics_daily"), limit=1).records
    assert day_made.run_id == metrics.run_id and day_made.partition_key == day

    # The job page of the UI reads the job's runs of its repository through this query.
    (tmp_path / "ui").mkdir()
    deployment = Deployment(tmp_path / "ui", env)
    try:
        deployment.start_code_server()
        deployment.start_webserver()
        deployment.wait_for("the code location to load over gRPC", deployment.location_loaded, 120)
        selector = {"pipelineName": "nexudus_sync", "repositoryName": REPOSITORY, "repositoryLocationName": LOCATION}
        job = deployment.graphql(JOB_RUNS, {"params": selector})["pipelineOrError"]
    finally:
        deployment.stop()
    assert job["__typename"] == "Pipeline", job
    assert job["runs"] == [{"runId": run.run_id, "status": "SUCCESS"}]
