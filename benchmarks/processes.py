"""Child processes for the benchmarks: simulators, and commands timed with their peak memory."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import Mapping, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import psutil

from nexudus_assets import nexudus
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets.simulator.process import SimulatorStartError, running_simulator, simulator_command

USERNAME, PASSWORD = DEFAULT_USERNAME, DEFAULT_PASSWORD

#: (warehouse table, path below the API base, filter prefix) of the three synced lists.
ENTITIES = tuple((entity.table, entity.path, entity.name) for entity in nexudus.ENTITIES)


class BenchmarkError(RuntimeError):
    """A measurement could not be taken (a child failed, timed out, or loaded the wrong data)."""


class Simulator:
    """`python -m nexudus_assets.simulator` in a child process, stopped on leaving the `with` block."""

    def __init__(
        self, *, tokens: int, contracts: int, passes: int, seed: int, enforce_limits: bool, log: Path,
        start_timeout: float = 300.0, arguments: Sequence[str] = (),
    ) -> None:
        self.records = tokens + contracts + passes
        self._arguments = [
            "--seed", str(seed), "--tokens", str(tokens), "--contracts", str(contracts), "--passes", str(passes),
            *(["--enforce-limits"] if enforce_limits else []),
            *arguments,
        ]
        self._log = log
        # Generating a million records takes the simulator tens of seconds before it listens.
        self._start_timeout = start_timeout
        self._running = ExitStack()
        self.base_url = ""
        self._admin: httpx.Client | None = None

    @property
    def command(self) -> str:
        return " ".join(["python", *simulator_command(self._arguments)[1:]])

    def __enter__(self) -> Simulator:
        with self._running as running:
            log = running.enter_context(self._log.open("w"))
            try:
                simulator = running.enter_context(
                    running_simulator(self._arguments, stderr=log, start_timeout=self._start_timeout)
                )
            except SimulatorStartError as failed:
                raise BenchmarkError(str(failed)) from None
            self.base_url = simulator.base_url
            self._admin = running.enter_context(
                httpx.Client(base_url=self.base_url.removesuffix("/api") + "/_simulator", timeout=60)
            )
            self._running = running.pop_all()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self._running.close()

    def _call(self, method: str, action: str, body: Any = None) -> dict[str, Any]:
        assert self._admin is not None, "use the simulator in a with block"
        response = self._admin.request(method, action, json=body)
        response.raise_for_status()
        result: dict[str, Any] = response.json()
        return result

    def stats(self) -> dict[str, Any]:
        return self._call("GET", "stats")

    def reset_stats(self) -> None:
        self._call("POST", "reset-stats")

    def mutate(self, entity: str, update: int) -> dict[str, Any]:
        return self._call("POST", "mutate", {"entity": entity, "update": update})

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a job needs to run against this simulator, and nothing else of ours."""
        inherited = {k: v for k, v in os.environ.items() if not k.startswith(("NEXUDUS_", "DAGSTER_"))}
        return {
            **inherited,
            "NEXUDUS_BASE_URL": self.base_url,
            "NEXUDUS_USERNAME": USERNAME,
            "NEXUDUS_PASSWORD": PASSWORD,
            "NEXUDUS_AUTH": "basic",
            **extra,
        }


@dataclass(frozen=True)
class Measured:
    seconds: float
    #: User + system CPU of the process and its children: less sensitive than wall time to
    #: other work on the machine.
    cpu_seconds: float
    #: The process's own peak RSS (from wait4: exact).
    own_peak_bytes: int
    #: The peak of its process tree's summed RSS, sampled every 100 ms (Dagster starts helpers).
    tree_peak_bytes: int

    @property
    def peak_rss_bytes(self) -> int:
        return max(self.own_peak_bytes, self.tree_peak_bytes)


def run_measured(
    command: Sequence[str], *, env: Mapping[str, str], log: Path, timeout: float, cwd: Path | None = None
) -> Measured:
    """Run `command` to the end, timing it; kill its whole session past `timeout`."""
    with log.open("w") as output:
        started = time.monotonic()
        process = subprocess.Popen(
            list(command), env=dict(env), cwd=cwd, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
    reaped: dict[str, Any] = {}
    tree_peak = _sample_tree_rss(process.pid, reaped)

    def reap() -> None:
        # wait4, not Popen.wait: its rusage holds this child's own peak RSS, not the largest
        # of every child the harness ever had (RUSAGE_CHILDREN would include the simulators).
        _, status, usage = os.wait4(process.pid, 0)
        reaped.update(finished=time.monotonic(), status=status, usage=usage)

    reaper = threading.Thread(target=reap, daemon=True)
    reaper.start()
    timed_out = False
    try:
        reaper.join(timeout)
    finally:
        # Past the timeout, or interrupted: the child leads its own session, so Ctrl-C never
        # reached it. Stop it and its children rather than leave them running.
        if reaper.is_alive():
            timed_out = True
            os.killpg(process.pid, signal.SIGKILL)
            reaper.join()
    if timed_out:
        process.returncode = -signal.SIGKILL
        raise BenchmarkError(f"{' '.join(command[:6])} ... did not finish within {timeout:.0f}s (log: {log})")
    process.returncode = os.waitstatus_to_exitcode(reaped["status"])
    if process.returncode != 0:
        tail = log.read_text(errors="replace")[-3000:]
        raise BenchmarkError(f"{' '.join(command[:6])} ... exited {process.returncode} (log: {log})\n{tail}")
    usage = reaped["usage"]
    own_peak = usage.ru_maxrss * 1024  # kilobytes on Linux
    return Measured(reaped["finished"] - started, usage.ru_utime + usage.ru_stime, own_peak, tree_peak.wait())


class _TreePeak:
    def __init__(self, thread: threading.Thread, box: list[int]) -> None:
        self._thread, self._box = thread, box

    def wait(self) -> int:
        self._thread.join(timeout=5)
        return self._box[0]


def _sample_tree_rss(pid: int, reaped: Mapping[str, Any], interval: float = 0.1) -> _TreePeak:
    """Sum the RSS of `pid` and its descendants every `interval` until it is reaped."""
    box = [0]

    def sample() -> None:
        try:
            root = psutil.Process(pid)
        except psutil.NoSuchProcess:
            return
        while not reaped:
            total = 0
            try:
                for process in [root, *root.children(recursive=True)]:
                    total += process.memory_info().rss
            except (psutil.NoSuchProcess, psutil.ZombieProcess, psutil.AccessDenied):
                pass  # a process ended between listing and reading; the next sample sees the rest
            box[0] = max(box[0], total)
            time.sleep(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    return _TreePeak(thread, box)
