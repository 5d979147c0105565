"""`make dev`: the Dagster UI, against NEXUDUS_BASE_URL if set, else against the simulator.

With the simulator it uses the same account, Dagster instance and warehouse file as `make demo`.
It starts `dg dev`, which loads the project as pyproject.toml's `[tool.dg]` names it.
"""

import os
import subprocess
import sys
from pathlib import Path

from simulated_account import ACCOUNT_SUMMARY, PROJECT, simulated_account, use_project_instance

DG = Path(sys.executable).parent / "dg"
DEV_COMMAND = [str(DG), "dev", "-h", "127.0.0.1", "-p", "3000"]
#: `dg` runs the project in the environment it finds active: this one, as if activated.
ACTIVE_VENV = {"VIRTUAL_ENV": sys.prefix}


def main() -> int:
    use_project_instance()
    if os.environ.get("NEXUDUS_BASE_URL"):
        print(f"Using the Nexudus account at {os.environ['NEXUDUS_BASE_URL']} (no simulator).")
        return subprocess.call(DEV_COMMAND, env={**os.environ, **ACTIVE_VENV}, cwd=PROJECT)
    print(
        f"NEXUDUS_BASE_URL is not set: starting the simulator ({ACCOUNT_SUMMARY}) and pointing the code location at it."
    )
    with simulated_account() as env:
        print(f"Warehouse: {env['NEXUDUS_DUCKDB_PATH']}; Dagster instance: {env['DAGSTER_HOME']}.")
        try:
            return subprocess.call(DEV_COMMAND, env={**env, **ACTIVE_VENV}, cwd=PROJECT)
        except KeyboardInterrupt:
            return 0


if __name__ == "__main__":
    sys.exit(main())
