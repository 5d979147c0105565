"""Client-side pacing to the published limits, one budget per account in the process."""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Window:
    """At most `requests` requests in any `seconds` seconds."""

    requests: int
    seconds: float


@dataclass(frozen=True)
class RateLimits:
    """Sliding windows every request must fit; writes (POST/PUT/DELETE) must also fit `writes`."""

    all_methods: tuple[Window, ...] = (
        Window(1, 0.1),
        Window(120, 60),
        Window(5_000, 3_600),
        Window(200_000, 86_400),
    )
    writes: tuple[Window, ...] = (Window(60, 60), Window(5_000, 86_400))
    #: Added to every window, for a server whose clock runs slightly faster than ours.
    margin: float = 0.01
    #: After a throttling answer the account's budget is spent (every client of the account
    #: draws on it), so for `slowdown_seconds` after the wait no two requests of the process
    #: leave closer than `throttled_interval` apart: half the published per-minute rate.
    throttled_interval: float = 1.0
    slowdown_seconds: float = 60.0

    @classmethod
    def unlimited(cls) -> RateLimits:
        """No pacing, for a server without limits: only the wait a throttling answer asks for holds requests."""
        return cls(all_methods=(), writes=(), throttled_interval=0.0, slowdown_seconds=0.0)


#: Differences below this are rounding noise in the clock arithmetic, not time.
_CLOCK_TOLERANCE = 1e-6


@dataclass
class _SlidingLog:
    window: Window
    sent: deque[float] = field(default_factory=deque)

    def wait(self, now: float, margin: float) -> float:
        period = self.window.seconds + margin
        while self.sent and now - self.sent[0] >= period - _CLOCK_TOLERANCE:
            self.sent.popleft()
        if len(self.sent) < self.window.requests:
            return 0.0
        return self.sent[0] + period - now


class Pacer:
    """Holds requests to every window as the server counts them.

    The server counts a request when it arrives, which is some time after we send it and
    before its answer comes back. So a request is booked at the moment its answer arrived, and
    the next one waits for that answer: measured from there, no window can be early at the
    server, whatever delay the network adds on the way. Thread-safe: callers queue in order.
    """

    def __init__(
        self,
        limits: RateLimits,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._sleep = sleep
        #: Held from the wait until the answer is booked: one request of the budget at a time.
        self._turn = threading.Lock()
        self._all = [_SlidingLog(w) for w in limits.all_methods]
        self._writes = [_SlidingLog(w) for w in limits.writes]
        self._paused_until = 0.0
        self._slowed_until = 0.0
        self._last_answer = -float("inf")

    @contextmanager
    def slot(self, *, write: bool) -> Iterator[float]:
        """Wait until a request fits every window and send it inside; yields the seconds waited.

        The request is booked when the block ends, answered or not: a request that failed
        on the way may still have reached the server.
        """
        logs = self._all + self._writes if write else self._all
        with self._turn:
            waited = 0.0
            while True:
                now = self._clock()
                slowed = self._last_answer + self.limits.throttled_interval - now if now < self._slowed_until else 0.0
                delay = max([self._paused_until - now, slowed] + [log.wait(now, self.limits.margin) for log in logs])
                if delay <= 0:
                    break
                self._sleep(delay)
                waited += delay
            try:
                yield waited
            finally:
                answered = self._clock()
                self._last_answer = answered
                for log in logs:
                    log.sent.append(answered)

    def throttled(self, wait: float) -> None:
        """The server said to wait `wait` seconds: nobody sharing this budget sends before then,
        and the process stays slowed for a while after."""
        # Not under the turn lock, which a waiting caller holds: a late pause only lengthens the next wait.
        now = self._clock()
        self._paused_until = max(self._paused_until, now + wait)
        self._slowed_until = max(self._slowed_until, now + wait + self.limits.slowdown_seconds)


_shared: dict[tuple[str, str, RateLimits], Pacer] = {}
_shared_lock = threading.Lock()


def account_key(base_url: str, username: str) -> tuple[str, str]:
    """One account however its URL and user are spelled: the limits are per account."""
    return base_url.rstrip("/").lower(), username.lower()


def shared_pacer(base_url: str, username: str, limits: RateLimits) -> Pacer:
    """The process-wide budget for one account on one server."""
    key = (*account_key(base_url, username), limits)
    with _shared_lock:
        if key not in _shared:
            _shared[key] = Pacer(limits)
        return _shared[key]
