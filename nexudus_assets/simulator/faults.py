"""Misbehaviour the simulator can be told to show, changeable while it serves."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

#: Ids no Nexudus record has, as a hostile or broken server might send them; `Faults.hostile_ids`
#: picks among them by name.
HOSTILE_IDS: dict[str, Any] = {
    "true": True,
    "object": {"a": 1},
    "huge": 2**70,
    "numeric_string": "12",
    "float": 1.5,
}


@dataclass
class Faults:
    """Rates are probabilities per request (0..1). Draws come from a seeded RNG."""

    #: Waited before anything else, the rate limiter included: requests sent together reach
    #: the limiter in a shuffled order, which widens the races a client has to survive.
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    #: 500 with the documented error body.
    error_rate: float = 0.0
    #: 409 with `Retry-After: retry_after`.
    throttle_rate: float = 0.0
    retry_after: int = 1
    #: Above 0: every request throttled for this many seconds from the first one after it is set,
    #: as a live account's shared budget does while it recovers.
    throttle_stretch_seconds: float = 0.0
    #: The status of the stretch's answers: 409 as documented, or 429 as live accounts also send.
    throttle_stretch_status: int = 409
    #: Throttled answers (stretch or rate) carry no `Retry-After`: the wait is only in the body,
    #: `You must wait before accessing this url again. Wait <retry_after> seconds`.
    throttle_wait_in_body: bool = False
    #: The next this many requests answer the generic failure (`Ooops! There was a problem ...`).
    error_burst: int = 0
    #: The burst's status: 500, or 400 as live accounts sometimes send the same text.
    error_burst_status: int = 500
    #: Entity names (`CoworkerTimePass`) whose endpoints answer 401: a user missing their roles.
    denied_entities: tuple[str, ...] = ()
    #: Answered 403 instead: an entity's every endpoint (`CoworkerTimePass`), or only its command
    #: catalogue and commands (`CoworkerTimePass/commands`), as a server refusing a role by 403 does.
    forbidden_endpoints: tuple[str, ...] = ()
    #: The request is read, then the connection is closed without an answer.
    drop_rate: float = 0.0
    #: 200 whose JSON body is cut short.
    malformed_rate: float = 0.0
    #: 200 with an HTML maintenance page.
    html_rate: float = 0.0
    #: Lists claim this many more items (and pages) than there are; the pages stop short.
    total_items_inflation: int = 0
    #: Every list page holds fresh Ids and says `HasNextPage: true` (and one more page in
    #: `TotalPages`), while `TotalItems` stays the true, small count: a server paging for ever.
    endless_pages: bool = False
    #: Times a list drifts between two page requests: once a page is served, a record on it is
    #: deleted and a new one inserted after it, so `TotalItems` does not change.
    drift_between_pages: int = 0
    #: Every list page served adds a page of new records: `TotalItems` grows with every page.
    growing_total: bool = False
    #: Above 0: answers of HTTP 200 send their body one byte every this many seconds.
    trickle_body_seconds: float = 0.0
    #: Names from `HOSTILE_IDS`: list records at positions 1, 3, 5, ... are served with those
    #: Ids instead of their own, the rest of the record unchanged.
    hostile_ids: tuple[str, ...] = ()
    #: Above 0: the first record of each list page carries a field nested this many arrays deep.
    nesting_depth: int = 0
    #: List records carry one number as text with its unit (`MinutesLeft: "10 min"`; see
    #: `data.DRIFTED_FIELDS`), as after an upstream schema change: every record fails validation.
    schema_drift: bool = False
    #: Commands naming any of these Ids answer `WasSuccessful: false`.
    failing_command_ids: set[int] = field(default_factory=set)
    #: Whether `POST /api/token` suffers the faults too.
    include_token_endpoint: bool = False
    seed: int = 0

    def __post_init__(self) -> None:
        self.hostile_ids = _hostile_ids(self.hostile_ids)
        self.denied_entities = tuple(self.denied_entities)
        self.forbidden_endpoints = tuple(self.forbidden_endpoints)
        self._rng = random.Random(self.seed)
        self._lock = threading.Lock()
        self._stretch_started: float | None = None

    def in_throttle_stretch(self) -> bool:
        """Whether this request falls in the throttling stretch; the first one asking starts it."""
        if self.throttle_stretch_seconds <= 0:
            return False
        now = time.monotonic()
        with self._lock:
            if self._stretch_started is None:
                self._stretch_started = now
            return now - self._stretch_started < self.throttle_stretch_seconds

    def take_error_burst(self) -> bool:
        """Whether this request is one of the burst's, counting it."""
        with self._lock:
            if self.error_burst <= 0:
                return False
            self.error_burst -= 1
            return True

    def roll(self, rate: float) -> bool:
        if rate <= 0:
            return False  # no draw, so enabling one fault does not shift the others' sequence
        with self._lock:
            return self._rng.random() < rate

    def delay_seconds(self) -> float:
        if self.latency_ms <= 0 and self.jitter_ms <= 0:
            return 0.0
        with self._lock:
            jitter = self._rng.uniform(0, self.jitter_ms) if self.jitter_ms > 0 else 0.0
        return max(0.0, self.latency_ms + jitter) / 1000

    def update(self, changes: Mapping[str, Any]) -> None:
        """Merge settings by name (the admin endpoint's JSON). Unknown names raise KeyError."""
        names = {f.name: f for f in fields(self)}
        unknown = set(changes) - set(names)
        if unknown:
            raise KeyError(", ".join(sorted(unknown)))
        for name, value in changes.items():
            if name == "seed":
                with self._lock:
                    self.seed = int(value)
                    self._rng.seed(self.seed)
            elif name == "failing_command_ids":
                self.failing_command_ids = {int(i) for i in value}
            elif name == "hostile_ids":
                self.hostile_ids = _hostile_ids(value)
            elif name in ("denied_entities", "forbidden_endpoints"):
                if isinstance(value, str):
                    raise ValueError(f"{name} is a list of names, not one string")
                setattr(self, name, tuple(str(entity) for entity in value))
            elif name == "throttle_stretch_seconds":
                with self._lock:
                    self.throttle_stretch_seconds = float(value)
                    self._stretch_started = None
            else:
                setattr(self, name, type(getattr(self, name))(value))

    def to_dict(self) -> dict[str, Any]:
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        settings["failing_command_ids"] = sorted(self.failing_command_ids)
        settings["hostile_ids"] = list(self.hostile_ids)
        settings["denied_entities"] = list(self.denied_entities)
        settings["forbidden_endpoints"] = list(self.forbidden_endpoints)
        return settings


def _hostile_ids(names: Any) -> tuple[str, ...]:
    if isinstance(names, str):
        raise ValueError("hostile_ids is a list of names, not one string")
    chosen = tuple(str(name) for name in names)
    unknown = sorted(set(chosen) - HOSTILE_IDS.keys())
    if unknown:
        raise ValueError(f"unknown hostile_ids {', '.join(unknown)}; known: {', '.join(HOSTILE_IDS)}")
    return chosen
