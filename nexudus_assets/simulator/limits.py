"""The published request limits, enforced per user with sliding windows."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True)
class Window:
    """At most `requests` requests in any `seconds` seconds."""

    requests: int
    seconds: float


@dataclass(frozen=True)
class Limits:
    """The windows Nexudus publishes; every request must fit `all_methods`."""

    all_methods: tuple[Window, ...] = (Window(1, 0.1), Window(120, 60), Window(5_000, 3_600), Window(200_000, 86_400))
    #: Extra windows for POST/PUT/DELETE.
    writes: tuple[Window, ...] = (Window(60, 60), Window(5_000, 86_400))


class RateLimiter:
    """Counts each user's requests as they arrive and refuses those past a window."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, bool, Window], deque[float]] = {}

    def admit(self, user: str, write: bool) -> int | None:
        """Count the request and return None, or return the whole seconds to wait (not counted)."""
        now = time.monotonic()
        windows = [(False, window) for window in self.limits.all_methods]
        if write:
            windows += [(True, window) for window in self.limits.writes]
        with self._lock:
            wait = 0.0
            for is_write_window, window in windows:
                seen = self._seen.setdefault((user, is_write_window, window), deque())
                while seen and seen[0] <= now - window.seconds:
                    seen.popleft()
                if len(seen) >= window.requests:
                    wait = max(wait, seen[-window.requests] + window.seconds - now)
            if wait > 0:
                return max(1, math.ceil(wait))
            for is_write_window, window in windows:
                self._seen[(user, is_write_window, window)].append(now)
        return None
