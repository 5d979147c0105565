"""One process at a time talks to an account: the client's budget then holds across processes.

The pacing budget (`pacing.py`) is shared by every client in one process. A second process
(a run started from the command line while the daemon runs another) would pace itself
independently and the two together could exceed the account's limits. So a client that
paces takes an exclusive `flock` on a file named after the account for as long as it is
open. The kernel drops that lock when the process dies, however it dies: a killed run never
leaves the account claimed, unlike a slot in a Dagster concurrency pool, which stays taken
until something marks the dead run as finished.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from nexudus_assets.nexudus.errors import NexudusError
from nexudus_assets.nexudus.pacing import account_key

log = logging.getLogger(__name__)

DEFAULT_DIRECTORY = Path(tempfile.gettempdir()) / "nexudus-assets-leases"


class LeaseTimeoutError(NexudusError):
    """Another process kept the account for longer than this one was willing to wait."""


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
        directory: Path = DEFAULT_DIRECTORY,
        timeout: float = 3600.0,
        poll: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        # Hashed: the file name must not reveal which user the account is.
        digest = hashlib.sha256("\n".join(account_key(base_url, username)).encode()).hexdigest()[:24]
        self.path = directory / f"{digest}.lock"
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
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
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


def _read_owner(fd: int) -> str:
    try:
        return os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown pid"
    except OSError:
        return "unknown pid"
