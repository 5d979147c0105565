"""The accounts file (NEXUDUS_ACCOUNTS): read into one `Settings` per account, and built into definitions
where every name of one account carries it."""

from pathlib import Path

import dagster as dg
import pytest

from nexudus_assets.definitions import load_defs, load_deployment_defs
from nexudus_assets.names import ACCOUNT_TAG, AccountNames
from nexudus_assets.settings import Deployment, Settings, SettingsError

TWO_ACCOUNTS = """\
accounts:
  - name: brand_a
    base_url: https://brand-a.example.com/api
    secrets: {username: BRAND_A_USER, password: BRAND_A_PASSWORD}
    settings:
      NEXUDUS_MAX_PER_MINUTE: 60
      NEXUDUS_COMMANDS_LIVE: true
  - name: brand_b
    base_url: https://brand-b.example.com/api
    auth: bearer
    secrets:
      username: BRAND_B_USER
      password: BRAND_B_PASSWORD
      totp: BRAND_B_TOTP
      alert_webhook_url: BRAND_B_WEBHOOK
"""


def deployment(tmp_path: Path, text: str, **environ: str) -> Deployment:
    path = tmp_path / "accounts.yaml"
    path.write_text(text)
    return Deployment.from_env({"NEXUDUS_ACCOUNTS": str(path), **environ})


def test_without_an_accounts_file_the_one_account_is_the_environment_under_the_plain_names():
    environ = {"NEXUDUS_BASE_URL": "https://spaces.example.com/api", "NEXUDUS_SYNC_CRON": "15 * * * *"}
    [account] = Deployment.from_env(environ).accounts
    assert account.names == AccountNames()
    assert account.settings == Settings.from_env(environ)


def test_each_account_has_its_own_url_secrets_limits_and_warehouse_and_shares_the_rest(tmp_path):
    found = deployment(
        tmp_path,
        TWO_ACCOUNTS,
        NEXUDUS_SYNC_CRON="15 * * * *",
        NEXUDUS_DUCKDB_PATH="data/shared.duckdb",
        NEXUDUS_BASE_URL="https://elsewhere.example.com/api",
        BRAND_B_TOTP="JBSWY3DPEHPK3PXP",
        BRAND_B_WEBHOOK="https://hooks.example.com/b",
    )
    a, b = (account.settings for account in found.accounts)
    assert [account.names.account for account in found.accounts] == ["brand_a", "brand_b"]
    assert (a.nexudus_api.base_url, b.nexudus_api.base_url) == (
        "https://brand-a.example.com/api",
        "https://brand-b.example.com/api",
    )
    assert (a.nexudus_api.auth, b.nexudus_api.auth) == ("basic", "bearer")
    # Secrets stay the variables the file names, resolved by Dagster in the run.
    assert a.nexudus_api.username == dg.EnvVar("BRAND_A_USER")
    assert b.nexudus_api.password == dg.EnvVar("BRAND_B_PASSWORD")
    assert b.nexudus_api.totp == dg.EnvVar("BRAND_B_TOTP") and a.nexudus_api.totp is None
    assert b.alert_webhook_url == dg.EnvVar("BRAND_B_WEBHOOK") and a.alert_webhook_url is None
    # Its own limits and switches; what the file leaves out comes from the environment...
    assert (a.nexudus_api.pacing.max_per_minute, b.nexudus_api.pacing.max_per_minute) == (60, 120)
    assert (a.nexudus_api.commands_live, b.nexudus_api.commands_live) == (True, False)
    assert a.sync_cron == b.sync_cron == "15 * * * *"
    # ...but never what would mix two accounts: each has its own warehouse.
    assert (a.duckdb_path, b.duckdb_path) == ("data/brand_a.duckdb", "data/brand_b.duckdb")
    assert found.from_file and found.across_accounts_path == "data/across_accounts.duckdb"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (TWO_ACCOUNTS.replace("NEXUDUS_MAX_PER_MINUTE", "NEXUDUS_PASSWORD"), "NEXUDUS_PASSWORD is a secret"),
        (TWO_ACCOUNTS.replace("NEXUDUS_MAX_PER_MINUTE", "NEXUDUS_MAX_PER_MINUT"), "NEXUDUS_MAX_PER_MINUT are not"),
        (TWO_ACCOUNTS.replace("NEXUDUS_MAX_PER_MINUTE: 60", "NEXUDUS_MAX_PER_MINUTE: many"), "NEXUDUS_MAX_PER_MINUTE"),
        (TWO_ACCOUNTS.replace("name: brand_b", "name: Brand-B"), "account name 'Brand-B'"),
        (TWO_ACCOUNTS.replace("name: brand_b", "name: brand_a"), "share the warehouse"),
        (
            TWO_ACCOUNTS.replace("brand-b.example.com", "brand-a.example.com").replace("BRAND_B_USER", "BRAND_A_USER"),
            "are the same account",
        ),
        (TWO_ACCOUNTS.replace("      password: BRAND_B_PASSWORD\n", ""), "account 'brand_b'.secrets.password"),
        (TWO_ACCOUNTS.replace("username: BRAND_B_USER", "username: ops@example.com"), "name of an environment"),
        (TWO_ACCOUNTS.replace("base_url: https://brand-b", "base_url: http://brand-b"), "NEXUDUS_BASE_URL must"),
        (TWO_ACCOUNTS + "    auth: basic\n", "given twice"),
        ("accounts: []\n", "accounts"),
    ],
)
def test_a_wrong_accounts_file_names_the_account_and_the_field(tmp_path, text, message):
    with pytest.raises(SettingsError, match="accounts file") as raised:
        deployment(tmp_path, text)
    assert message in str(raised.value)
    if "brand_b" in message or "Brand-B" in message:
        assert "brand_b" in str(raised.value) or "Brand-B" in str(raised.value)


def test_every_name_of_an_account_carries_it_and_nothing_reaches_another_accounts_resources(tmp_path):
    defs = load_deployment_defs(deployment(tmp_path, TWO_ACCOUNTS))
    repository = defs.get_repository_def()
    accounts = ("brand_a", "brand_b")

    def account_of(name: str) -> str:
        [account] = [account for account in accounts if name.startswith(f"{account}__")]
        return account

    # The file across accounts reads every account's published warehouse; nothing else spans accounts.
    spanning = {"across_accounts", "nexudus_across_accounts", "nexudus_across_accounts_schedule", "__ASSET_JOB"}
    keys = repository.asset_graph.get_all_asset_keys() - {dg.AssetKey("across_accounts")}
    assert {key.path[0] for key in keys} == set(accounts)
    for assets in set(repository.assets_defs_by_key.values()):
        if assets.keys == {dg.AssetKey("across_accounts")}:
            assert not assets.required_resource_keys - {"io_manager"}
            continue
        [account] = {key.path[0] for key in assets.keys}
        assert {account_of(key) for key in assets.required_resource_keys - {"io_manager"}} == {account}
        assert {dep.path[0] for key in assets.keys for dep in assets.asset_deps[key]} <= {account}
    for job in repository.get_all_jobs():
        if job.name in spanning:
            continue
        assert job.tags[ACCOUNT_TAG] == account_of(job.name)
        assert {key.path[0] for key in job.asset_layer.asset_graph.get_all_asset_keys()} <= {account_of(job.name)}
    for sensor in repository.sensor_defs:
        assert {account_of(key) for key in sensor.required_resource_keys} == {account_of(sensor.name)}
        assert all(account_of(target.job_name) == account_of(sensor.name) for target in sensor.targets)
    for schedule in repository.schedule_defs:
        if schedule.name in spanning:
            continue
        assert account_of(schedule.job_name) == account_of(schedule.name)
    assert {account_of(key) for key in repository.get_top_level_resources()} == set(accounts)


def test_one_account_from_the_file_or_the_environment_builds_the_same_kinds_of_definitions(tmp_path):
    plain = load_defs(Settings()).get_repository_def()
    [account] = deployment(tmp_path, TWO_ACCOUNTS).accounts[:1]
    named = load_deployment_defs(Deployment(accounts=(account,))).get_repository_def()
    assert sorted(f"brand_a__{job.name}" for job in plain.get_all_jobs() if job.name != "__ASSET_JOB") == sorted(
        job.name for job in named.get_all_jobs() if job.name != "__ASSET_JOB"
    )
    assert {("brand_a", *key.path) for key in plain.asset_graph.get_all_asset_keys()} == {
        tuple(key.path) for key in named.asset_graph.get_all_asset_keys()
    }
    assert sorted(f"brand_a__{sensor.name}" for sensor in plain.sensor_defs) == sorted(
        sensor.name for sensor in named.sensor_defs
    )


def test_the_file_across_accounts_depends_on_every_account_and_names_those_not_synced_yet(tmp_path):
    found = deployment(tmp_path, TWO_ACCOUNTS, NEXUDUS_DUCKDB_PATH=str(tmp_path / "data" / "warehouse.duckdb"))
    assert found.across_accounts_path == str(tmp_path / "data" / "across_accounts.duckdb")
    defs = load_deployment_defs(found)
    graph = defs.resolve_asset_graph()
    across = dg.AssetKey("across_accounts")
    parents = graph.get(across).parent_keys
    assert {key.path[0] for key in parents} == {"brand_a", "brand_b"}
    assert dg.AssetKey(["brand_b", "account_metrics_daily"]) in parents
    job = defs.resolve_job_def("nexudus_across_accounts")
    assert ACCOUNT_TAG not in job.tags  # it reads published files only: it runs beside any account's runs
    result = job.execute_in_process(instance=dg.DagsterInstance.ephemeral())
    [materialization] = result.asset_materializations_for_node("across_accounts")
    assert materialization.metadata["not_synced"].value == ["brand_a", "brand_b"]
    assert (tmp_path / "data" / "across_accounts.duckdb").exists()
    assert "across_accounts" not in {
        key.to_user_string() for key in load_defs(Settings()).resolve_asset_graph().get_all_asset_keys()
    }
