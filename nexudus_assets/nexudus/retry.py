"""When one request is tried again: the bounds, and what each outcome of an attempt leads to.

Kept apart from sending: the client makes attempts, `Attempts` decides whether the next one
waits out throttling, backs off after a failure, or gives up with the error to raise.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import time
from dataclasses import dataclass, field

import httpx

from nexudus_assets.nexudus.errors import NexudusError, ThrottledError, TransportError, UncertainOutcomeError

#: Answers that say "slow down": 409 as the reference documents it, 429 as some SDKs do.
THROTTLING_STATUSES = frozenset({409, 429})

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one request: attempts for failures, waits for throttling, total time."""

    max_attempts: int = 5
    backoff_initial: float = 0.5
    backoff_max: float = 30.0
    max_throttled: int = 20
    max_elapsed: float = 600.0

    def backoff(self, attempt: int) -> float:
        # Full jitter: spreads retries of many clients instead of synchronising them.
        return random.uniform(0, min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1)))


class RetryableFailure(Exception):
    """An attempt failed in a way another attempt may mend; `error` is raised when none does."""

    def __init__(self, error: type[NexudusError], problem: str) -> None:
        super().__init__(problem)
        self.error = error
        self.problem = problem


@dataclass
class Attempts:
    """The attempts at one request under a `RetryPolicy`; `described` names the request in errors."""

    policy: RetryPolicy
    described: str
    #: Whether sending the request twice does no harm (a read, a PUT of the whole record).
    replay_safe: bool
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    throttled: int = 0

    def unanswered(self, problem: str, *, never_sent: bool) -> RetryableFailure:
        """No answer came: worth another attempt unless the request may have been applied."""
        if not self.replay_safe and not never_sent:
            # Called while the transport error is handled; its traceback adds nothing to this message.
            raise UncertainOutcomeError(
                f"{self.described}: no answer ({problem}); it may have been applied, so it was not retried"
            ) from None
        return RetryableFailure(TransportError, problem)

    def throttling_wait(self, response: httpx.Response) -> float:
        """Seconds to wait out a throttling answer, as `Retry-After` says; raises ThrottledError past the bounds."""
        self.throttled += 1
        wait = retry_after(response.headers.get("Retry-After"))
        wait = self.policy.backoff(self.throttled) if wait is None else wait
        if self.throttled > self.policy.max_throttled or self._past_bounds(wait):
            raise ThrottledError(
                f"still throttled after {self.throttled} answers (the server asks to wait {wait:.0f}s)",
                status_code=response.status_code,
                request=self.described,
            )
        log.warning("%s throttled (HTTP %d); waiting %.2fs as told", self.described, response.status_code, wait)
        return wait

    def backoff_wait(self, failure: RetryableFailure) -> float:
        """Seconds to back off before the next attempt; raises the failure's error past the bounds."""
        self.failures += 1
        wait = self.policy.backoff(self.failures)
        if self.failures >= self.policy.max_attempts or self._past_bounds(wait):
            raise failure.error(
                f"{self.described}: gave up after {self.failures} attempts, the last one got {failure.problem}"
            )
        log.warning("%s: %s; retry %d in %.2fs", self.described, failure.problem, self.failures, wait)
        return wait

    def _past_bounds(self, wait: float) -> bool:
        return time.monotonic() + wait - self.started > self.policy.max_elapsed


def retry_after(value: str | None) -> float | None:
    """`Retry-After` in seconds, given as seconds or as an HTTP date; None when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        moment = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, (moment - dt.datetime.now(dt.UTC)).total_seconds())
