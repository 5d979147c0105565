"""The warehouse on disk: a private working file that runs write, and the published file people open.

DuckDB lets one process write a file, and a reader in another process (the DuckDB CLI, Metabase,
Evidence) holds a lock on it, so a sync writing the file people read would wait for them, then fail.
So runs never write the published file. They write a working file of their own beside it (hidden,
`.<stem>.working<suffix>`), and a publish checkpoints it, copies it to a temp file in the same
directory, fsyncs it and renames it onto the published path. A process that has the published file
open keeps the file it opened (the old inode), consistent, and sees the new data when it opens the
path again.

The copy is made by the kernel (`copy_file_range`): on a filesystem with reflinks (Btrfs, XFS,
ZFS) the new file shares the old one's blocks and costs next to nothing; elsewhere the data still
never passes through this process, which spares the page-cache round trips of a buffered copy.
Even so a copy costs the size of the warehouse, not of the changes, so a run publishes once:
its write sessions (`write(publish=False)`) leave the working file checkpointed and mark it as
changed (`.<stem>.unpublished`), and `publish_pending` copies it when the run's execution ends, a failed
step or not: each session is one transaction, so the working file holds only what committed. A
run killed before that leaves the file readers had, and the mark: the next run, or the next write
session outside a run (which publishes at its end, as a script's does), publishes it. Until then
what a run recorded as made may be missing from the published file; `has_unpublished_changes`
says so to whoever acts on it.

Write sessions and publishes take an exclusive lock on a third file (`.<stem>.lock`) for their
whole length, so two never interleave, and a working file is never copied while another process
writes it.

DuckDB replays a log found beside a file when it opens it (`<file>.wal`, and `.wal.checkpoint`,
`.wal.recovery` while a checkpoint is under way). Someone who writes in the published file and is
killed leaves one, written for the old file; beside the new file DuckDB refuses to open it at all.
So a publish first removes the published file's logs, then renames the new file in: nobody can
open the new file under that name with the old log still there. A reader that still cannot open
the published file (a log written in the short moment between the two) reads the working file.

The files hold members' names and access codes: what a run creates (the working file, its log,
its spills, a first published file, the lock, the mark) is private to the user running it (0600),
whatever the umask. A publish gives the new file the mode (and, where allowed, the group) of the
file it replaces, so an operator's `chmod 640` and `chgrp analysts` survive every sync.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import re
import shutil
import stat
import sys
import threading
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
#: Beside a database file, what DuckDB reads when it opens it.
_LOG_SUFFIXES = (".wal", ".wal.checkpoint", ".wal.recovery")
_PRIVATE = 0o600
#: Bytes one `copy_file_range` call is asked for (the kernel may do fewer), and one buffer
#: of the copy through this process.
_KERNEL_COPY_CHUNK = 1 << 30
_BUFFER_BYTES = 1 << 20
#: `copy_file_range` errors that mean "not here": copy through user space instead.
_NO_KERNEL_COPY = frozenset({errno.EXDEV, errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP, errno.EBADF, errno.EPERM})
#: Files DuckDB creates follow the umask; sessions of all threads share one restricted umask.
_umask_lock = threading.Lock()
_umask_holders = 0
_umask_before = 0


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

    @property
    def unpublished(self) -> Path:
        """Present while the working file may hold committed changes the published file lacks."""
        return self.published.with_name(f".{self.published.stem}.unpublished")

    @contextmanager
    def write(self, *, publish: bool = True) -> Iterator[duckdb.DuckDBPyConnection]:
        """A read-write connection to the working file, published when the block ends without error.

        `publish=False` leaves the publish to `publish_pending` (once per run instead of once per
        session), and marks the working file as unpublished, whether the session fails or not.
        Waits up to `lock_timeout_seconds` for another write session or a process holding the
        working file, then raises WarehouseBusyError naming the holder.
        """
        deadline = time.monotonic() + self.lock_timeout_seconds
        with self._session(deadline) as seeded:
            conn = self._open_working(deadline, read_only=False, seeded=seeded)
            if not publish:
                # Before anything commits: what a session commits before it fails is published too.
                self._mark_unpublished()
            try:
                yield conn
                # Everything goes into the main file, so the copy needs no WAL beside it.
                conn.execute("CHECKPOINT")
            finally:
                conn.close()
            # Only after closing: closing any descriptor of a file drops the whole process's POSIX
            # locks on it, DuckDB's included, so the file is read only once DuckDB is done with it.
            if publish:
                self._publish()

    def publish_pending(self) -> bool:
        """Publishes the working file if write sessions left changes unpublished; True if it did.

        Takes the session lock like a write session (and waits for one the same way). What a
        session had not committed when it failed or was killed is not in the working file: DuckDB
        keeps only committed transactions.
        """
        if not self.unpublished.exists():
            return False
        deadline = time.monotonic() + self.lock_timeout_seconds
        with self._session(deadline):
            if not self.unpublished.exists():  # another process published them meanwhile
                return False
            if any(log.exists() for log in self.logs_of(self.working)):
                # A session that failed after committing may leave its commits in the log: into the file first.
                self._open_working(deadline, read_only=False, seeded=False).close()
            self._publish()
        return True

    def has_unpublished_changes(self) -> bool:
        """Whether the published file may lack what a run already wrote (and recorded in Dagster)."""
        return self.unpublished.exists()

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
        holders, unreadable = [], []
        for path in candidates:
            try:
                conn = self._open(path, read_only=True)
            except duckdb.Error as error:
                # Whatever keeps the published file from opening, the working file may still open.
                if _is_busy(error):
                    holders.append(f"{path} is held by {_holder_of(error)}")
                else:
                    unreadable.append(self._unreadable(path, error))
                continue
            try:
                yield conn
            finally:
                conn.close()
            return
        if not holders:
            raise unreadable[0]
        raise WarehouseBusyError(
            f"The warehouse cannot be read now: {'; '.join(holders + [str(e) for e in unreadable])}. A run"
            " publishes a fresh copy when it finishes; try again then. Open the published file read-only"
            " (`duckdb -readonly`) to never stand in the way."
        )

    def _not_synced(self) -> WarehouseNotSyncedError:
        return WarehouseNotSyncedError(
            f"The warehouse {self.published} is not synced yet: run the nexudus_sync job to create it."
        )

    def _open(self, path: Path, *, read_only: bool) -> duckdb.DuckDBPyConnection:
        return connect(str(path), read_only=read_only, config=self.config)

    def logs_of(self, path: Path) -> list[Path]:
        """The files beside `path` DuckDB would replay into it on opening."""
        return [path.with_name(path.name + suffix) for suffix in _LOG_SUFFIXES]

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
        lock_fd = os.open(self.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, _PRIVATE)
        with _private_files(), os.fdopen(lock_fd, "a+") as lock_file:
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
        self._copy_into_place(self.published, self.working)
        return True

    def _publish(self) -> None:
        self._copy_into_place(self.working, self.published)
        # After the rename: a publish killed before it leaves the mark for the next one.
        self.unpublished.unlink(missing_ok=True)

    def _mark_unpublished(self) -> None:
        os.close(os.open(self.unpublished, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, _PRIVATE))

    def _copy_into_place(self, source: Path, target: Path) -> None:
        """Copy, fsync, drop `target`'s logs, rename: whoever opens `target` finds the old file or the whole new one."""
        prefix = f".{target.name.lstrip('.')}."
        # Left by a copy killed midway; the session lock is ours, so no copy is under way.
        for leftover in target.parent.glob(f"{prefix}*.partial"):
            leftover.unlink(missing_ok=True)
        partial = target.with_name(f"{prefix}{uuid.uuid4().hex}.partial")
        try:
            with source.open("rb") as reader, _create_like(partial, target) as writer:
                copy_contents(reader, writer)
                os.fsync(writer.fileno())
            # Logs beside `target` were written for the file being replaced (an analyst's write
            # killed midway, a working file deleted by hand); replayed into the new one, they
            # would stop DuckDB from opening it.
            for log in self.logs_of(target):
                log.unlink(missing_ok=True)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def copy_contents(reader: IO[bytes], writer: IO[bytes]) -> None:
    """Copy the whole of `reader` into the empty `writer`, inside the kernel where it can.

    `copy_file_range` shares the blocks instead of copying them on filesystems with reflinks
    (Btrfs, XFS, ZFS) and copies without passing through this process elsewhere; where the
    kernel or the filesystem refuses it (across filesystems before Linux 5.3, some network
    filesystems), it is copied here, from wherever the kernel stopped.
    """
    source, target = reader.fileno(), writer.fileno()
    copied = 0
    if hasattr(os, "copy_file_range"):
        size = os.fstat(source).st_size
        try:
            while copied < size:
                done = os.copy_file_range(source, target, min(size - copied, _KERNEL_COPY_CHUNK), copied, copied)
                if done == 0:
                    break  # the end came sooner than its size said
                copied += done
        except OSError as error:
            if error.errno not in _NO_KERNEL_COPY:
                raise
    if copied:
        reader.seek(copied)
        writer.seek(copied)
    shutil.copyfileobj(reader, writer, length=_BUFFER_BYTES)
    writer.flush()


def _create_like(path: Path, replaced: Path) -> IO[bytes]:
    """A new file at `path`, private, or with the mode and group of `replaced` when there is one."""
    writer = os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, _PRIVATE), "wb")
    try:
        before = os.stat(replaced)
    except FileNotFoundError:
        return writer
    try:
        os.fchmod(writer.fileno(), stat.S_IMODE(before.st_mode))
        if before.st_gid != os.fstat(writer.fileno()).st_gid:
            # Allowed to the file's owner in that group, or to root; otherwise the group is the user's.
            with contextlib.suppress(PermissionError):
                os.fchown(writer.fileno(), -1, before.st_gid)
    except BaseException:
        writer.close()
        raise
    return writer


@contextmanager
def _private_files() -> Iterator[None]:
    """While any session of this process is open, what it creates is readable by its user only.

    The umask is the process's, so the first session in restricts it and the last one out puts back
    what was there. DuckDB creates the files itself and offers no mode of its own.
    """
    global _umask_holders, _umask_before
    with _umask_lock:
        if _umask_holders == 0:
            _umask_before = os.umask(0o077)
            os.umask(_umask_before | 0o077)
        _umask_holders += 1
    try:
        yield
    finally:
        with _umask_lock:
            _umask_holders -= 1
            if _umask_holders == 0:
                os.umask(_umask_before)
