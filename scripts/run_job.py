"""Run one job of the code location from the command line, as the UI launches it, and wait for it.

    .venv/bin/python scripts/run_job.py nexudus_sync
    .venv/bin/python scripts/run_job.py nexudus_account_metrics --partition 2026-11-30

The run goes through the workspace (workspace.yaml), so it carries the code location's repository
origin: the UI lists it under its job, in the timeline and on the asset pages. `dagster job execute`
and `dg launch` run the job in their own process, without that origin; the UI's job page then
says "No runs found".

It starts at once, outside the instance's run queue, so no daemon has to be running: the launch
uses the instance's storage with Dagster's default run coordinator. Two syncs still never talk to
the account together: each client claims the account with a lock (nexudus_assets/nexudus/lease.py).
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

import dagster as dg
import yaml

from nexudus_assets.definitions import load_deployment_defs
from nexudus_assets.settings import Deployment

PROJECT = Path(__file__).resolve().parent.parent
WORKSPACE = PROJECT / "workspace.yaml"
FINISHED = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
#: How often the run's status is read while it runs.
POLL_SECONDS = 0.5


def launcher_instance(home: Path) -> dict[str, Any]:
    """The instance in `home` as its dagster.yaml configures it, with runs launched at once.

    Every storage is named explicitly (the defaults would be under the launcher's own home), so
    the run, its events and its logs land where the instance in `home` reads them.
    """
    config_file = home / "dagster.yaml"
    settings: dict[str, Any] = (yaml.safe_load(config_file.read_text()) if config_file.exists() else None) or {}
    # The run queue's limits belong to the queued coordinator; this launch bypasses the queue.
    settings.pop("concurrency", None)
    settings.pop("run_queue", None)
    settings.setdefault("storage", {"sqlite": {"base_dir": str(home)}})
    settings.setdefault(
        "local_artifact_storage",
        {"module": "dagster.core.storage.root", "class": "LocalArtifactStorage", "config": {"base_dir": str(home)}},
    )
    settings.setdefault(
        "compute_logs",
        {
            "module": "dagster.core.storage.local_compute_log_manager",
            "class": "LocalComputeLogManager",
            "config": {"base_dir": str(home / "storage")},
        },
    )
    settings["run_coordinator"] = {"module": "dagster.core.run_coordinator", "class": "DefaultRunCoordinator"}
    return settings


def partition_tags(job_name: str, partition: str | None, env: Mapping[str, str]) -> dict[str, str]:
    """The tag that makes a run compute one partition; ValueError for a day the job has no partition
    for (the launch itself would accept it and run the job unpartitioned)."""
    if partition is None:
        return {}
    partitions = load_deployment_defs(Deployment.from_env(env)).resolve_job_def(job_name).partitions_def
    if partitions is None:
        raise ValueError(f"{job_name} has no partitions")
    if not partitions.has_partition_key(partition):
        keys = partitions.get_partition_keys()
        span = f"{keys[0]} to {keys[-1]}" if keys else "none yet"
        raise ValueError(f"{partition!r} is not a partition of {job_name} (it has {span})")
    return {"dagster/partition": partition}


def launch(
    job_name: str,
    *,
    env: Mapping[str, str],
    partition: str | None = None,
    tags: Mapping[str, str] | None = None,
    output: IO[str] | None = None,
) -> dg.DagsterRun:
    """Launches `job_name` on the instance at env["DAGSTER_HOME"] and returns its run once it has ended.

    `env`: the code location's environment (the NEXUDUS_* variables). `partition`: the day, for a
    partitioned job. `output`: where the launch and the run print; by default, this process's output.
    """
    tags = {**(tags or {}), **partition_tags(job_name, partition, env)}
    home = Path(env["DAGSTER_HOME"])
    run_id = str(uuid.uuid4())
    with tempfile.TemporaryDirectory(prefix="nexudus-launch-") as launcher_home:
        (Path(launcher_home) / "dagster.yaml").write_text(yaml.safe_dump(launcher_instance(home), sort_keys=False))
        command = [sys.executable, "-m", "dagster", "job", "launch", "-w", str(WORKSPACE), "-j", job_name]
        command += ["--run-id", run_id, "--tags", json.dumps(tags)]
        launched = subprocess.run(
            command, env={**env, "DAGSTER_HOME": launcher_home}, cwd=PROJECT, stdout=output, stderr=subprocess.STDOUT
        )
        with dg.DagsterInstance.from_config(str(home)) as instance:
            run = instance.get_run_by_id(run_id)
            if launched.returncode != 0 or run is None:
                raise RuntimeError(f"`dagster job launch -j {job_name}` failed (exit {launched.returncode})")
            # The launch returns once the run has started; the run goes on in a process of its own.
            while run.status not in FINISHED:
                time.sleep(POLL_SECONDS)
                run = instance.get_run_by_id(run_id) or run
    return run


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("job", help="nexudus_sync, nexudus_full_refresh, nexudus_freshness or nexudus_account_metrics")
    parser.add_argument("--partition", help="the day (YYYY-MM-DD) for nexudus_account_metrics")
    arguments = parser.parse_args()
    if "DAGSTER_HOME" not in os.environ:
        print("Set DAGSTER_HOME to the Dagster instance the run belongs to.", file=sys.stderr)
        return 2
    try:
        run = launch(arguments.job, env=os.environ, partition=arguments.partition)
    except ValueError as refused:
        print(refused, file=sys.stderr)
        return 2
    print(f"Run {run.run_id} of {run.job_name}: {run.status.value}.")
    return 0 if run.status == dg.DagsterRunStatus.SUCCESS else 1


if __name__ == "__main__":
    sys.exit(main())
