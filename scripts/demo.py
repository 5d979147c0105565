"""`make demo`: the nexudus_sync job against the simulator, then what it loaded.

The run is launched as the UI launches it (scripts/run_job.py): it shows under `nexudus_sync`.

Always the simulator, never a real account. It uses the same Dagster instance and warehouse file
as `make dev` with the simulator, and keeps them: a second demo is an incremental sync.
"""

import os
import sys
import time

import dagster as dg
from run_job import launch
from simulated_account import ACCOUNT_SUMMARY, PROJECT, WHERE_TO_LOOK, simulated_account, use_project_instance

from nexudus_assets.jobs import SYNC_JOB
from nexudus_assets.report import print_report

RUN_LOG = PROJECT / "data" / "demo-run.log"
#: Marks the demo's runs in the UI's run list.
DEMO_TAG = "nexudus/demo"


def main() -> int:
    if os.environ.get("NEXUDUS_BASE_URL"):
        print("Note: the demo always uses the simulator; NEXUDUS_BASE_URL is used by `make dev` and the jobs.")
    use_project_instance()
    RUN_LOG.parent.mkdir(exist_ok=True)
    print(f"Starting the Nexudus simulator ({ACCOUNT_SUMMARY})...")
    with simulated_account() as env:
        database = env["NEXUDUS_DUCKDB_PATH"]
        print(f"Launching the nexudus_sync job against {env['NEXUDUS_BASE_URL']} into {database} ...")
        started = time.monotonic()
        with RUN_LOG.open("w") as log:
            run = launch(SYNC_JOB, env=env, tags={DEMO_TAG: "true"}, output=log)
        seconds = time.monotonic() - started
    if run.status != dg.DagsterRunStatus.SUCCESS:
        print(RUN_LOG.read_text()[-4000:])
        print(f"Run {run.run_id} ended {run.status.value}; full log in {RUN_LOG}.")
        return 1
    print(f"Run {run.run_id} succeeded in {seconds:.1f}s (full log in {RUN_LOG}).\n")
    print_report(database)
    print_check_results(run.run_id)
    print(f"\n{WHERE_TO_LOOK}")
    return 0


def print_check_results(run_id: str) -> None:
    with dg.DagsterInstance.get() as instance:
        evaluations = [
            entry.dagster_event.event_specific_data
            for entry in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
        ]
    failed = [e for e in evaluations if not e.passed]
    print(f"\nAsset checks: {len(evaluations) - len(failed)} passed, {len(failed)} failed")
    for evaluation in failed:
        print(f"  {evaluation.asset_key.to_user_string()}.{evaluation.check_name} ({evaluation.severity.value})")


if __name__ == "__main__":
    sys.exit(main())
