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
#: `make dev`: the account lives (token minutes used, contracts renewed, cancelled and started, passes
#: used), and it is synced every five minutes unless NEXUDUS_SYNC_CRON says otherwise, so that
#: history, forecasts, checks and the command rules have changes to show within minutes.
LIVE_CHANGES_PER_MINUTE = 12
LIVE_ACCOUNT = [*ACCOUNT, "--live-changes", str(LIVE_CHANGES_PER_MINUTE)]
LIVE_SYNC_CRON = "*/5 * * * *"
#: Where the UI shows what the simulated account did, printed by `make demo` and `make dev`.
UI = "http://127.0.0.1:3000"
WHERE_TO_LOOK = f"""Where to look in the Dagster UI (`make dev`, {UI}):
  the nexudus_sync job and its runs
      {UI}/locations/nexudus_assets/jobs/nexudus_sync
  the raw tables (access_tokens, coworker_contracts, coworker_time_passes): rows, checks, plots
      {UI}/assets/access_tokens
  access_tokens_running_out: tokens whose minutes run out within a week, once two syncs of the
  live account in `make dev` have seen minutes used (a few minutes)
      {UI}/assets/access_tokens_running_out
  account_metrics_daily: "Materialize all", the whole range, is one run; then its Plots tab shows
  a year of daily revenue and contracts
      {UI}/assets/account_metrics_daily"""


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
