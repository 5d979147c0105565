"""A real PostgreSQL server for tests, started from Debian's `postgresql` package.

Each server lives in its own temporary directory (data, socket, log) on a free port of 127.0.0.1
and is removed when stopped. It is tuned for throw-away data: no fsync, no durable commits.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType

import psycopg2

POSTGRES_ROOT = Path("/usr/lib/postgresql")
OS_USER = "postgres"
SUPERUSER = "dagster"
#: The variables deploy/dagster.yaml reads; tests and `make deploy-check` set them the same way.
ENV_NAMES = (
    "DAGSTER_POSTGRES_HOST",
    "DAGSTER_POSTGRES_PORT",
    "DAGSTER_POSTGRES_USER",
    "DAGSTER_POSTGRES_PASSWORD",
    "DAGSTER_POSTGRES_DB",
)
#: Settings that trade durability for speed: the data is thrown away after the tests.
SPEED_SETTINGS = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "200",
    "shared_buffers": "32MB",
}
START_ATTEMPTS = 3


class PostgresMissingError(RuntimeError):
    pass


def server_bin_dir(root: Path = POSTGRES_ROOT) -> Path:
    """The `bin` directory of the highest PostgreSQL version installed under `root`."""
    versions = [path.parent for path in root.glob("*/bin/initdb") if path.parent.parent.name.isdigit()]
    if not versions:
        raise PostgresMissingError(
            f"No PostgreSQL server found ({root}/<version>/bin/initdb is missing). "
            "`make test` installs it (apt-get install postgresql); on Debian run "
            "`apt-get install -y --no-install-recommends postgresql` as root."
        )
    return max(versions, key=lambda bin_dir: int(bin_dir.parent.name))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class PostgresServer:
    """One running PostgreSQL server; use it as a context manager.

    `fresh_database()` creates an empty database and returns the five `DAGSTER_POSTGRES_*`
    variables pointing at it, so every test can have storage nobody else writes to.
    """

    def __init__(self, bin_dir: Path | None = None) -> None:
        self.bin_dir = bin_dir or server_bin_dir()
        self.host = "127.0.0.1"
        self.port = 0
        self.user = SUPERUSER
        self.password = secrets.token_hex(16)
        self._root: Path | None = None
        self._database_numbers = itertools.count(1)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        self._root = Path(tempfile.mkdtemp(prefix="nexudus-pg-"))
        try:
            self._init_cluster()
            self._start_on_a_free_port()
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        if self._root is None:
            return
        if (self._data / "postmaster.pid").exists():
            # Immediate: the data is deleted next, there is nothing worth a clean shutdown.
            self._run_as_owner(["pg_ctl", "-D", str(self._data), "-m", "immediate", "-w", "stop"], check=False)
        shutil.rmtree(self._root, ignore_errors=True)
        self._root = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, traceback: TracebackType | None
    ) -> None:
        self.stop()

    # -- databases -------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"database name {name!r}: use lower-case letters, digits and underscores")
        connection = psycopg2.connect(
            host=self.host, port=self.port, user=self.user, password=self.password, dbname="postgres"
        )
        try:
            # CREATE DATABASE refuses to run inside a transaction.
            connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute(f'CREATE DATABASE "{name}"')
        finally:
            connection.close()
        return name

    def fresh_database(self) -> dict[str, str]:
        """A new, empty database; returns the `DAGSTER_POSTGRES_*` variables for it."""
        name = self.create_database(f"test_{os.getpid()}_{next(self._database_numbers)}")
        return self.env(name)

    def env(self, database: str) -> dict[str, str]:
        return dict(zip(ENV_NAMES, (self.host, str(self.port), self.user, self.password, database), strict=True))

    # -- internals -------------------------------------------------------------------------------

    @property
    def _data(self) -> Path:
        assert self._root is not None, "the server is not started"
        return self._root / "data"

    @property
    def _running_as_root(self) -> bool:
        return os.geteuid() == 0

    def _run_as_owner(self, command: list[str], *, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Runs a PostgreSQL program; as the `postgres` user when we are root, since initdb refuses root."""
        program, *arguments = command
        full_command = [str(self.bin_dir / program), *arguments]
        if self._running_as_root:
            full_command = ["runuser", "-u", OS_USER, "--", *full_command]
        finished = subprocess.run(full_command, capture_output=True, text=True, timeout=120, check=False)
        if check and finished.returncode != 0:
            raise RuntimeError(
                f"PostgreSQL's {program} failed (exit {finished.returncode}): "
                f"{(finished.stderr or finished.stdout)[-2000:]}"
            )
        return finished

    def _init_cluster(self) -> None:
        assert self._root is not None
        password_file = self._root / "password"
        password_file.write_text(self.password)
        if self._running_as_root:
            if shutil.which("runuser") is None:
                raise RuntimeError("running as root needs `runuser` (util-linux) to start PostgreSQL as `postgres`")
            shutil.chown(self._root, OS_USER, OS_USER)
            shutil.chown(password_file, OS_USER, OS_USER)
        password_file.chmod(0o600)
        self._run_as_owner(
            [
                "initdb",
                "-D",
                str(self._data),
                "-U",
                self.user,
                f"--pwfile={password_file}",
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-locale",
                "--no-sync",
            ]
        )
        password_file.unlink()

    def _start_on_a_free_port(self) -> None:
        assert self._root is not None
        base_conf = (self._data / "postgresql.conf").read_text()
        failures = []
        # Another process may take the port between our probe and the server's bind: try again.
        for _ in range(START_ATTEMPTS):
            port = free_port()
            settings = {
                **SPEED_SETTINGS,
                "port": str(port),
                "listen_addresses": f"'{self.host}'",
                "unix_socket_directories": f"'{self._root}'",
            }
            (self._data / "postgresql.conf").write_text(
                base_conf + "".join(f"{key} = {value}\n" for key, value in settings.items())
            )
            log = self._root / "server.log"
            finished = self._run_as_owner(
                ["pg_ctl", "-D", str(self._data), "-l", str(log), "-w", "-t", "60", "start"], check=False
            )
            if finished.returncode == 0:
                self.port = port
                return
            failures.append(log.read_text()[-1000:] if log.exists() else finished.stderr)
        raise RuntimeError(f"PostgreSQL did not start after {START_ATTEMPTS} attempts: {failures[-1]}")
