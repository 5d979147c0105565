"""deploy/ as Docker Compose, Dagster and Helm read it (the static half of `make deploy-check`)."""

import copy

import dagster as dg
import pytest
import yaml

from scripts import deploy_check
from scripts.deploy_check import DEPLOY


@pytest.fixture
def compose():
    return deploy_check.load_yaml(DEPLOY / "docker-compose.yaml")


STATIC_CHECKS = dict(deploy_check.static_checks())


@pytest.mark.parametrize("description", STATIC_CHECKS)
def test_the_shipped_deploy_files_pass(description):
    assert STATIC_CHECKS[description]() == []


def test_a_missing_daemon_is_named(compose):
    del compose["services"]["daemon"]

    assert deploy_check.compose_problems(compose) == ["services: daemon missing"]


def test_a_warehouse_mounted_elsewhere_in_one_service_is_found(compose):
    daemon = compose["services"]["daemon"] = copy.deepcopy(compose["services"]["daemon"])
    daemon["volumes"] = ["warehouse:/srv/other"]

    assert deploy_check.compose_problems(compose) == [
        "services.daemon: NEXUDUS_DUCKDB_PATH /opt/dagster/data/warehouse.duckdb is on no named volume"
    ]


def test_a_different_volume_at_the_same_path_is_found(compose):
    daemon = compose["services"]["daemon"] = copy.deepcopy(compose["services"]["daemon"])
    daemon["volumes"] = ["daemon_data:/opt/dagster/data"]
    compose["volumes"]["daemon_data"] = None

    problems = deploy_check.compose_problems(compose)

    assert len(problems) == 1
    assert problems[0].startswith("the warehouse is not the same volume, path and file in every Dagster service")
    assert "daemon: volume daemon_data at /opt/dagster/data" in problems[0]


def test_an_undeclared_volume_and_a_missing_env_file_are_found(compose):
    del compose["volumes"]["warehouse"]
    webserver = compose["services"]["webserver"] = copy.deepcopy(compose["services"]["webserver"])
    del webserver["env_file"]

    problems = deploy_check.compose_problems(compose)

    assert "volumes: warehouse (the warehouse of code_server) is not declared" in problems
    assert "services.webserver.env_file: does not read .env (secrets come from deploy/.env)" in problems
    # Without .env the webserver gets none of the PostgreSQL settings it does not set itself.
    assert "services.webserver: DAGSTER_POSTGRES_PASSWORD is neither in environment nor set in .env.example" in problems


def test_a_variable_the_package_reads_but_the_example_omits_is_named(tmp_path):
    package = tmp_path / "package"
    package.mkdir()
    (package / "settings.py").write_text('import os\nWAIT = os.environ.get("NEXUDUS_NEW_SETTING", "1")\n')
    example = tmp_path / ".env.example"
    example.write_text("DAGSTER_POSTGRES_HOST=postgres\n# NEXUDUS_OTHER=1\n")

    problems = deploy_check.env_example_problems(example, package)

    assert ".env.example: NEXUDUS_NEW_SETTING is not listed" in problems
    assert ".env.example: DAGSTER_POSTGRES_PASSWORD has no value" in problems
    assert ".env.example: DAGSTER_POSTGRES_HOST has no value" not in problems


def test_every_variable_the_package_reads_is_found():
    variables = deploy_check.package_variables()

    assert {"NEXUDUS_USERNAME", "NEXUDUS_PASSWORD", "NEXUDUS_DUCKDB_PATH", "NEXUDUS_SYNC_CRON"} <= variables
    assert "NEXUDUS_PACING" in variables
    assert not [name for name in variables if name.endswith("_")]


def test_an_instance_that_retries_every_job_or_runs_two_at_once_is_refused():
    instance = deploy_check.load_yaml(DEPLOY / "dagster.yaml")
    instance["run_retries"]["max_retries"] = 2
    instance["run_coordinator"]["config"]["max_concurrent_runs"] = 2

    assert deploy_check.instance_problems(instance) == [
        "run_coordinator: not a QueuedRunCoordinator with max_concurrent_runs 1",
        "run_retries: not enabled with max_retries 0 (jobs opt in with the dagster/max_retries tag)",
    ]


def test_the_deployed_instance_settings_are_valid_for_dagster(tmp_path, monkeypatch, postgres_server):
    for name, value in postgres_server.fresh_database().items():
        monkeypatch.setenv(name, value)
    (tmp_path / "dagster.yaml").write_text((DEPLOY / "dagster.yaml").read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    with dg.DagsterInstance.get() as instance:
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        assert isinstance(instance.run_launcher, dg.DefaultRunLauncher)
        assert instance.run_retries_max_retries == 0
        assert instance.run_monitoring_max_runtime_seconds == 3600


def test_run_pods_without_the_warehouse_claim_are_found():
    values = deploy_check.load_yaml(DEPLOY / "helm" / "values.yaml")
    del values["runLauncher"]["config"]["k8sRunLauncher"]["volumeMounts"]

    assert deploy_check.helm_problems(values) == [
        "runLauncher.config.k8sRunLauncher: no PersistentVolumeClaim mounted where NEXUDUS_DUCKDB_PATH points"
    ]


def test_a_workspace_on_the_wrong_port_is_found(compose):
    workspace = yaml.safe_load(
        "load_from: [{grpc_server: {host: code_server, port: 4001, location_name: nexudus_assets}}]"
    )

    assert deploy_check.workspace_problems(workspace, compose, deploy_check.dockerfile_command()) == [
        "load_from.grpc_server.port: 4001, but the code server listens on 4000"
    ]


def test_a_command_job_that_would_be_retried_is_refused():
    tagged = {"dagster/max_retries": "1"}

    @dg.op
    def step() -> None:
        pass

    def tagged_job(name: str) -> dg.JobDefinition:
        @dg.job(name=name, tags=tagged)
        def graph() -> None:
            step()

        return graph

    jobs = [tagged_job(name) for name in deploy_check.JOBS]

    assert deploy_check.retry_problems(dg.Definitions(jobs=jobs)) == [
        "nexudus_command: tagged dagster/max_retries=1; its commands cannot be undone"
    ]
