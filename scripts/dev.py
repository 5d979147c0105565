"""`make dev`: the Dagster UI, against NEXUDUS_BASE_URL if set, else against the simulator.

With the simulator it uses the same account, Dagster instance and warehouse file as `make demo`.
"""

import os
import subprocess
import sys

from simulated_account import (
    ACCOUNT_SUMMARY,
    LIVE_ACCOUNT,
    LIVE_CHANGES_PER_MINUTE,
    LIVE_SYNC_CRON,
    PROJECT,
    WHERE_TO_LOOK,
    simulated_account,
    use_project_instance,
)

DEV_COMMAND = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "3000"]


def main() -> int:
    use_project_instance()
    if os.environ.get("NEXUDUS_BASE_URL"):
        print(f"Using the Nexudus account at {os.environ['NEXUDUS_BASE_URL']} (no simulator).")
        return subprocess.call(DEV_COMMAND, cwd=PROJECT)
    print(
        f"NEXUDUS_BASE_URL is not set: starting the simulator ({ACCOUNT_SUMMARY}) and pointing the code location at it."
    )
    with simulated_account(LIVE_ACCOUNT) as env:
        env.setdefault("NEXUDUS_SYNC_CRON", LIVE_SYNC_CRON)
        print(f"Warehouse: {env['NEXUDUS_DUCKDB_PATH']}; Dagster instance: {env['DAGSTER_HOME']}.")
        print(
            f"The simulated account changes {LIVE_CHANGES_PER_MINUTE} times a minute; nexudus_sync runs on"
            f" `{env['NEXUDUS_SYNC_CRON']}` (NEXUDUS_SYNC_CRON).\n{WHERE_TO_LOOK}"
        )
        try:
            return subprocess.call(DEV_COMMAND, env=env, cwd=PROJECT)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
