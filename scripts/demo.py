"""`make demo`: the nexudus_sync job against the simulator, then what it loaded.

Always the simulator, never a real account, and its own DuckDB file (data/demo.duckdb).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
from simulated_account import running_simulator

from nexudus_assets.report import print_report

DATABASE = Path("data/demo.duckdb")
RUN_LOG = Path("data/demo-run.log")


def main() -> int:
    if os.environ.get("NEXUDUS_BASE_URL"):
        print("Note: the demo always uses the simulator; NEXUDUS_BASE_URL is used by `make dev` and the jobs.")
    DATABASE.parent.mkdir(exist_ok=True)
    # Every demo starts a new simulated account, so it starts a new warehouse too.
    DATABASE.unlink(missing_ok=True)
    print("Starting the Nexudus simulator (2,000 tokens, 500 contracts, 500 passes; published limits enforced)...")
    with running_simulator(["--seed", "7", "--tokens", "2000", "--contracts", "500", "--passes", "500",
                            "--enforce-limits"]) as env:
        env["NEXUDUS_DUCKDB_PATH"] = str(DATABASE)
        print(f"Running `dagster job execute -j nexudus_sync` against {env['NEXUDUS_BASE_URL']} ...")
        started = time.monotonic()
        with RUN_LOG.open("w") as log:
            finished = subprocess.run(
                [sys.executable, "-m", "dagster", "job", "execute", "-m", "nexudus_assets.definitions",
                 "-j", "nexudus_sync"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )
        seconds = time.monotonic() - started
    if finished.returncode != 0:
        print(RUN_LOG.read_text()[-4000:])
        print(f"The job failed (exit {finished.returncode}); full log in {RUN_LOG}.")
        return finished.returncode
    print(f"The job succeeded in {seconds:.1f}s (full log in {RUN_LOG}).\n")
    print_report(DATABASE)
    print_check_results()
    return 0


def print_check_results() -> None:
    instance = dg.DagsterInstance.get()
    run = instance.get_runs(limit=1)[0]
    evaluations = [
        entry.dagster_event.event_specific_data
        for entry in instance.all_logs(run.run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    ]
    failed = [e for e in evaluations if not e.passed]
    print(f"\nAsset checks: {len(evaluations) - len(failed)} passed, {len(failed)} failed")
    for evaluation in failed:
        print(f"  {evaluation.asset_key.to_user_string()}.{evaluation.check_name} ({evaluation.severity.value})")


if __name__ == "__main__":
    sys.exit(main())
