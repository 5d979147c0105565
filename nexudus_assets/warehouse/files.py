"""The warehouse on disk: a private working file that runs write, and the published file people open.

DuckDB lets one process write a file, and a reader in another process (the DuckDB CLI, Metabase,
Evidence) holds a lock on it, so a sync writing the file people read would wait for them, then fail.
So runs never write the published file. They write a working file of their own beside it (hidden,
`.<stem>.working<suffix>`), and a publish checkpoints it, copies it to a temp file in the same
directory, fsyncs it and renames it onto the published path. A process that has the published file
open keeps the file it opened (the old inode), consistent, and sees the new data when it opens the
path again.

A publish writes only what changed where it can. The file a publish replaces is kept beside the
others (`.<stem>.spare<suffix>`, a hard link made just before the rename) and becomes the next
published file: the next publish writes into it only the blocks of the working file that differ
from it, found by the checksum DuckDB writes at the start of every block, then fsyncs and renames
it. An hourly run that changes a few percent of the warehouse writes a few percent of it. The spare
is written only when nobody has it open: whoever opened the published file before it was replaced
holds a DuckDB lock on it, and while any process (this one included) holds one, the publish copies
the whole working file instead, as it does when there is no spare, when the spare has another name
as well (a hard-linked backup), or when a file is not in a DuckDB storage format the block
comparison is known to hold for. The spare costs one more file the size of the warehouse; deleting
it only makes the next publish a whole copy.

A whole copy is made by the kernel (`copy_file_range`): on a filesystem with reflinks (Btrfs, XFS,
ZFS) the new file shares the old one's blocks and costs next to nothing; elsewhere the data still
never passes through this process, which spares the page-cache round trips of a buffered copy.
A run publishes once: its write sessions (`write(publish=False)`) leave the working file
checkpointed and mark it as changed (`.<stem>.unpublished`), and `publish_pending` publishes it
when the run's execution ends, a failed step or not: each session is one transaction, so the
working file holds only what committed. A run killed before that leaves the file readers had, and
the mark: the next run, or the next write session outside a run (which publishes at its end, as a
script's does), publishes it. Until then what a run recorded as made may be missing from the
published file; `has_unpublished_changes` says so to whoever acts on it.

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
import struct
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
#: The DuckDB storage formats whose layout the spare's block comparison relies on: a main header
#: and two database headers of 4 KiB each, then blocks of the size the active database header
#: gives, each starting with a 64-bit checksum of the block (storage versions 64, DuckDB 1.x and
#: its compatibility mode, and 999, DuckDB 2's default).
_DUCKDB_MAGIC = b"DUCK"
_DUCKDB_HEADERS_BYTES = 3 * 4096
_KNOWN_STORAGE_VERSIONS = frozenset({64, 999})
_BLOCK_CHECKSUM_BYTES = 8
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
    def spare(self) -> Path:
        """The file the last publish replaced, kept so that the next one writes only what changed."""
        return self.published.with_name(f".{self.published.stem}.spare{self.published.suffix}")

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
        self._copy_into_place(self.working, self.published, spare=self.spare)
        # After the rename: a publish killed before it leaves the mark for the next one.
        self.unpublished.unlink(missing_ok=True)

    def _mark_unpublished(self) -> None:
        os.close(os.open(self.unpublished, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, _PRIVATE))

    def _copy_into_place(self, source: Path, target: Path, *, spare: Path | None = None) -> None:
        """Copy, fsync, drop `target`'s logs, rename: whoever opens `target` finds the old file or the whole new one.

        With `spare`, the copy is made in the spare where it can (only the blocks that differ), and
        the file `target` held is kept there for the next time.
        """
        prefix = f".{target.name.lstrip('.')}."
        # Left by a copy killed midway; the session lock is ours, so no copy is under way.
        for leftover in target.parent.glob(f"{prefix}*.partial"):
            leftover.unlink(missing_ok=True)
        partial = target.with_name(f"{prefix}{uuid.uuid4().hex}.partial")
        try:
            if spare is None or not _rewrite_spare(spare, partial, source, target):
                partial.unlink(missing_ok=True)  # a spare that could not be used: whoever holds it keeps it
                with source.open("rb") as reader, _create_like(partial, target) as writer:
                    copy_contents(reader, writer)
                    os.fsync(writer.fileno())
            # Logs beside `target` were written for the file being replaced (an analyst's write
            # killed midway, a working file deleted by hand); replayed into the new one, they
            # would stop DuckDB from opening it.
            for log in self.logs_of(target):
                log.unlink(missing_ok=True)
            if spare is not None:
                _keep_as_spare(target, spare)
            os.replace(partial, target)
        except BaseException:
            partial.unlink(missing_ok=True)
            raise
        directory = os.open(target.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)


def _keep_as_spare(replaced: Path, spare: Path) -> None:
    """A second name for the file about to be replaced, so that it outlives the rename."""
    # No file yet (a first publish), a filesystem without hard links, something else at that name:
    # the next publish copies the whole file.
    with contextlib.suppress(OSError):
        spare.unlink(missing_ok=True)
        os.link(replaced, spare)


def _rewrite_spare(spare: Path, partial: Path, source: Path, replaced: Path) -> bool:
    """Turns the spare into a copy of `source` at `partial`, writing only the blocks that differ.

    False, leaving whatever is at `partial` to the caller, when the spare cannot be used: there is
    none, it has another name too, someone holds it open, or a file's format is not one the block
    comparison is known to hold for.
    """
    if not hasattr(fcntl, "F_OFD_SETLK"):  # without these locks, nothing tells whether it is held
        return False
    try:
        os.rename(spare, partial)  # from here no one can open it by name
        spare_fd = os.open(partial, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        found = os.fstat(spare_fd)
        # Another name (a hard-linked backup, or a publish killed between its link and its rename,
        # which left the published file itself here) would see every block written into it.
        if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1 or not _lock_unless_held(spare_fd):
            return False
        with source.open("rb") as reader:
            if not rewrite_changed_blocks(reader.fileno(), spare_fd):
                return False
        _take_mode_of(spare_fd, replaced)
        os.fsync(spare_fd)
        return True
    finally:
        os.close(spare_fd)  # and with it the lock


def _lock_unless_held(fd: int) -> bool:
    """Takes a write lock on the whole file unless someone holds a lock on it: DuckDB locks each
    file it opens (read-only ones too), and an open file description lock conflicts with those
    of every process, this one included. Released when `fd` is closed."""
    request = struct.pack("hhqqi4x", fcntl.F_WRLCK, os.SEEK_SET, 0, 0, 0)  # struct flock, whole file
    try:
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, request)
    except OSError as error:
        if error.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise
    return True


def rewrite_changed_blocks(source_fd: int, target_fd: int) -> bool:
    """Makes the file at `target_fd` byte for byte the DuckDB file at `source_fd`, writing only the
    headers and the blocks whose checksums differ; False, having written nothing, when the source is
    not in a storage format this is known to hold for."""
    size = os.fstat(source_fd).st_size
    headers = _read_exactly(source_fd, _DUCKDB_HEADERS_BYTES, 0)
    block = _block_size(headers, size)
    if block is None:
        return False
    target_size = os.fstat(target_fd).st_size
    _write_all(target_fd, headers, 0)
    unknown = bytes(_BLOCK_CHECKSUM_BYTES)  # a block never written: its content says nothing
    for offset in range(_DUCKDB_HEADERS_BYTES, size, block):
        checksum = os.pread(source_fd, _BLOCK_CHECKSUM_BYTES, offset)
        same = (
            offset + block <= target_size
            and checksum != unknown
            and os.pread(target_fd, _BLOCK_CHECKSUM_BYTES, offset) == checksum
        )
        if not same:
            _write_all(target_fd, _read_exactly(source_fd, block, offset), offset)
    os.ftruncate(target_fd, size)
    return True


def _block_size(headers: bytes, size: int) -> int | None:
    """The block size the active database header gives, if the file is laid out as this module expects."""
    if len(headers) < _DUCKDB_HEADERS_BYTES or headers[8:12] != _DUCKDB_MAGIC:
        return None
    version, *flags = struct.unpack_from("<5Q", headers, 12)
    if version not in _KNOWN_STORAGE_VERSIONS or any(flags):  # flags: an encrypted file, for one
        return None
    # Each database header: a checksum, then its iteration, meta block, free list, block count and
    # block size. The one with the higher iteration is in force.
    first, second = (struct.unpack_from("<QqqQQ", headers, offset) for offset in (4096 + 8, 8192 + 8))
    block = max(first, second)[4]
    if block < 4096 or block & (block - 1) or (size - _DUCKDB_HEADERS_BYTES) % block:
        return None
    return int(block)


def _read_exactly(fd: int, length: int, offset: int) -> bytes:
    parts, done = [], 0
    while done < length:
        part = os.pread(fd, length - done, offset + done)
        if not part:
            break
        parts.append(part)
        done += len(part)
    return b"".join(parts)


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, offset)
        view, offset = view[written:], offset + written


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
        _take_mode_of(writer.fileno(), replaced)
    except BaseException:
        writer.close()
        raise
    return writer


def _take_mode_of(fd: int, replaced: Path) -> None:
    """The mode and, where allowed, the group of `replaced`; private when there is no such file."""
    try:
        before = os.stat(replaced)
    except FileNotFoundError:
        os.fchmod(fd, _PRIVATE)
        return
    os.fchmod(fd, stat.S_IMODE(before.st_mode))
    if before.st_gid != os.fstat(fd).st_gid:
        # Allowed to the file's owner in that group, or to root; otherwise the group is the user's.
        with contextlib.suppress(PermissionError):
            os.fchown(fd, -1, before.st_gid)


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
