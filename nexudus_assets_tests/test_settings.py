"""The environment, read in one place: documented defaults, refused values, secrets left unresolved."""

import ast
from pathlib import Path

import dagster as dg
import pytest

from nexudus_assets.definitions import build_resources, load_defs
from nexudus_assets.nexudus import ACCESS_TOKENS, RateLimits, ResponseFormatError, Window
from nexudus_assets.nexudus.auth import TotpSecretError
from nexudus_assets.resources import Pacing
from nexudus_assets.settings import Settings, SettingsError
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME

PACKAGE = Path(__file__).resolve().parents[1] / "nexudus_assets"

#: The defaults README and deploy/.env.example give, spelled as a user would set them.
DOCUMENTED_DEFAULTS = {
    "NEXUDUS_BASE_URL": "https://spaces.nexudus.com/api",
    "NEXUDUS_AUTH": "basic",
    "NEXUDUS_PAGE_SIZE": "1000",
    "NEXUDUS_REQUEST_DEADLINE": "60",
    "NEXUDUS_MAX_BODY_BYTES": "67108864",
    "NEXUDUS_MAX_PAGES": "100000",
    "NEXUDUS_PACING": "on",
    "NEXUDUS_MIN_INTERVAL_MS": "100",
    "NEXUDUS_MAX_PER_MINUTE": "120",
    "NEXUDUS_MAX_PER_HOUR": "5000",
    "NEXUDUS_MAX_PER_DAY": "200000",
    "NEXUDUS_MAX_WRITES_PER_MINUTE": "60",
    "NEXUDUS_MAX_WRITES_PER_DAY": "5000",
    "NEXUDUS_PACING_MARGIN_MS": "10",
    "NEXUDUS_THROTTLE_PATIENCE": "900",
    "NEXUDUS_DUCKDB_PATH": "data/warehouse.duckdb",
    "NEXUDUS_WAREHOUSE_LOCK_TIMEOUT": "120",
    "NEXUDUS_COMMANDS_LIVE": "false",
    "NEXUDUS_SYNC_CRON": "0 * * * *",
    "NEXUDUS_FULL_REFRESH_CRON": "30 2 * * *",
    "NEXUDUS_FRESHNESS_CRON": "45 * * * *",
    "NEXUDUS_MAX_SYNC_AGE_HOURS": "3",
}


def test_the_documented_defaults_are_the_defaults():
    assert Settings.from_env(DOCUMENTED_DEFAULTS) == Settings.from_env({}) == Settings()
    assert Pacing().rate_limits() == RateLimits()


def test_every_variable_is_read_in_the_settings_module_only():
    readers = []
    for path in PACKAGE.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in {"environ", "getenv"}:
                readers.append(f"{path.relative_to(PACKAGE)}:{node.lineno}")
    assert readers and all(reader.startswith("settings.py:") for reader in readers), readers


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("NEXUDUS_PAGE_SIZE", "many", "a whole number"),
        ("NEXUDUS_PAGE_SIZE", "1001", "at most 1000"),
        ("NEXUDUS_AUTH", "digest", "basic or bearer"),
        ("NEXUDUS_REQUEST_DEADLINE", "0", "above 0"),
        ("NEXUDUS_MAX_PER_MINUTE", "1.5", "a whole number"),
        ("NEXUDUS_MAX_SYNC_AGE_HOURS", "-1", "above 0"),
        ("NEXUDUS_METRICS_START_DATE", "2026-13-01", "YYYY-MM-DD"),
        ("NEXUDUS_SYNC_CRON", " ", "empty"),
        ("NEXUDUS_SENSOR_INTERVAL_SECONDS", "-5", "at least 0"),
        ("NEXUDUS_BASE_URL", "spaces.nexudus.com/api", "absolute URL"),
        ("NEXUDUS_BASE_URL", "ftp://spaces.nexudus.com/api", "https://"),
        ("NEXUDUS_BASE_URL", "http://spaces.nexudus.com/api", "loopback"),
        ("NEXUDUS_BASE_URL", "http://10.0.0.5:8765/api", "loopback"),
        ("NEXUDUS_BASE_URL", "https://spaces.nexudus.com/api\n", "whitespace"),
        ("NEXUDUS_BASE_URL", " https://spaces.nexudus.com/api", "whitespace"),
        ("NEXUDUS_BASE_URL", "https://spaces.nexudus .com/api", "whitespace"),
        ("NEXUDUS_COMMANDS_LIVE", "1", "true or false"),
        ("NEXUDUS_COMMANDS_LIVE", "yes", "true or false"),
        ("NEXUDUS_COMMANDS_LIVE", "on", "true or false"),
        ("NEXUDUS_COMMANDS_LIVE", "true ", "true or false"),
        ("NEXUDUS_PACING", "off ", "on or off"),
        ("NEXUDUS_PACING", "0", "on or off"),
        ("NEXUDUS_THROTTLE_PATIENCE", "0", "above 0"),
        ("NEXUDUS_THROTTLE_PATIENCE", "forever", "a number"),
        ("NEXUDUS_CLIENT_ID", "nexudus assets", "whitespace"),
    ],
)
def test_a_value_that_cannot_be_used_is_refused_naming_the_variable(name, value, problem):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({name: value})
    assert name in str(refused.value) and problem in str(refused.value)


@pytest.mark.parametrize(
    ("url", "accepted"),
    [
        ("https://spaces.nexudus.com/api", True),
        ("HTTPS://spaces.nexudus.com/api", True),
        ("http://127.0.0.1:8765/api", True),
        ("http://127.8.9.10/api", True),
        ("http://[::1]:8765/api", True),
        ("http://localhost:8765/api", True),
        ("http://127.0.0.1.example.com/api", False),
        ("http://[::2]/api", False),
    ],
)
def test_the_base_url_is_https_or_plain_http_to_this_machine_only(url, accepted):
    if accepted:
        assert Settings.from_env({"NEXUDUS_BASE_URL": url}).nexudus_api.base_url == url
    else:
        with pytest.raises(SettingsError, match="NEXUDUS_BASE_URL"):
            Settings.from_env({"NEXUDUS_BASE_URL": url})


@pytest.mark.parametrize(("value", "live"), [("true", True), ("TRUE", True), ("False", False), ("", False)])
def test_switches_take_true_or_false_in_any_case(value, live):
    assert Settings.from_env({"NEXUDUS_COMMANDS_LIVE": value}).nexudus_api.commands_live is live
    pacing = Settings.from_env({"NEXUDUS_PACING": value or "on"}).nexudus_api.pacing
    assert pacing.enabled is (live or not value)


@pytest.mark.parametrize(
    "url", ["https://hooks.example.com/a b", "https://hooks.example.com/x\n", "ftp://h/x", "hooks"]
)
def test_a_bad_webhook_url_is_refused_at_load_without_repeating_it(url):
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"NEXUDUS_ALERT_WEBHOOK_URL": url})
    assert "NEXUDUS_ALERT_WEBHOOK_URL" in str(refused.value) and url.strip() not in str(refused.value)


def test_optional_settings_read_empty_as_none():
    empty = dict.fromkeys(
        (
            "NEXUDUS_TOTP",
            "NEXUDUS_LEDGER_PATH",
            "NEXUDUS_ALERT_WEBHOOK_URL",
            "NEXUDUS_COMMAND_RULES",
            "NEXUDUS_SENSOR_INTERVAL_SECONDS",
            "NEXUDUS_COMMANDS_LIVE",
        ),
        "",
    )
    assert Settings.from_env(empty) == Settings()


def test_pacing_is_a_resource_field_with_the_numbers_from_the_environment():
    paced = Settings.from_env({"NEXUDUS_MAX_PER_MINUTE": "30", "NEXUDUS_MAX_WRITES_PER_DAY": "7"}).nexudus_api.pacing
    limits = paced.rate_limits()
    assert Window(requests=30, seconds=60) in limits.all_methods
    assert Window(requests=7, seconds=86_400) in limits.writes
    assert Settings.from_env({"NEXUDUS_PACING": "OFF"}).nexudus_api.pacing.rate_limits() == RateLimits.unlimited()
    resource = build_resources(Settings.from_env({"NEXUDUS_PACING": "off"}))["nexudus_api"]
    assert resource.pacing == Pacing(enabled=False)


def test_secrets_stay_environment_variables_and_never_reach_the_definitions():
    secrets = {
        "NEXUDUS_PASSWORD": "pw-never-resolved",
        "NEXUDUS_TOTP": "JBSWY3DPEHPK3PXP",
        "NEXUDUS_ALERT_WEBHOOK_URL": "https://hooks.example.com/never-resolved",
    }
    settings = Settings.from_env({**secrets, "NEXUDUS_USERNAME": "ops@example.com"})
    assert (settings.nexudus_api.password, settings.nexudus_api.totp, settings.alert_webhook_url) == (
        dg.EnvVar("NEXUDUS_PASSWORD"),
        dg.EnvVar("NEXUDUS_TOTP"),
        dg.EnvVar("NEXUDUS_ALERT_WEBHOOK_URL"),
    )
    resources = build_resources(settings)
    shown = repr(settings) + repr(resources)
    assert not [name for name, value in secrets.items() if value in shown]


def test_the_definitions_are_built_from_the_settings():
    defs = load_defs(
        Settings.from_env(
            {
                "NEXUDUS_SYNC_CRON": "5 * * * *",
                "NEXUDUS_MAX_SYNC_AGE_HOURS": "7.5",
                "NEXUDUS_SENSOR_INTERVAL_SECONDS": "11",
                "NEXUDUS_METRICS_START_DATE": "2025-06-01",
            }
        )
    )
    assert defs.resolve_schedule_def("nexudus_sync_schedule").cron_schedule == "5 * * * *"
    assert {sensor.minimum_interval_seconds for sensor in defs.sensors} == {11}
    check_key = dg.AssetCheckKey(dg.AssetKey(ACCESS_TOKENS.table), "synced_recently")
    [check] = [checks for checks in defs.asset_checks or [] if check_key in checks.check_keys]
    assert "less than 7.5 hours" in (check.get_spec_for_check_key(check_key).description or "")
    partitions = defs.resolve_assets_def("account_metrics_daily").partitions_def
    assert partitions is not None and partitions.get_first_partition_key() == "2025-06-01"


def test_the_client_gets_the_request_bounds_from_the_settings(running, monkeypatch):
    monkeypatch.setenv("NEXUDUS_USERNAME", DEFAULT_USERNAME)
    monkeypatch.setenv("NEXUDUS_PASSWORD", DEFAULT_PASSWORD)
    settings = Settings.from_env(
        {
            "NEXUDUS_BASE_URL": running.base_url,
            "NEXUDUS_PACING": "off",
            "NEXUDUS_REQUEST_DEADLINE": "9",
            "NEXUDUS_MAX_PAGES": "4",
            "NEXUDUS_MAX_BODY_BYTES": "2000",
        }
    )
    with dg.build_resources({"nexudus_api": build_resources(settings)["nexudus_api"]}) as resources:
        client = resources.nexudus_api.get_client()
    with client:
        assert (client.request_deadline, client.max_pages) == (9.0, 4)
        with pytest.raises(ResponseFormatError, match="max_body_bytes"):
            client.list_page(ACCESS_TOKENS)


@pytest.mark.parametrize(
    "secret",
    ["JBSWY3DPEHPK3PXP", "JBSWY3DPEHPK3PXPJBSWY3DPEHPK3PXP", "jbsw y3dp ehpk 3pxp"],
    ids=["80-bit", "160-bit", "grouped-lowercase"],
)
def test_totp_secrets_of_80_and_160_bits_sign_in(start_simulator, secret):
    running = start_simulator(seed=6, tokens=2, totp_secret=secret.replace(" ", "").upper())
    with running.client(auth="bearer", totp=secret) as client:
        assert len(list(client.iter_records(ACCESS_TOKENS))) == 2


@pytest.mark.parametrize("secret", ["JBSWY3DP", "not-base32!", "12345"])
def test_an_unusable_totp_secret_fails_the_run_naming_the_variable(running, tmp_path, monkeypatch, secret):
    monkeypatch.setenv("NEXUDUS_TOTP", secret)
    monkeypatch.setenv("NEXUDUS_USERNAME", DEFAULT_USERNAME)
    monkeypatch.setenv("NEXUDUS_PASSWORD", DEFAULT_PASSWORD)
    settings = Settings.from_env(
        {"NEXUDUS_BASE_URL": running.base_url, "NEXUDUS_AUTH": "bearer", "NEXUDUS_TOTP": secret}
    )
    resource = build_resources(settings)["nexudus_api"]
    with pytest.raises(dg.DagsterResourceFunctionError) as refused, dg.build_resources({"nexudus_api": resource}):
        pass
    cause = refused.value.__cause__
    assert isinstance(cause, TotpSecretError) and "NEXUDUS_TOTP" in str(cause)
    assert secret not in str(cause)
    assert running.sim.request_log == []
