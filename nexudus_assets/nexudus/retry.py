"""When one request is tried again: the bounds, and what each outcome of an attempt leads to.

Kept apart from sending: the client makes attempts, `Attempts` decides whether the next one
waits out throttling, backs off after a failure, or gives up with the error to raise.

Throttling and failures are bounded differently. A throttled request was refused before it
did anything, and the account's budget (shared by every client of the account) recovers in
its own time: it is waited out for as long as `throttle_patience` allows, however many
answers that takes. A failure is bounded by a count of attempts and by `max_elapsed`.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import logging
import random
import re
import time
from dataclasses import dataclass, field

import httpx

from nexudus_assets.nexudus.errors import NexudusError, ThrottledError, TransportError, UncertainOutcomeError

#: Answers that say "slow down": 409 as the reference documents it, 429 as live accounts also send.
THROTTLING_STATUSES = frozenset({409, 429})
#: Seconds a request keeps waiting out throttling answers by default.
DEFAULT_THROTTLE_PATIENCE = 900.0
#: The shortest wait between throttled attempts, whatever the server says: "wait 0 s" repeated
#: would otherwise become a tight loop.
MIN_THROTTLE_WAIT = 0.1
#: The wait Nexudus writes into a throttling body: `... Wait 2.5 seconds`.
_WAIT_IN_TEXT = re.compile(r"\bwait\s+(\d+(?:\.\d+)?)\s*(?:s\b|sec|second)", re.IGNORECASE)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds on retrying one request.

    `max_attempts` and `max_elapsed` bound failures (no answer, 5xx, the generic error); the
    backoff between them grows exponentially with jitter, so the defaults outlast a burst of
    several failures in a row. `throttle_patience` bounds the time spent throttled.
    """

    max_attempts: int = 8
    backoff_initial: float = 1.0
    backoff_max: float = 30.0
    max_elapsed: float = 600.0
    throttle_patience: float = DEFAULT_THROTTLE_PATIENCE

    def backoff(self, attempt: int) -> float:
        # Equal jitter: spreads the retries of many clients, yet each wait keeps at least half
        # its exponential length, so a run of failures is outlasted rather than retried at once.
        ceiling = min(self.backoff_max, self.backoff_initial * 2.0 ** (attempt - 1))
        return ceiling / 2 + random.uniform(0, ceiling / 2)


class RetryableFailure(Exception):
    """An attempt failed in a way another attempt may mend; `error` is raised when none does."""

    def __init__(self, error: type[NexudusError], problem: str, *, reached_server: bool = True) -> None:
        super().__init__(problem)
        self.error = error
        self.problem = problem
        #: The server got the request (it answered, or went silent after it was sent).
        self.reached_server = reached_server


@dataclass
class Attempts:
    """The attempts at one request under a `RetryPolicy`; `described` names the request in errors."""

    policy: RetryPolicy
    described: str
    #: Whether sending the request twice does no harm (a read, a PUT of the whole record).
    replay_safe: bool
    #: Whether the request writes account data (not a read, not a sign-in): then an attempt that
    #: reached the server and failed may have changed it, retried or not.
    writes: bool = False
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    #: A failed attempt reached the server.
    reached_server: bool = False
    throttled: int = 0
    #: Seconds waited on throttling answers so far.
    throttle_waited: float = 0.0

    def unanswered(self, problem: str, *, never_sent: bool) -> RetryableFailure:
        """No answer came: worth another attempt unless the request may have been applied."""
        if not self.replay_safe and not never_sent:
            # Called while the transport error is handled; its traceback adds nothing to this message.
            raise UncertainOutcomeError(
                f"{self.described}: no answer ({problem}); it may have been applied, so it was not retried"
            ) from None
        return RetryableFailure(TransportError, problem, reached_server=not never_sent)

    def throttling_wait(self, response: httpx.Response, body: bytes) -> float:
        """Seconds to wait out a throttling answer; raises ThrottledError once patience runs out.

        The wait is what `Retry-After` says, else what the body says, else an exponential backoff.
        """
        self.throttled += 1
        told = retry_after(response.headers.get("Retry-After"))
        if told is None:
            told = wait_in_body(body)
        wait = max(MIN_THROTTLE_WAIT, self.policy.backoff(self.throttled) if told is None else told)
        if time.monotonic() + wait - self.started > self.policy.throttle_patience:
            raise ThrottledError(
                f"still throttled after {self.throttled} answers over {time.monotonic() - self.started:.0f}s,"
                f" more than the {self.policy.throttle_patience:g}s allowed (NEXUDUS_THROTTLE_PATIENCE)",
                status_code=response.status_code,
                request=self.described,
            )
        log.warning("%s throttled (HTTP %d); waiting %.2fs", self.described, response.status_code, wait)
        self.throttle_waited += wait
        return wait

    def backoff_wait(self, failure: RetryableFailure) -> float:
        """Seconds to back off before the next attempt; raises the failure's error past the bounds."""
        self.failures += 1
        self.reached_server = self.reached_server or failure.reached_server
        wait = self.policy.backoff(self.failures)
        if self.failures >= self.policy.max_attempts or self._past_bounds(wait):
            raise failure.error(
                f"{self.described}: gave up after {self.failures} attempts, the last one got {failure.problem}",
                may_have_been_applied=self.writes and self.reached_server,
            )
        log.warning("%s: %s; retry %d in %.2fs", self.described, failure.problem, self.failures, wait)
        return wait

    def _past_bounds(self, wait: float) -> bool:
        # Time spent throttled does not count against the failures' bound: it has its own.
        return time.monotonic() + wait - self.started - self.throttle_waited > self.policy.max_elapsed


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
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)  # `-0000`: UTC, the zone of origin unsaid
    return max(0.0, (moment - dt.datetime.now(dt.UTC)).total_seconds())


def wait_in_body(body: bytes) -> float | None:
    """The wait a throttling body names (`... Wait 2.5 seconds`), as plain text or inside JSON's `Message`."""
    found = _WAIT_IN_TEXT.search(body[:4096].decode("utf-8", "replace"))
    return float(found.group(1)) if found else None
