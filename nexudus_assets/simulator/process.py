"""The simulator as a process of its own (`python -m nexudus_assets.simulator`), for scripts and benchmarks."""

from __future__ import annotations

import select
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import IO

#: What the process prints, followed by its base URL, once it answers requests.
LISTENING_ON = "Nexudus simulator listening on"


class SimulatorStartError(RuntimeError):
    """The simulator process did not start listening."""


@dataclass(frozen=True)
class SimulatorProcess:
    base_url: str
    process: subprocess.Popen[str]


def simulator_command(arguments: Sequence[str] = ()) -> list[str]:
    """The command line that starts a simulator on a free port; `arguments` as `nexudus-simulator --help` lists them."""
    return [sys.executable, "-m", "nexudus_assets.simulator", "--port", "0", *arguments]


@contextmanager
def running_simulator(
    arguments: Sequence[str] = (), *, stderr: IO[str] | None = None, start_timeout: float = 60.0
) -> Iterator[SimulatorProcess]:
    """Starts a simulator process and stops it when the block ends.

    `start_timeout`: generating a large account takes a while before the process listens.
    `stderr`: where the process's errors go; by default, this process's.
    """
    with subprocess.Popen(simulator_command(arguments), stdout=subprocess.PIPE, stderr=stderr, text=True) as process:
        try:
            assert process.stdout is not None
            ready, _, _ = select.select([process.stdout], [], [], start_timeout)
            line = process.stdout.readline().strip() if ready else ""
            if not line.startswith(LISTENING_ON):
                raise SimulatorStartError(
                    f"the simulator did not start: {_why(process, bool(ready), line, start_timeout)}"
                )
            yield SimulatorProcess(line.removeprefix(LISTENING_ON).strip(), process)
        finally:
            process.terminate()
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()


def _why(process: subprocess.Popen[str], answered: bool, line: str, start_timeout: float) -> str:
    if not answered:
        return f"it printed nothing within {start_timeout:g}s"
    if line:
        return f"it printed {line!r}"
    try:
        return f"it exited with status {process.wait(timeout=5)}"
    except subprocess.TimeoutExpired:
        return "it closed its output"
