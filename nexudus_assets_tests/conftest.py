"""Shared fixtures: a real simulator on 127.0.0.1 and clients pointed at it."""

from collections.abc import Callable, Iterator
from contextlib import ExitStack
from typing import Any

import pytest

from nexudus_assets.nexudus import NexudusClient, RateLimits, RetryPolicy
from nexudus_assets.simulator import Simulator

USERNAME = "admin@example.com"
PASSWORD = "simulator-password"
#: Quick retries: the tests check that retries happen and are bounded, not how long they wait.
FAST_RETRY = RetryPolicy(max_attempts=4, backoff_initial=0.01, backoff_max=0.05, max_elapsed=30)


class Running:
    """A started simulator and its base URL."""

    def __init__(self, sim: Simulator, base_url: str) -> None:
        self.sim = sim
        self.base_url = base_url

    def client(self, **overrides: Any) -> NexudusClient:
        settings: dict[str, Any] = {
            "username": USERNAME,
            "password": PASSWORD,
            "limits": RateLimits.unlimited(),
            "retry": FAST_RETRY,
        }
        settings.update(overrides)
        return NexudusClient(self.base_url, **settings)


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., Running]]:
    """Starts simulators with the given settings; all stop at the end of the test."""
    with ExitStack() as stack:

        def start(**settings: Any) -> Running:
            settings.setdefault("username", USERNAME)
            settings.setdefault("password", PASSWORD)
            sim = Simulator(**settings)
            server = stack.enter_context(sim.serve(port=0))
            return Running(sim, server.base_url)

        yield start


@pytest.fixture
def running(start_simulator: Callable[..., Running]) -> Running:
    """A small account: 30 tokens, 20 contracts, 20 passes, legacy list shape."""
    return start_simulator(seed=3, tokens=30, contracts=20, passes=20)
