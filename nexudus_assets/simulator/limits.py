"""The published request limits, enforced per user with sliding windows."""

from __future__ import annotations

import math
import threading
import time
from collections import deque
from dataclasses import dataclass

Windows = tuple[tuple[float, int], ...]


@dataclass(frozen=True)
class Limits:
    """(window in seconds, most requests allowed in it). Nexudus publishes these numbers."""

    all_methods: Windows = ((0.1, 1), (60, 120), (3600, 5000), (86400, 200_000))
    #: Extra windows for POST/PUT/DELETE.
    writes: Windows = ((60, 60), (86400, 5000))


class RateLimiter:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._lock = threading.Lock()
        self._seen: dict[tuple[str, bool, float], deque[float]] = {}

    def admit(self, user: str, write: bool) -> int | None:
        """Count the request and return None, or return the whole seconds to wait (not counted)."""
        now = time.monotonic()
        windows = [(False, w) for w in self.limits.all_methods]
        if write:
            windows += [(True, w) for w in self.limits.writes]
        with self._lock:
            wait = 0.0
            for is_write_window, (seconds, allowed) in windows:
                seen = self._seen.setdefault((user, is_write_window, seconds), deque())
                while seen and seen[0] <= now - seconds:
                    seen.popleft()
                if len(seen) >= allowed:
                    wait = max(wait, seen[-allowed] + seconds - now)
            if wait > 0:
                return max(1, math.ceil(wait))
            for is_write_window, (seconds, _) in windows:
                self._seen[(user, is_write_window, seconds)].append(now)
        return None
