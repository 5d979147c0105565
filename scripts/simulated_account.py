"""Start the Nexudus simulator as a child process and point the NEXUDUS_* variables at it.

`make demo` and `make dev` share one simulated account, one Dagster instance and one warehouse
file, so what one of them did, the other shows.
"""

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets.simulator.process import SimulatorStartError, running_simulator
from nexudus_assets.warehouse import DEFAULT_WAREHOUSE_PATH

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
        print(
            f"Note: NEXUDUS_DUCKDB_PATH ({configured}) is left alone; simulated data goes to {DEFAULT_WAREHOUSE_PATH}."
        )
    return PROJECT / DEFAULT_WAREHOUSE_PATH


@contextmanager
def simulated_account(arguments: Sequence[str] = ACCOUNT) -> Iterator[dict[str, str]]:
    """Yields the environment a child process needs to use the simulator; stops it on exit."""
    try:
        with running_simulator(arguments) as simulator:
            yield {
                **os.environ,
                "NEXUDUS_BASE_URL": simulator.base_url,
                "NEXUDUS_USERNAME": DEFAULT_USERNAME,
                "NEXUDUS_PASSWORD": DEFAULT_PASSWORD,
                "NEXUDUS_AUTH": "basic",
                "NEXUDUS_DUCKDB_PATH": str(simulated_warehouse()),
            }
    except SimulatorStartError as failed:
        raise SystemExit(str(failed)) from None
