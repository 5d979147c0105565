"""The deployed shape as separate processes: a gRPC code server, `dagster-daemon`, `dagster-webserver`.

Each process gets its own log file in the deployment's directory; a failed wait shows their tails.
"""

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx

LOCATION = "nexudus_assets"
REPOSITORY = "__repository__"
BIN = Path(sys.executable).parent

T = TypeVar("T")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
        response.raise_for_status()
        body = response.json()
        if body.get("errors"):
            raise AssertionError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def runs(self) -> list[dict[str, Any]]:
        data = self.graphql(
            """{ runsOrError(limit: 200) { ... on Runs { results {
                    runId jobName status tags { key value } } } } }"""
        )
        return data["runsOrError"]["results"]

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
