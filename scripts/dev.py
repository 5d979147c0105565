"""`make dev`: the Dagster UI, against NEXUDUS_BASE_URL if set, else against the simulator."""

import os
import subprocess
import sys

from simulated_account import running_simulator

DEV_COMMAND = [sys.executable, "-m", "dagster", "dev", "-w", "workspace.yaml", "-h", "127.0.0.1", "-p", "3000"]


def main() -> int:
    if os.environ.get("NEXUDUS_BASE_URL"):
        print(f"Using the Nexudus account at {os.environ['NEXUDUS_BASE_URL']} (no simulator).")
        return subprocess.call(DEV_COMMAND)
    print("NEXUDUS_BASE_URL is not set: starting the simulator and pointing the code location at it.")
    with running_simulator(["--seed", "7", "--tokens", "2000", "--contracts", "500", "--passes", "500"]) as env:
        env.setdefault("NEXUDUS_DUCKDB_PATH", "data/dev.duckdb")
        try:
            return subprocess.call(DEV_COMMAND, env=env)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
