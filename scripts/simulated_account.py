"""Start the Nexudus simulator as a child process and point the NEXUDUS_* variables at it."""

import os
import re
import subprocess
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

USERNAME = "admin@example.com"
PASSWORD = "simulator-password"


@contextmanager
def running_simulator(arguments: Sequence[str] = ()) -> Iterator[dict[str, str]]:
    """Yields the environment a child process needs to use the simulator; stops it on exit."""
    process = subprocess.Popen(
        [sys.executable, "-m", "nexudus_assets.simulator", "--port", "0",
         "--username", USERNAME, "--password", PASSWORD, *arguments],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        line = process.stdout.readline() if process.stdout else ""
        found = re.search(r"(http://\S+/api)", line)
        if not found:
            raise SystemExit(f"the simulator did not start: {line.strip() or 'no output'}")
        yield {
            **os.environ,
            "NEXUDUS_BASE_URL": found.group(1),
            "NEXUDUS_USERNAME": USERNAME,
            "NEXUDUS_PASSWORD": PASSWORD,
            "NEXUDUS_AUTH": "basic",
        }
    finally:
        process.terminate()
        process.wait(timeout=10)
