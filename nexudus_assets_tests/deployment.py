"""The deployed shape as separate processes: a gRPC code server, `dagster-daemon`, `dagster-webserver`.

Each process gets its own log file in the deployment's directory; a failed wait shows their tails.
Runs are submitted through the webserver's GraphQL, so they pass the instance's run queue as the
UI's do, and the daemon launches them.
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import yaml

LOCATION = "nexudus_assets"
REPOSITORY = "__repository__"
BIN = Path(sys.executable).parent
PROJECT = Path(__file__).resolve().parent.parent
#: What `make dev` uses: run-sharded SQLite under DAGSTER_HOME, the project's run queue.
LOCAL_INSTANCE = PROJECT / "dagster.yaml"
#: The deployed instance; its storage section is PostgreSQL's.
DEPLOYED_INSTANCE = PROJECT / "deploy" / "dagster.yaml"
#: Run states after which nothing more happens to the run.
FINISHED = ("SUCCESS", "FAILURE", "CANCELED")
#: The engine event the code server writes once it has started a run's process.
_RUN_PROCESS = re.compile(r"Started process for run \(pid: (\d+)\)")

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def write_instance(home: Path, *, postgres: bool) -> None:
    """`home`'s dagster.yaml: the project's top-level one, with deploy/dagster.yaml's PostgreSQL
    storage when `postgres` (the `DAGSTER_POSTGRES_*` variables then name the database)."""
    home.mkdir(parents=True, exist_ok=True)
    settings = yaml.safe_load(LOCAL_INSTANCE.read_text())
    if postgres:
        settings["storage"] = yaml.safe_load(DEPLOYED_INSTANCE.read_text())["storage"]
    (home / "dagster.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))


@dataclass(frozen=True)
class AccountServer:
    """One account of an accounts file and the server it talks to."""

    name: str
    base_url: str
    username: str
    password: str
    #: Its `settings:`: NEXUDUS_* settings for this account only.
    settings: Mapping[str, str] = field(default_factory=dict)
    alert_webhook_url: str | None = None

    def secret_variable(self, secret: str) -> str:
        return f"{self.name.upper()}_NEXUDUS_{secret.upper()}"

    def job(self, job: str) -> str:
        return f"{self.name}__{job}"


def write_accounts(path: Path, accounts: Sequence[AccountServer]) -> dict[str, str]:
    """Writes the accounts file (`NEXUDUS_ACCOUNTS`) and returns the secret variables it names,
    with their values, for the environment of the code server."""
    secrets: dict[str, str] = {}
    entries = []
    for account in accounts:
        values = {"username": account.username, "password": account.password}
        if account.alert_webhook_url is not None:
            values["alert_webhook_url"] = account.alert_webhook_url
        names = {secret: account.secret_variable(secret) for secret in values}
        secrets.update({names[secret]: value for secret, value in values.items()})
        entries.append(
            {
                "name": account.name,
                "base_url": account.base_url,
                "auth": "basic",
                "secrets": names,
                "settings": dict(account.settings),
            }
        )
    path.write_text(yaml.safe_dump({"accounts": entries}, sort_keys=False))
    return secrets


class Deployment:
    """Starts, kills and restarts the three Dagster processes against one `DAGSTER_HOME`."""

    def __init__(self, directory: Path, env: Mapping[str, str]) -> None:
        self.directory = directory
        self.env = dict(env)
        self.code_port, self.web_port = free_port(), free_port()
        self.workspace = directory / "workspace.yaml"
        self.workspace.write_text(
            "load_from:\n  - grpc_server:\n"
            f"      host: 127.0.0.1\n      port: {self.code_port}\n      location_name: {LOCATION}\n"
        )
        self.processes: dict[str, subprocess.Popen] = {}
        self.graphql_url = f"http://127.0.0.1:{self.web_port}/graphql"

    def _start(self, name: str, command: list[str], env: Mapping[str, str]) -> None:
        log = (self.directory / f"{name}.log").open("ab")
        self.processes[name] = subprocess.Popen(
            command, env=dict(env), cwd=self.directory, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )

    def migrate(self) -> None:
        """Create the instance's storage once, as a deployment does before it starts anything.

        Processes started together on an empty SQLite home would each create its tables and race.
        """
        subprocess.run(
            [str(BIN / "dagster"), "instance", "migrate"],
            env=self.env,
            cwd=self.directory,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start_code_server(self, **env: str) -> None:
        self.env.update(env)
        self._start(
            "code_server",
            [
                str(BIN / "dagster"),
                "code-server",
                "start",
                "-h",
                "127.0.0.1",
                "-p",
                str(self.code_port),
                "-m",
                "nexudus_assets.definitions",
            ],
            self.env,
        )

    def start_daemon(self) -> None:
        self._start("daemon", [str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)], self.env)

    def start_webserver(self) -> None:
        self._start(
            "webserver",
            [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p", str(self.web_port), "-w", str(self.workspace)],
            self.env,
        )

    def kill(self, name: str) -> None:
        """SIGKILL, as a crash or an OOM kill would: no clean-up runs. Children are left alone."""
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)

    def stop(self) -> None:
        for name in list(self.processes):
            process = self.processes.pop(name)
            try:
                os.killpg(process.pid, signal.SIGTERM)
                process.wait(timeout=20)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                with contextlib.suppress(ProcessLookupError):  # it ended meanwhile
                    os.killpg(process.pid, signal.SIGKILL)

    def logs(self, lines: int = 40) -> str:
        tails = []
        for log in sorted(self.directory.glob("*.log")):
            text = log.read_text(errors="replace").splitlines()[-lines:]
            tails.append(f"--- {log.name}\n" + "\n".join(text))
        return "\n".join(tails)

    # -- the webserver's GraphQL -----------------------------------------------------------

    def graphql(self, query: str, variables: Mapping[str, Any] | None = None) -> dict[str, Any]:
        response = httpx.post(self.graphql_url, json={"query": query, "variables": dict(variables or {})}, timeout=30)
        if response.status_code == 400:  # the query does not fit the schema: the answer says where
            raise AssertionError(f"GraphQL refused the query: {response.text}")
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def runs(self) -> list[dict[str, Any]]:
        """The instance's runs, newest first; `startTime`/`endTime` are the run's own (epoch seconds)."""
        data = self.graphql(
            """{ runsOrError(limit: 200) { ... on Runs { results {
                    runId jobName status startTime endTime tags { key value } } } } }"""
        )
        return data["runsOrError"]["results"]

    def launch(self, job: str) -> str:
        """Submits a run of `job` as the UI's launch button does; returns its id. The run queue
        holds it until the daemon launches it."""
        [run_id] = self.launch_together([job])
        return run_id

    def launch_together(self, jobs: Sequence[str]) -> list[str]:
        """Submits a run of each job in one request, so that one tick of the daemon sees them all."""
        data = self.graphql(
            """mutation Launch($params: [ExecutionParams!]!) { launchMultipleRuns(executionParamsList: $params) {
                    __typename ... on Error { message } ... on LaunchMultipleRunsResult { launchMultipleRunsResult {
                        __typename ... on LaunchRunSuccess { run { runId } } ... on Error { message }
                        ... on RunConfigValidationInvalid { errors { message } } } } } }""",
            {
                "params": [
                    {
                        "selector": {
                            "repositoryLocationName": LOCATION,
                            "repositoryName": REPOSITORY,
                            "jobName": job,
                        },
                        "runConfigData": {},
                    }
                    for job in jobs
                ]
            },
        )
        answer = data["launchMultipleRuns"]
        assert answer["__typename"] == "LaunchMultipleRunsResult", answer
        launched = answer["launchMultipleRunsResult"]
        assert all(one["__typename"] == "LaunchRunSuccess" for one in launched), launched
        return [str(one["run"]["runId"]) for one in launched]

    def terminate(self, run_id: str) -> None:
        """Terminates a run as the UI's "Terminate" does: the code server stops its process."""
        data = self.graphql(
            """mutation Terminate($runId: String!) { terminateRun(runId: $runId) {
                    __typename ... on Error { message } } }""",
            {"runId": run_id},
        )
        assert data["terminateRun"]["__typename"] == "TerminateRunSuccess", data

    def run_pid(self, run_id: str) -> int | None:
        """The process the code server started for the run, once it has said so in the run's events."""
        data = self.graphql(
            """query Events($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
                    ... on MessageEvent { message } } } } }""",
            {"runId": run_id},
        )
        for event in data["logsForRun"]["events"]:
            found = _RUN_PROCESS.search(event.get("message") or "")
            if found:
                return int(found.group(1))
        return None

    def wait_until_finished(self, run_ids: Sequence[str], timeout: float) -> dict[str, dict[str, Any]]:
        """Waits for every run in `run_ids` to end; returns them by id."""

        def ended() -> dict[str, dict[str, Any]] | None:
            runs = {run["runId"]: run for run in self.runs() if run["runId"] in run_ids}
            done = len(runs) == len(run_ids) and all(run["status"] in FINISHED for run in runs.values())
            return runs if done else None

        return self.wait_for(f"runs {', '.join(run_ids)} to end", ended, timeout)

    def errors(self, run_id: str) -> list[str]:
        """The messages of a run's failure events, for assertion messages."""
        data = self.graphql(
            """query Events($runId: ID!) { logsForRun(runId: $runId) { ... on EventConnection { events {
                    __typename ... on MessageEvent { message }
                    ... on ExecutionStepFailureEvent { error { message } }
                    ... on RunFailureEvent { message } } } } }""",
            {"runId": run_id},
        )
        events = data["logsForRun"]["events"]
        return [
            (event.get("error") or {}).get("message") or event.get("message", "")
            for event in events
            if "Failure" in event["__typename"]
        ]

    def location_loaded(self) -> bool:
        try:
            data = self.graphql(
                """{ workspaceOrError { ... on Workspace { locationEntries {
                        name locationOrLoadError { __typename } } } } }"""
            )
        except (httpx.HTTPError, AssertionError):
            return False
        entries = data["workspaceOrError"]["locationEntries"]
        return any(
            e["name"] == LOCATION and e["locationOrLoadError"]["__typename"] == "RepositoryLocation" for e in entries
        )

    def ticks(self, sensor: str) -> list[dict[str, Any]]:
        data = self.graphql(
            """query Ticks($selector: SensorSelector!) { sensorOrError(sensorSelector: $selector) {
                    __typename ... on Sensor { sensorState { ticks(limit: 500) {
                        status error { message } } } } } }""",
            {"selector": {"repositoryLocationName": LOCATION, "repositoryName": REPOSITORY, "sensorName": sensor}},
        )
        found = data["sensorOrError"]
        assert found["__typename"] == "Sensor", found
        return found["sensorState"]["ticks"]

    def wait_for(self, what: str, probe: Callable[[], T | None], timeout: float) -> T:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for name, process in self.processes.items():
                if process.poll() is not None:
                    raise AssertionError(
                        f"{name} exited with {process.returncode} while waiting for {what}\n{self.logs()}"
                    )
            found = probe()
            if found:
                return found
            time.sleep(1)
        raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}\n{self.logs()}")
