"""The warehouse on disk: a private working file that runs write, and the published file people open.

DuckDB lets one process write a file, and a reader in another process (the DuckDB CLI, Metabase,
Evidence) holds a lock on it, so a sync writing the file people read would wait for them, then fail.
So runs never write the published file. They write a working file of their own beside it (hidden,
`.<stem>.working<suffix>`), and each write session that ends cleanly checkpoints it, copies it to a
temp file in the same directory, fsyncs it and renames it onto the published path. A process that
has the published file open keeps the file it opened (the old inode), consistent, and sees the new
data when it opens the path again.

Write sessions take an exclusive lock on a third file (`.<stem>.lock`) for their whole length, so
two never interleave, and a working file is never copied while another process writes it.
"""

from __future__ import annotations

import fcntl
import os
import re
import shutil
import sys
import time
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import duckdb

from nexudus_assets.warehouse.connection import connect

#: Not a schema's name: opened directly, the file's catalog (`warehouse`) clashes with no schema.
DEFAULT_WAREHOUSE_PATH = "data/warehouse.duckdb"
LOCK_TIMEOUT_VARIABLE = "NEXUDUS_WAREHOUSE_LOCK_TIMEOUT"
DEFAULT_LOCK_TIMEOUT_SECONDS = 120

_HOLDER = re.compile(r"Conflicting lock is held in (?P<program>.+?) \(PID (?P<pid>\d+)\)")
#: IO errors that go away once another process lets go of the file; any other error is final.
_BUSY_MARKERS = ("Could not set lock on file", "Conflicting lock", "WAL does not match database file")
_FIRST_POLL_SECONDS = 0.05
_LONGEST_POLL_SECONDS = 1.0


class WarehouseError(RuntimeError):
    """The warehouse file cannot be used now; the message says why and what to do."""


class WarehouseNotSyncedError(WarehouseError):
    """No warehouse file exists yet: nothing has been synced."""


class WarehouseBusyError(WarehouseError):
    """Another process holds the file, for longer than a writer waits or a reader can."""


class WarehouseUnreadableError(WarehouseError):
    """The file is not a DuckDB database DuckDB can open (corrupt, truncated, another format)."""


def _is_busy(error: duckdb.Error) -> bool:
    return isinstance(error, duckdb.IOException) and any(marker in str(error) for marker in _BUSY_MARKERS)


def _holder_of(error: duckdb.Error) -> str:
    found = _HOLDER.search(str(error))
    if found is None:
        return "another process"
    return f"{found['program']} (PID {found['pid']})"


@dataclass(frozen=True)
class WarehouseFiles:
    """The published warehouse file and the files beside it that runs use."""

    published: Path
    lock_timeout_seconds: float = DEFAULT_LOCK_TIMEOUT_SECONDS
    config: Mapping[str, Any] = field(default_factory=dict)

    @property
    def working(self) -> Path:
        return self.published.with_name(f".{self.published.stem}.working{self.published.suffix}")

    @property
    def lock(self) -> Path:
        return self.published.with_name(f".{self.published.stem}.lock")

    @contextmanager
    def write(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the working file, published when the block ends without error.

        Waits up to `lock_timeout_seconds` for another write session or a process holding the
        working file, then raises WarehouseBusyError naming the holder.
        """
        deadline = time.monotonic() + self.lock_timeout_seconds
        with self._session(deadline) as seeded:
            conn = self._open_working(deadline, read_only=False, seeded=seeded)
            try:
                yield conn
                # Everything goes into the main file, so the copy needs no WAL beside it.
                conn.execute("CHECKPOINT")
            finally:
                conn.close()
            # Only after closing: closing any descriptor of a file drops the whole process's POSIX
            # locks on it, DuckDB's included, so the file is read only once DuckDB is done with it.
            self._publish()

    @contextmanager
    def read_latest(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the working file, as the last write left it; publishes nothing.

        For reads inside a run (asset checks, metadata): they see what the run just wrote.
        Raises WarehouseNotSyncedError when there is no warehouse yet.
        """
        deadline = time.monotonic() + self.lock_timeout_seconds
        with self._session(deadline) as seeded:
            if not self.working.exists():
                raise self._not_synced()
            conn = self._open_working(deadline, read_only=True, seeded=seeded)
            try:
                yield conn
            finally:
                conn.close()

    @contextmanager
    def read_published(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-only connection to the published snapshot, without waiting.

        When someone holds the published file read-write (the DuckDB CLI's default), the working
        file is read instead, unless a run is writing it at that moment: then WarehouseBusyError,
        and the caller tries again later. Raises WarehouseNotSyncedError when there is no warehouse.
        """
        candidates = [path for path in (self.published, self.working) if path.exists()]
        if not candidates:
            raise self._not_synced()
        holders = []
        for path in candidates:
            try:
                conn = self._open(path, read_only=True)
            except duckdb.Error as error:
                if not _is_busy(error):
                    raise self._unreadable(path, error) from None
                holders.append(f"{path} is held by {_holder_of(error)}")
                continue
            try:
                yield conn
            finally:
                conn.close()
            return
        raise WarehouseBusyError(
            f"The warehouse cannot be read now: {'; '.join(holders)}. A run publishes a fresh copy when it"
            " finishes a step; try again then. Open the published file read-only (`duckdb -readonly`) to"
            " never stand in the way."
        )

    def _not_synced(self) -> WarehouseNotSyncedError:
        return WarehouseNotSyncedError(
            f"The warehouse {self.published} is not synced yet: run the nexudus_sync job to create it."
        )

    def _open(self, path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        return connect(str(path), read_only=read_only, config=self.config)

    def _open_working(self, deadline: float, *, read_only: bool, seeded: bool) -> duckdb.DuckDBPyConnection:
        pause = _FIRST_POLL_SECONDS
        while True:
            try:
                return self._open(self.working, read_only=read_only)
            except duckdb.Error as error:
                if not _is_busy(error):
                    if seeded:  # the fault is in the file it was copied from
                        self.working.unlink()
                        raise self._unreadable(self.published, error) from None
                    raise self._unreadable(self.working, error) from None
                if time.monotonic() >= deadline:
                    raise self._busy(self.working, _holder_of(error)) from None
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_POLL_SECONDS)

    def _unreadable(self, path: Path, error: duckdb.Error) -> WarehouseUnreadableError:
        if path == self.working:
            remedy = (
                f"Delete it (and {path.name}.wal if present): the next run starts again from the published"
                f" file {self.published}."
            )
        else:
            remedy = "Restore it from a backup, or delete it and run the nexudus_full_refresh job."
        return WarehouseUnreadableError(f"DuckDB cannot open {path}: {error}. {remedy}")

    def _busy(self, path: Path, holder: str) -> WarehouseBusyError:
        return WarehouseBusyError(
            f"{path} is held by {holder}, and was not released within {self.lock_timeout_seconds:g} s"
            f" ({LOCK_TIMEOUT_VARIABLE}). It is the file runs write: let that process finish or stop it."
            f" To read the warehouse, open {self.published} instead; holding that one never blocks a run."
        )

    @contextmanager
    def _session(self, deadline: float) -> Iterator[bool]:
        """Holds the session lock; yields whether the working file was just seeded from the published one."""
        self.published.parent.mkdir(parents=True, exist_ok=True)
        with self.lock.open("a+") as lock_file:
            self._acquire(lock_file, deadline)
            try:
                lock_file.seek(0)
                lock_file.truncate()
                lock_file.write(f"{sys.executable} (PID {os.getpid()})\n")
                lock_file.flush()
                yield self._seed_working()
            finally:
                fcntl.flock(lock_file, fcntl.LOCK_UN)

    def _acquire(self, lock_file: IO[str], deadline: float) -> None:
        pause = _FIRST_POLL_SECONDS
        while True:
            try:
                fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    lock_file.seek(0)
                    holder = lock_file.read().strip() or "another process"
                    raise self._busy(self.working, f"a write session of {holder}") from None
            time.sleep(pause)
            pause = min(pause * 2, _LONGEST_POLL_SECONDS)

    def _seed_working(self) -> bool:
        """A published file without a working file (an upgrade, a restored backup) is where runs go on from."""
        if self.working.exists() or not self.published.exists():
            return False
        # A log left by a working file deleted by hand belongs to that file, not to this copy.
        Path(f"{self.working}.wal").unlink(missing_ok=True)
        self._copy_into_place(self.published, self.working)
        return True

    def _publish(self) -> None:
        self._copy_into_place(self.working, self.published)

    def _copy_into_place(self, source: Path, target: Path) -> None:
        """Copy, fsync, rename: whoever opens `target` finds the old file or the whole new one."""
        prefix = f".{target.name.lstrip('.')}."
        # Left by a copy killed midway; the session lock is ours, so no copy is under way.
        for leftover in target.parent.glob(f"{prefix}*.partial"):
            leftover.unlink(missing_ok=True)
        partial = target.with_name(f"{prefix}{uuid.uuid4().hex}.partial")
        try:
            with source.open("rb") as reader, partial.open("wb") as writer:
                shutil.copyfileobj(reader, writer, length=1 << 20)
                writer.flush()
                os.fsync(writer.fileno())
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
