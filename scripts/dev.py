"""`make dev`: the Dagster UI, against NEXUDUS_BASE_URL if set, else against the simulator.

With the simulator it uses the same account, Dagster instance and warehouse file as `make demo`.
It starts what `dg dev` starts, the webserver and the daemon on the workspace, as two processes of
its own: `dg dev` (and `dagster dev`) always start in the project folder and warn there that its
`dagster.yaml` is not DAGSTER_HOME's, which is false here (.dagster_home/dagster.yaml links to it,
and an account made by `make account` links to it too).
"""

import os
import signal
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

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

BIN = Path(sys.executable).parent
WORKSPACE = ["-w", str(PROJECT / "workspace.yaml")]
WEBSERVER = [str(BIN / "dagster-webserver"), *WORKSPACE, "-h", "127.0.0.1", "-p", "3000"]
DAEMON = [str(BIN / "dagster-daemon"), "run", *WORKSPACE]


def serve(env: Mapping[str, str]) -> int:
    """The daemon and the webserver until the webserver ends, Ctrl-C or SIGTERM; both stopped either way."""
    # SIGTERM (a service manager, `timeout`) unwinds like Ctrl-C, so neither process outlives this one.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    daemon = subprocess.Popen(DAEMON, env=env, cwd=PROJECT)
    webserver = subprocess.Popen(WEBSERVER, env=env, cwd=PROJECT)
    try:
        return webserver.wait()
    except KeyboardInterrupt:
        return 0
    finally:
        for process in (webserver, daemon):
            process.terminate()
        for process in (webserver, daemon):
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()


def main() -> int:
    use_project_instance()
    if os.environ.get("NEXUDUS_BASE_URL"):
        print(f"Using the Nexudus account at {os.environ['NEXUDUS_BASE_URL']} (no simulator).")
        return serve(os.environ)
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
        return serve(env)


if __name__ == "__main__":
    sys.exit(main())
