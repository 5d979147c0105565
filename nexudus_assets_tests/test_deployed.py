"""The deployed shape, end to end: PostgreSQL, a gRPC code server, the daemon and the webserver.

Nothing here runs a job or ticks a sensor itself: with the sync cron at every minute, the daemon
alone drives the sync, the insights and checks, the rule sensors, the command runs (dry, then
live), the alert and the recovery. Midway the daemon and the code server are SIGKILLed and
restarted. What happened is read through the webserver's GraphQL, the webhook receiver and the
simulator's own record of the commands it applied.
"""

import os
import shutil
from collections import Counter
from contextlib import ExitStack
from pathlib import Path

import pytest
import yaml

from nexudus_assets.nexudus import ACCESS_TOKENS
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets_tests.deployment import Deployment
from nexudus_assets_tests.postgres import PostgresServer
from nexudus_assets_tests.utils import Webhook

pytestmark = pytest.mark.processes

REPOSITORY = Path(__file__).resolve().parent.parent
#: What `make dev` uses (SQLite, one event database per run), and what production uses.
INSTANCES = {"sqlite": REPOSITORY / "dagster.yaml", "postgres": REPOSITORY / "deploy" / "dagster.yaml"}
SHIPPED_RULES = REPOSITORY / "nexudus_assets" / "command_rules.yaml"
CHECK = "access_tokens.minutes_left_within_included"
NEVER = "0 0 1 1 *"
#: The waits cover one cron minute, a run, and a sensor interval, on a loaded 2-core machine.
CYCLE_SECONDS = 150


@pytest.fixture(params=sorted(INSTANCES))
def deployment(request, tmp_path, start_simulator):
    running = start_simulator(seed=5, tokens=150, contracts=20, passes=20)
    webhook = Webhook()
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(INSTANCES[request.param], home / "dagster.yaml")
    # The shipped rules, each gone live on purpose: live commands still need NEXUDUS_COMMANDS_LIVE.
    rules = yaml.safe_load(SHIPPED_RULES.read_text())
    for rule in rules["rules"]:
        rule["live"] = True
    (tmp_path / "command_rules.yaml").write_text(yaml.safe_dump(rules, sort_keys=False))
    with ExitStack() as stack:
        storage = stack.enter_context(PostgresServer()).fresh_database() if request.param == "postgres" else {}
        env = {
            **os.environ,
            **storage,
            "DAGSTER_HOME": str(home),
            "NEXUDUS_BASE_URL": running.base_url,
            "NEXUDUS_USERNAME": DEFAULT_USERNAME,
            "NEXUDUS_PASSWORD": DEFAULT_PASSWORD,
            "NEXUDUS_PACING": "off",
            "NEXUDUS_DUCKDB_PATH": str(tmp_path / "data" / "warehouse.duckdb"),
            "NEXUDUS_ALERT_WEBHOOK_URL": webhook.url,
            "NEXUDUS_SYNC_CRON": "* * * * *",
            "NEXUDUS_FULL_REFRESH_CRON": NEVER,
            "NEXUDUS_FRESHNESS_CRON": NEVER,
            "NEXUDUS_SENSOR_INTERVAL_SECONDS": "5",
            "NEXUDUS_COMMANDS_LIVE": "false",
            "NEXUDUS_COMMAND_RULES": str(tmp_path / "command_rules.yaml"),
        }
        deployment = Deployment(tmp_path, env)
        deployment.migrate()
        deployment.sim = running.sim
        deployment.webhook = webhook
        try:
            yield deployment
        finally:
            deployment.stop()
            webhook.close()


def finished(runs: list[dict], job: str, status: str = "SUCCESS") -> list[dict]:
    return [run for run in runs if run["jobName"] == job and run["status"] == status]


def test_the_daemon_alone_syncs_checks_alerts_and_acts_through_a_crash(deployment):
    sim, webhook = deployment.sim, deployment.webhook
    token = dict(sim.records(ACCESS_TOKENS)[0])
    sim.put_raw(ACCESS_TOKENS, {**token, "Id": 7, "MinutesIncluded": 60, "MinutesLeft": 90})

    deployment.start_code_server()
    deployment.start_webserver()
    deployment.wait_for("the code location to load over gRPC", deployment.location_loaded, 90)
    deployment.start_daemon()

    # A scheduled sync, its checks, and the rule sensors asking for dry command runs.
    deployment.wait_for("a scheduled sync", lambda: finished(deployment.runs(), "nexudus_sync"), CYCLE_SECONDS)
    deployment.wait_for(
        "a command run", lambda: [r for r in deployment.runs() if r["jobName"] == "nexudus_command"], 60
    )
    # The daemon dies while it launches them; what it queued must still run.
    deployment.kill("daemon")
    deployment.start_daemon()
    deployment.wait_for("a dry command run", lambda: finished(deployment.runs(), "nexudus_command"), 90)
    deployment.wait_for("the failed check's alert", lambda: [t for t in webhook.texts() if CHECK in t], 60)
    assert sim.commands_run == [], "a dry run sent a command"

    # The data is fixed; the daemon and the code server crash; the code server comes back live.
    sim.put_raw(
        ACCESS_TOKENS, {**token, "Id": 7, "MinutesIncluded": 60, "MinutesLeft": 60, "UpdatedOn": "2099-01-01T00:00:00Z"}
    )
    deployment.kill("daemon")
    deployment.kill("code_server")
    deployment.start_code_server(NEXUDUS_COMMANDS_LIVE="true")
    deployment.wait_for("the code location to reload", deployment.location_loaded, 90)
    deployment.start_daemon()

    deployment.wait_for(
        "the recovery", lambda: [t for t in webhook.texts() if f"recovered: {CHECK}" in t], CYCLE_SECONDS
    )
    deployment.wait_for("live commands", lambda: sim.commands_run, 90)
    deployment.wait_for(
        "every run to finish",
        lambda: all(r["status"] in ("SUCCESS", "FAILURE", "CANCELED") for r in deployment.runs()),
        90,
    )

    runs = deployment.runs()
    failed = {r["runId"]: (r["jobName"], deployment.errors(r["runId"])) for r in runs if r["status"] != "SUCCESS"}
    assert failed == {}, deployment.logs()
    texts = webhook.texts()
    assert len([t for t in texts if "check failed" in t and CHECK in t]) == 1, texts
    assert len([t for t in texts if "recovered" in t]) == 1, texts
    assert len(texts) == len(set(texts)), "an alert was repeated"
    sent = Counter((call["key"], record_id) for call in sim.commands_run for record_id in call["ids"])
    assert sent and max(sent.values()) == 1, sent
    for sensor in ("nexudus_alerts", "nexudus_rule_top_up_low_minutes", "nexudus_rule_extend_expiring_passes"):
        failures = [tick["error"] for tick in deployment.ticks(sensor) if tick["status"] == "FAILURE"]
        assert failures == [], (sensor, failures)
