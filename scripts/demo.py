"""`make demo`: the nexudus_sync job against the simulator, then what it loaded.

Always the simulator, never a real account. It uses the same Dagster instance and warehouse file
as `make dev` with the simulator, and keeps them: a second demo is an incremental sync.
"""

import json
import os
import subprocess
import sys
import time
import uuid

import dagster as dg
from simulated_account import ACCOUNT_SUMMARY, PROJECT, WHERE_TO_LOOK, simulated_account, use_project_instance

from nexudus_assets.report import print_report

RUN_LOG = PROJECT / "data" / "demo-run.log"
DEMO_TAG = "nexudus/demo"


def main() -> int:
    if os.environ.get("NEXUDUS_BASE_URL"):
        print("Note: the demo always uses the simulator; NEXUDUS_BASE_URL is used by `make dev` and the jobs.")
    use_project_instance()
    RUN_LOG.parent.mkdir(exist_ok=True)
    demo_id = uuid.uuid4().hex
    print(f"Starting the Nexudus simulator ({ACCOUNT_SUMMARY})...")
    with simulated_account() as env:
        database = env["NEXUDUS_DUCKDB_PATH"]
        print(f"Running `dagster job execute -j nexudus_sync` against {env['NEXUDUS_BASE_URL']} into {database} ...")
        started = time.monotonic()
        with RUN_LOG.open("w") as log:
            finished = subprocess.run(
                [
                    sys.executable,
                    "-m",
                    "dagster",
                    "job",
                    "execute",
                    "-m",
                    "nexudus_assets.definitions",
                    "-j",
                    "nexudus_sync",
                    "--tags",
                    json.dumps({DEMO_TAG: demo_id}),
                ],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=PROJECT,
            )
        seconds = time.monotonic() - started
    if finished.returncode != 0:
        print(RUN_LOG.read_text()[-4000:])
        print(f"The job failed (exit {finished.returncode}); full log in {RUN_LOG}.")
        return finished.returncode
    print(f"The job succeeded in {seconds:.1f}s (full log in {RUN_LOG}).\n")
    print_report(database)
    print_check_results(demo_id)
    print(f"\n{WHERE_TO_LOOK}")
    return 0


def print_check_results(demo_id: str) -> None:
    with dg.DagsterInstance.get() as instance:
        [run] = instance.get_runs(filters=dg.RunsFilter(tags={DEMO_TAG: demo_id}), limit=1)
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
