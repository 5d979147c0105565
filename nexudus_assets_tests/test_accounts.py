"""Three accounts of one accounts file, each on its own simulator, in one Dagster instance.

The deployed shape: a gRPC code server, the daemon and the webserver as processes, on SQLite and on
PostgreSQL; runs are submitted through GraphQL and pass the instance's run queue. One deployment per
storage serves every test below, in order: the syncs, the queue, a rule, an alert, a killed run and
a terminated run. What happened is read from the instance (through the webserver), each account's warehouse, each
simulator's own record of the commands it received, and each account's webhook receiver.
"""

import contextlib
import os
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
import yaml

from nexudus_assets.names import ACCOUNT_TAG
from nexudus_assets.nexudus import ACCESS_TOKENS, ENTITIES, Entity
from nexudus_assets.resources import WarehouseResource
from nexudus_assets.simulator import Simulator, SimulatorServer
from nexudus_assets_tests.deployment import FINISHED, AccountServer, Deployment, write_accounts, write_instance
from nexudus_assets_tests.utils import Webhook, live_rows, upstream_rows

pytestmark = pytest.mark.processes

NEVER = "0 0 1 1 *"
#: (seed, tokens, contracts, passes) of each account's simulator: three different accounts.
ACCOUNTS = {"brand_a": (11, 200, 60, 60), "brand_b": (12, 150, 40, 90), "brand_c": (13, 120, 80, 40)}
SYNC = "nexudus_sync"
COMMAND = "nexudus_command"
CHECK = "minutes_left_within_included"
#: A bound on one run on a loaded 2-core machine: the run's process starts in several seconds.
RUN_SECONDS = 120
#: The rule of the one account that has one: live, on tokens with fewer than 60 minutes left.
RULE = {
    "name": "top_up_low_minutes",
    "asset": "low_minutes_access_tokens",
    "command": "ACCESSTOKEN_ADD_MINUTES",
    "parameters": {"Minutes": 120},
    "cooldown_hours": 24,
    "live": True,
}


class Account:
    """One account of the deployment: its entry in the accounts file, its simulator, its webhook."""

    def __init__(self, server: AccountServer, sim: Simulator, webhook: Webhook, warehouse: Path) -> None:
        self.server = server
        self.name = server.name
        self.sim = sim
        self.webhook = webhook
        self.warehouse = WarehouseResource(database=str(warehouse))

    def job(self, job: str) -> str:
        return self.server.job(job)

    def live_rows(self, entity: Entity) -> dict[int, dict[str, Any]]:
        with self.warehouse.read_only_connection() as conn:
            return live_rows(conn, entity)

    def query(self, sql: str) -> list[tuple[Any, ...]]:
        with self.warehouse.read_only_connection() as conn:
            return conn.execute(sql).fetchall()


class Accounts:
    """The deployment and its three accounts, by name."""

    def __init__(self, deployment: Deployment, accounts: dict[str, Account]) -> None:
        self.deployment = deployment
        self.accounts = accounts

    def __getitem__(self, name: str) -> Account:
        return self.accounts[name]

    def __iter__(self) -> Iterator[Account]:
        return iter(self.accounts.values())

    def others(self, name: str) -> list[Account]:
        return [account for account in self if account.name != name]

    def sync(self, *names: str) -> dict[str, dict[str, Any]]:
        """Submits one sync of each named account together and waits for them; the runs by account."""
        run_ids = self.deployment.launch_together([self[name].job(SYNC) for name in names])
        launched = dict(zip(names, run_ids, strict=True))
        runs = self.deployment.wait_until_finished(list(launched.values()), RUN_SECONDS * len(names))
        return {name: runs[run_id] for name, run_id in launched.items()}


def first_page_waits_for(barrier: threading.Barrier) -> Callable[[Entity, int], None]:
    """A simulator's `on_list_page` that waits at `barrier` once, before its first list page goes out."""
    waited = threading.Event()

    def wait(entity: Entity, page: int) -> None:
        if not waited.is_set():
            waited.set()
            with contextlib.suppress(threading.BrokenBarrierError):  # the overlap assert says what failed
                barrier.wait()

    return wait


def tags(run: dict[str, Any]) -> dict[str, str]:
    return {tag["key"]: tag["value"] for tag in run["tags"]}


def top_up_every_token(sim: Simulator) -> None:
    """No token of the account is low on minutes, so its rule has nothing to act on until a test
    makes one low."""
    for token in sim.records(ACCESS_TOKENS):
        minutes = max(token["MinutesIncluded"] or 0, 600)
        sim.update(ACCESS_TOKENS, [token["Id"]], {"MinutesIncluded": minutes, "MinutesLeft": minutes})


def changed_token(account: Account, **fields: Any) -> int:
    """Changes one token upstream now, valid now, as the next incremental sync sees it; returns its id."""
    token_id = int(account.sim.records(ACCESS_TOKENS)[0]["Id"])
    account.sim.update(ACCESS_TOKENS, [token_id], {"ValidFrom": None, "ValidTo": None, **fields})
    return token_id


#: Each storage's deployment serves its tests on one worker (`--dist loadgroup`): split, each worker
#: would start a deployment of its own.
@pytest.fixture(
    scope="module",
    params=[
        pytest.param(storage, marks=pytest.mark.xdist_group(f"accounts_{storage}"))
        for storage in ("sqlite", "postgres")
    ],
)
def accounts(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Accounts]:
    directory = tmp_path_factory.mktemp(f"accounts-{request.param}")
    home = directory / "dagster_home"
    (directory / "rules").mkdir()
    with ExitStack() as stack:
        storage: dict[str, str] = {}
        if request.param == "postgres":
            storage = request.getfixturevalue("postgres_server").fresh_database()
        write_instance(home, postgres=request.param == "postgres")
        accounts: dict[str, Account] = {}
        for name, (seed, tokens, contracts, passes) in ACCOUNTS.items():
            username, password = f"{name}@example.com", f"{name}-password"
            sim = Simulator(
                seed=seed, tokens=tokens, contracts=contracts, passes=passes, username=username, password=password
            )
            server = stack.enter_context(SimulatorServer(sim))
            webhook = Webhook()
            stack.callback(webhook.close)
            rules = directory / "rules" / f"{name}.yaml"
            rules.write_text(yaml.safe_dump({"rules": [RULE] if name == "brand_a" else []}, sort_keys=False))
            warehouse = directory / "data" / f"{name}.duckdb"
            entry = AccountServer(
                name,
                server.base_url,
                username,
                password,
                settings={"NEXUDUS_DUCKDB_PATH": str(warehouse), "NEXUDUS_COMMAND_RULES": str(rules)},
                alert_webhook_url=webhook.url,
            )
            accounts[name] = Account(entry, sim, webhook, warehouse)
        top_up_every_token(accounts["brand_a"].sim)
        secrets = write_accounts(directory / "accounts.yaml", [account.server for account in accounts.values()])
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUDUS_", "DAGSTER_"))}
        env = {
            **inherited,
            **storage,
            **secrets,
            "DAGSTER_HOME": str(home),
            "NEXUDUS_ACCOUNTS": str(directory / "accounts.yaml"),
            "NEXUDUS_ACROSS_ACCOUNTS_PATH": str(directory / "data" / "across_accounts.duckdb"),
            # The simulators here do not enforce the published limits: pacing would only add time.
            "NEXUDUS_PACING": "off",
            "NEXUDUS_COMMANDS_LIVE": "true",
            "NEXUDUS_SENSOR_INTERVAL_SECONDS": "2",
            # Runs start when a test submits them, never by a schedule.
            "NEXUDUS_SYNC_CRON": NEVER,
            "NEXUDUS_FULL_REFRESH_CRON": NEVER,
            "NEXUDUS_FRESHNESS_CRON": NEVER,
            "NEXUDUS_ACROSS_ACCOUNTS_CRON": NEVER,
        }
        deployment = Deployment(directory, env)
        stack.callback(deployment.stop)
        deployment.migrate()
        deployment.start_code_server()
        deployment.start_webserver()
        deployment.wait_for("the code location to load over gRPC", deployment.location_loaded, 120)
        deployment.start_daemon()
        yield Accounts(deployment, accounts)


def test_the_syncs_of_three_accounts_run_together_and_each_is_exact(accounts):
    # Each account's server holds its first list page until all three have asked for theirs: the
    # syncs get past it only if they run at the same time.
    all_asking = threading.Barrier(len(ACCOUNTS), timeout=RUN_SECONDS)
    for account in accounts:
        account.sim.on_list_page = first_page_waits_for(all_asking)
    try:
        runs = accounts.sync(*ACCOUNTS)
    finally:
        for account in accounts:
            account.sim.on_list_page = None

    deployment = accounts.deployment
    assert {name: run["status"] for name, run in runs.items()} == dict.fromkeys(ACCOUNTS, "SUCCESS"), (
        {name: deployment.errors(run["runId"]) for name, run in runs.items()},
        deployment.logs(),
    )
    assert {name: tags(run)[ACCOUNT_TAG] for name, run in runs.items()} == {name: name for name in ACCOUNTS}
    # Every run had started before any ended: the three ran at the same time, each in its process.
    assert max(run["startTime"] for run in runs.values()) < min(run["endTime"] for run in runs.values()), runs
    for account in accounts:
        for entity in ENTITIES:
            expected = upstream_rows(account.sim, entity)
            assert expected, (account.name, entity.name)
            assert account.live_rows(entity) == expected, (account.name, entity.name)


def test_runs_of_one_account_queue_one_after_the_other(accounts):
    deployment = accounts.deployment
    first, second = (deployment.launch(accounts["brand_b"].job(SYNC)) for _ in range(2))
    runs = deployment.wait_until_finished([first, second], 2 * RUN_SECONDS)

    assert [runs[first]["status"], runs[second]["status"]] == ["SUCCESS", "SUCCESS"]
    assert runs[second]["startTime"] >= runs[first]["endTime"], runs


def test_a_rule_of_one_account_sends_its_commands_to_that_account_only(accounts):
    brand_a = accounts["brand_a"]
    low = changed_token(brand_a, MinutesIncluded=600, MinutesLeft=5)
    sync = accounts.sync("brand_a", "brand_b", "brand_c")
    assert {run["status"] for run in sync.values()} == {"SUCCESS"}

    deployment = accounts.deployment
    [command] = deployment.wait_for(
        "brand_a's command run",
        lambda: [r for r in deployment.runs() if r["jobName"] == brand_a.job(COMMAND) and r["status"] in FINISHED],
        RUN_SECONDS,
    )
    assert command["status"] == "SUCCESS", deployment.errors(command["runId"])
    assert tags(command)[ACCOUNT_TAG] == "brand_a"
    [call] = brand_a.sim.commands_run
    assert (call["key"], call["ids"], call["was_successful"]) == ("ACCESSTOKEN_ADD_MINUTES", [low], True)
    for other in accounts.others("brand_a"):
        # Their warehouses list tokens the rule would act on: only the account with the rule acts.
        assert other.query("SELECT count(*) FROM insights.low_minutes_access_tokens")[0][0] > 0, other.name
        assert other.sim.commands_run == [], other.name
        assert [r for r in deployment.runs() if r["jobName"] == other.job(COMMAND)] == [], other.name


def test_an_alert_of_one_account_names_it_and_is_sent_by_it_alone(accounts):
    brand_b = accounts["brand_b"]
    changed_token(brand_b, MinutesIncluded=60, MinutesLeft=90)
    [run] = accounts.sync("brand_b").values()
    assert run["status"] == "SUCCESS"

    deployment = accounts.deployment

    def check_alerts(account: Account) -> list[str]:
        return [text for text in account.webhook.texts() if "check failed" in text and CHECK in text]

    deployment.wait_for("brand_b's alert", lambda: check_alerts(brand_b), 60)
    # Later ticks of every alert sensor, the other accounts' among them, send nothing more.
    before = alert_ticks(deployment)
    deployment.wait_for(
        "three more ticks of each alert sensor",
        lambda: all(ticks - before[name] >= 3 for name, ticks in alert_ticks(deployment).items()),
        60,
    )
    [text] = check_alerts(brand_b)
    assert text.startswith("[brand_b] "), text
    for other in accounts.others("brand_b"):
        assert check_alerts(other) == [], other.name
        assert [text for text in other.webhook.texts() if "brand_b" in text] == [], other.name
    for account in accounts:
        assert all(text.startswith(f"[{account.name}] ") for text in account.webhook.texts()), account.name


def alert_ticks(deployment: Deployment) -> dict[str, int]:
    """How many times each account's alert sensor has ticked."""
    return {name: len(deployment.ticks(f"{name}__nexudus_alerts")) for name in ACCOUNTS}


def test_a_killed_run_of_one_account_blocks_neither_the_others_nor_its_next_run(accounts):
    deployment = accounts.deployment
    brand_a = accounts["brand_a"]
    brand_a.sim.reset_stats()
    brand_a.sim.faults.latency_ms = 2000
    try:
        killed = deployment.launch(brand_a.job(SYNC))
        pid = deployment.wait_for("brand_a's run process", lambda: deployment.run_pid(killed), RUN_SECONDS)
        deployment.wait_for("brand_a's run to ask its account", lambda: brand_a.sim.request_log, RUN_SECONDS)
        # A sync makes several requests: its next one is answered only after the kill, however
        # long the launches below take on a loaded machine.
        brand_a.sim.faults.latency_ms = 600_000
        # Queued behind the run that is about to die: one run of an account at a time.
        after = deployment.launch(brand_a.job(SYNC))
        others = {other.name: deployment.launch(other.job(SYNC)) for other in accounts.others("brand_a")}
        os.kill(pid, signal.SIGKILL)
    finally:
        brand_a.sim.faults.latency_ms = 0

    runs = deployment.wait_until_finished([killed, after, *others.values()], 3 * RUN_SECONDS)
    assert runs[killed]["status"] == "FAILURE"
    assert {name: runs[run_id]["status"] for name, run_id in others.items()} == {
        "brand_b": "SUCCESS",
        "brand_c": "SUCCESS",
    }
    assert runs[after]["status"] == "SUCCESS", deployment.errors(after)
    assert runs[after]["startTime"] >= runs[killed]["endTime"]
    for entity in ENTITIES:
        assert brand_a.live_rows(entity) == upstream_rows(brand_a.sim, entity), entity.name

    # The failed run is alerted once, by its own account.
    def run_alerts(account: Account) -> list[str]:
        return [text for text in account.webhook.texts() if "run failed" in text and killed[:8] in text]

    deployment.wait_for("brand_a's run alert", lambda: run_alerts(brand_a), 60)
    [text] = run_alerts(brand_a)
    assert text.startswith("[brand_a] ") and brand_a.job(SYNC) in text, text
    assert [run_alerts(other) for other in accounts.others("brand_a")] == [[], []]


def test_a_run_terminated_through_the_ui_lets_its_accounts_next_run_go(accounts):
    deployment = accounts.deployment
    brand_c = accounts["brand_c"]
    brand_c.sim.reset_stats()
    brand_c.sim.faults.latency_ms = 2000
    try:
        terminated = deployment.launch(brand_c.job(SYNC))
        deployment.wait_for("brand_c's run to ask its account", lambda: brand_c.sim.request_log, RUN_SECONDS)
        after = deployment.launch(brand_c.job(SYNC))
        deployment.terminate(terminated)
    finally:
        brand_c.sim.faults.latency_ms = 0

    runs = deployment.wait_until_finished([terminated, after], 2 * RUN_SECONDS)
    assert runs[terminated]["status"] == "CANCELED"
    assert runs[after]["status"] == "SUCCESS", deployment.errors(after)
    for entity in ENTITIES:
        assert brand_c.live_rows(entity) == upstream_rows(brand_c.sim, entity), entity.name
