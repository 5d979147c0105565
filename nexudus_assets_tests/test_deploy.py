"""deploy/ as Docker Compose, Dagster and Helm read it (the static half of `make deploy-check`)."""

import copy
from pathlib import Path

import dagster as dg
import pytest
import yaml

from nexudus_assets.definitions import load_deployment_defs
from nexudus_assets.names import ACCOUNT_TAG
from nexudus_assets.settings import Deployment, Settings
from nexudus_assets.writeback.rules import EXAMPLE_RULES
from nexudus_assets_tests.conftest import LOCAL_INSTANCE
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


def test_an_instance_that_retries_every_job_or_runs_two_runs_of_one_account_at_once_is_refused():
    instance = deploy_check.load_yaml(DEPLOY / "dagster.yaml")
    instance["run_retries"]["max_retries"] = 2
    instance["concurrency"]["runs"]["tag_concurrency_limits"][0]["value"] = "brand_a"

    assert deploy_check.instance_problems(instance) == [
        "concurrency.runs.tag_concurrency_limits: no limit of 1 run per value of the nexudus/account tag"
        " (applyLimitPerUniqueValue)",
        "run_retries: not enabled with max_retries 0 (jobs opt in with the dagster/max_retries tag)",
    ]


#: What the run queue holds runs to, as Dagster reads the instance settings.
ONE_RUN_PER_ACCOUNT = [{"key": "nexudus/account", "value": {"applyLimitPerUniqueValue": True}, "limit": 1}]


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
        queue = instance.get_concurrency_config().run_queue_config
        assert queue and queue.tag_concurrency_limits == ONE_RUN_PER_ACCOUNT
        assert queue.max_concurrent_runs == 10


def test_the_local_instance_runs_one_run_per_account_at_a_time(tmp_path, monkeypatch):
    (tmp_path / "dagster.yaml").write_text(LOCAL_INSTANCE.read_text())
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))

    with dg.DagsterInstance.get() as instance:
        queue = instance.get_concurrency_config().run_queue_config
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        assert queue and queue.tag_concurrency_limits == ONE_RUN_PER_ACCOUNT
        assert queue.max_concurrent_runs == 10


def test_run_pods_without_the_warehouse_claim_are_found():
    values = deploy_check.load_yaml(DEPLOY / "helm" / "values.yaml")
    run_launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_launcher["volumeMounts"] = [m for m in run_launcher["volumeMounts"] if m["name"] != "warehouse"]

    assert deploy_check.helm_problems(values) == [
        "runLauncher.config.k8sRunLauncher: no PersistentVolumeClaim mounted where NEXUDUS_DUCKDB_PATH points"
    ]


def test_helm_values_without_a_pod_per_run_or_the_per_account_limit_or_the_accounts_file_in_the_runs_are_found():
    values = deploy_check.load_yaml(DEPLOY / "helm" / "values.yaml")
    values["runLauncher"]["type"] = "CeleryK8sRunLauncher"
    values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]["tagConcurrencyLimits"] = []
    run_launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    run_launcher["volumeMounts"] = [m for m in run_launcher["volumeMounts"] if m["name"] != "accounts"]
    run_launcher["envSecrets"] = run_launcher["envSecrets"][:1]

    assert deploy_check.helm_problems(values) == [
        "runLauncher.type: not K8sRunLauncher (a pod per run)",
        "runLauncher.config.k8sRunLauncher: no ConfigMap mounted where NEXUDUS_ACCOUNTS points",
        "runLauncher.config.k8sRunLauncher.envSecrets: not the user deployment's (the accounts' secrets)",
        "dagsterDaemon.runCoordinator.config.queuedRunCoordinator.tagConcurrencyLimits: no limit of 1 run per value"
        " of the nexudus/account tag (applyLimitPerUniqueValue)",
    ]


def test_the_helm_values_run_one_run_per_account_in_a_pod_each_with_every_account_s_secrets():
    values = deploy_check.load_yaml(DEPLOY / "helm" / "values.yaml")
    [deployment] = values["dagster-user-deployments"]["deployments"]
    env = {item["name"]: item["value"] for item in deployment["env"]}
    example = deploy_check.load_yaml(deploy_check.ACCOUNTS_EXAMPLE)

    queued = values["dagsterDaemon"]["runCoordinator"]["config"]["queuedRunCoordinator"]
    assert queued["tagConcurrencyLimits"] == ONE_RUN_PER_ACCOUNT
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    # One Secret per account of the example, besides the shared one, in the code server and every run pod.
    secrets = [secret["name"] for secret in deployment["envSecrets"]]
    assert secrets == [
        "nexudus-assets-env",
        *(f"nexudus-account-{a['name'].replace('_', '-')}" for a in example["accounts"]),
    ]
    assert values["runLauncher"]["config"]["k8sRunLauncher"]["envSecrets"] == deployment["envSecrets"]
    assert env["NEXUDUS_ACCOUNTS"] == "/opt/dagster/accounts/accounts.yaml"


def test_the_example_accounts_file_reads_as_three_accounts_each_with_its_warehouse_on_the_volume():
    deployment = Deployment.from_env({"NEXUDUS_ACCOUNTS": str(deploy_check.ACCOUNTS_EXAMPLE)})

    assert deployment.from_file
    assert [account.names.account for account in deployment.accounts] == ["brand_a", "brand_b", "franchise_north"]
    brand_a, brand_b, north = (account.settings for account in deployment.accounts)
    assert [s.duckdb_path for s in (brand_a, brand_b, north)] == [
        f"/opt/dagster/data/{name}.duckdb" for name in ("brand_a", "brand_b", "franchise_north")
    ]
    # brand_a has its own limits and rules; the others keep the deployment's.
    assert (brand_a.nexudus_api.pacing.max_per_minute, brand_b.nexudus_api.pacing.max_per_minute) == (60, 120)
    assert brand_a.command_rules == Path("/opt/dagster/accounts/brand_a_rules.yaml")
    assert brand_b.command_rules == north.command_rules == Settings().command_rules
    assert brand_a.nexudus_api.password == dg.EnvVar("BRAND_A_NEXUDUS_PASSWORD")
    assert north.sync_cron == "10 * * * *"


def test_the_example_accounts_file_builds_each_account_s_jobs(tmp_path):
    # Its rules file is on the deployment's ConfigMap; here the shipped example stands in.
    example = deploy_check.ACCOUNTS_EXAMPLE.read_text()
    assert "/opt/dagster/accounts/brand_a_rules.yaml" in example
    accounts = tmp_path / "accounts.yaml"
    accounts.write_text(example.replace("/opt/dagster/accounts/brand_a_rules.yaml", str(EXAMPLE_RULES)))

    defs = load_deployment_defs(Deployment.from_env({"NEXUDUS_ACCOUNTS": str(accounts)}))

    jobs = {job.name for job in defs.get_repository_def().get_all_jobs()}
    for account in ("brand_a", "brand_b", "franchise_north"):
        assert f"{account}__nexudus_sync" in jobs
        assert defs.resolve_job_def(f"{account}__nexudus_sync").tags[ACCOUNT_TAG] == account


def test_the_readme_shows_the_example_accounts_file_as_shipped():
    readme = (deploy_check.ROOT / "README.md").read_text()
    section = readme[readme.index("## Several Nexudus accounts") :]
    shown = section[section.index("```yaml\n") + len("```yaml\n") : section.index("```\n")]
    example = deploy_check.ACCOUNTS_EXAMPLE.read_text()

    assert shown == example[example.index("accounts:\n") :]


def test_an_accounts_example_with_a_warehouse_off_the_volume_or_an_unshown_secret_is_found(tmp_path):
    example = tmp_path / "accounts.example.yaml"
    example.write_text(
        deploy_check.ACCOUNTS_EXAMPLE.read_text()
        .replace("/opt/dagster/data/brand_b.duckdb", "data/brand_b.duckdb")
        .replace("FRANCHISE_NORTH_NEXUDUS_PASSWORD", "NORTH_PASSWORD")
    )

    assert deploy_check.accounts_example_problems(example) == [
        "accounts.example.yaml: brand_b's warehouse data/brand_b.duckdb is not on the warehouse volume",
        ".env.example: NORTH_PASSWORD (franchise_north's secret) is not shown",
    ]


def test_an_accounts_example_the_code_location_refuses_is_found_naming_the_account(tmp_path):
    example = tmp_path / "accounts.example.yaml"
    example.write_text(deploy_check.ACCOUNTS_EXAMPLE.read_text().replace("NEXUDUS_MAX_PER_HOUR", "NEXUDUS_PASSWORD"))

    [problem] = deploy_check.accounts_example_problems(example)

    assert "account 'brand_a'" in problem and "NEXUDUS_PASSWORD is a secret" in problem


def test_compose_for_several_accounts_without_the_accounts_directory_is_found(compose):
    accounts = deploy_check.load_yaml(deploy_check.ACCOUNTS_COMPOSE)
    assert deploy_check.accounts_compose_problems(compose, accounts) == []
    accounts["services"]["code_server"]["volumes"] = []

    assert deploy_check.accounts_compose_problems(compose, accounts) == [
        "services.code_server: NEXUDUS_ACCOUNTS /opt/dagster/accounts/accounts.yaml is on no directory of deploy/"
    ]


def test_the_single_account_compose_stays_the_default(compose):
    # Without the accounts overlay no service is handed an accounts file.
    for name in deploy_check.DAGSTER_SERVICES:
        assert "NEXUDUS_ACCOUNTS" not in deploy_check.service_environment(compose["services"][name])
    assert "NEXUDUS_ACCOUNTS=" not in (DEPLOY / ".env.example").read_text().replace("# NEXUDUS_ACCOUNTS=", "")


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
