"""One process at a time talks to an account: the client's budget then holds across processes.

The pacing budget (`pacing.py`) is shared by every client in one process. A second process
(a run started from the command line while the daemon runs another) would pace itself
independently and the two together could exceed the account's limits. So a client that
paces takes an exclusive `flock` on a file named after the account for as long as it is
open. The kernel drops that lock when the process dies, however it dies: a killed run never
leaves the account claimed, unlike a slot in a Dagster concurrency pool, which stays taken
until something marks the dead run as finished.

The lock files live in a directory private to the user running the process (0700, owned by
them): `nexudus-assets-leases-<uid>` in the temp directory. Its name is predictable, and the lock
file's name follows from the account's public base URL and e-mail, so another local user could
prepare either in advance: a directory they own, or a symlink in place of the lock file pointing
at a file of ours that truncating would destroy. So the directory is checked before use (not a
link, owned by us, closed to group and others) and refused, naming it, otherwise; the lock file is
opened with `O_NOFOLLOW` and never truncated through a link or a second name.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexudus_assets.nexudus.errors import NexudusError
from nexudus_assets.nexudus.pacing import account_key

log = logging.getLogger(__name__)


def default_directory() -> Path:
    """The lease directory of the user running this process."""
    return Path(tempfile.gettempdir()) / f"nexudus-assets-leases-{os.geteuid()}"


class LeaseTimeoutError(NexudusError):
    """Another process kept the account for longer than this one was willing to wait."""


class LeaseDirectoryError(NexudusError):
    """The lease directory or a lock file in it could be used by another local user; nothing was written."""


@dataclass
class _Held:
    fd: int
    holders: int


_held: dict[Path, _Held] = {}
#: Guards `_held`; also serialises the acquisitions of one process, so one thread waits on the file.
_held_lock = threading.Lock()


class AccountLease:
    """A claim on one account (base URL and user) by this process; re-entrant across threads."""

    def __init__(
        self,
        base_url: str,
        username: str,
        *,
        directory: Path | None = None,
        timeout: float = 3600.0,
        poll: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Hashed: the file name must not reveal which user the account is.
        digest = hashlib.sha256("\n".join(account_key(base_url, username)).encode()).hexdigest()[:24]
        self.path = (directory or default_directory()) / f"{digest}.lock"
        self.timeout = timeout
        self._poll = poll
        self._clock = clock
        self._holding = False

    @property
    def holding(self) -> bool:
        return self._holding

    def acquire(self) -> float:
        """Claim the account, waiting for another process to let go; returns the seconds waited."""
        if self._holding:
            return 0.0
        with _held_lock:
            held = _held.get(self.path)
            if held is not None:
                held.holders += 1
                self._holding = True
                return 0.0
            waited = self._lock_file()
            self._holding = True
            return waited

    def release(self) -> None:
        if not self._holding:
            return
        with _held_lock:
            self._holding = False
            held = _held[self.path]
            held.holders -= 1
            if held.holders == 0:
                del _held[self.path]
                os.close(held.fd)  # closing the descriptor drops the flock

    def _lock_file(self) -> float:
        _ensure_private_directory(self.path.parent)
        fd = _open_lock_file(self.path)
        started = self._clock()
        announced = False
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    waited = self._clock() - started
                    owner = _read_owner(fd)
                    if waited >= self.timeout:
                        raise LeaseTimeoutError(
                            f"another process ({owner}) has been using this Nexudus account for over "
                            f"{self.timeout:.0f}s; its requests and ours together would exceed the limits"
                        ) from None
                    if not announced:
                        log.warning("waiting for another process (%s) to finish with this Nexudus account", owner)
                        announced = True
                    time.sleep(self._poll)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        _held[self.path] = _Held(fd=fd, holders=1)
        return self._clock() - started


def _ensure_private_directory(directory: Path) -> None:
    directory.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # whatever is there is checked next
        directory.mkdir(mode=0o700)
    found = os.lstat(directory)
    problem = None
    if stat.S_ISLNK(found.st_mode):
        problem = "is a symbolic link"
    elif not stat.S_ISDIR(found.st_mode):
        problem = "is not a directory"
    elif found.st_uid != os.geteuid():
        problem = f"belongs to uid {found.st_uid}, not to this process's user (uid {os.geteuid()})"
    elif found.st_mode & 0o077:
        problem = f"is open to other users (mode {stat.S_IMODE(found.st_mode):04o}, not 0700)"
    if problem is not None:
        raise LeaseDirectoryError(
            f"the account lease directory {directory} {problem}, so another local user could take over its"
            " lock files; nothing was written. Remove it (or make it a 0700 directory of this user) and start"
            " again."
        )


def _open_lock_file(path: Path) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as error:
        raise LeaseDirectoryError(
            f"the account lease file {path} cannot be opened safely ({error.strerror}); a symbolic link there is"
            " never followed. Remove it and start again."
        ) from None
    found = os.fstat(fd)
    # A second name (a hard link) would let truncating the lock file destroy another file.
    if not stat.S_ISREG(found.st_mode) or found.st_nlink != 1 or found.st_uid != os.geteuid():
        os.close(fd)
        raise LeaseDirectoryError(
            f"the account lease file {path} is not a plain file of this user with one name; nothing was"
            " written. Remove it and start again."
        )
    return fd


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown pid"
    except OSError:
        return "unknown pid"
