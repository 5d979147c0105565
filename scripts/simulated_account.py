"""Start the Nexudus simulator as a child process and point the NEXUDUS_* variables at it.

`make demo` and `make dev` share one simulated account, one Dagster instance and one warehouse
file, so what one of them did, the other shows.
"""

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nexudus_assets.warehouse import DEFAULT_WAREHOUSE_PATH

USERNAME = "admin@example.com"
PASSWORD = "simulator-password"
PROJECT = Path(__file__).resolve().parent.parent
#: The same seed and size every time: the warehouse always holds the same simulated records.
ACCOUNT = ["--seed", "7", "--tokens", "2000", "--contracts", "500", "--passes", "500", "--enforce-limits"]
ACCOUNT_SUMMARY = "2,000 tokens, 500 contracts, 500 passes; published limits enforced"


def use_project_instance() -> None:
    """The project's Dagster instance (what the Makefile sets), also when a script is run by hand."""
    home = Path(os.environ.setdefault("DAGSTER_HOME", str(PROJECT / ".dagster_home")))
    home.mkdir(exist_ok=True)


def simulated_warehouse() -> Path:
    """Simulated records go to the default warehouse only, never to a file NEXUDUS_DUCKDB_PATH names."""
    configured = os.environ.get("NEXUDUS_DUCKDB_PATH")
    if configured and Path(configured).resolve() != (PROJECT / DEFAULT_WAREHOUSE_PATH).resolve():
        print(f"Note: NEXUDUS_DUCKDB_PATH ({configured}) is left alone; simulated data goes to {DEFAULT_WAREHOUSE_PATH}.")
    return PROJECT / DEFAULT_WAREHOUSE_PATH


@contextmanager
def running_simulator(arguments: Sequence[str] = ACCOUNT) -> Iterator[dict[str, str]]:
    """Yields the environment a child process needs to use the simulator; stops it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nexudus_assets.simulator", "--port", "0",
         "--username", USERNAME, "--password", PASSWORD, *arguments],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        found = re.search(r"(http://\S+/api)", line)
        if not found:
            raise SystemExit(f"the simulator did not start: {line.strip() or 'no output'}")
        yield {
            **os.environ,
            "NEXUDUS_BASE_URL": found.group(1),
            "NEXUDUS_USERNAME": USERNAME,
            "NEXUDUS_PASSWORD": PASSWORD,
            "NEXUDUS_AUTH": "basic",
            "NEXUDUS_DUCKDB_PATH": str(simulated_warehouse()),
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
