"""Shared fixtures: a real simulator on 127.0.0.1 and clients pointed at it; Dagster instances on
SQLite and on a real PostgreSQL."""

import shutil
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
import yaml

from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME, Simulator, SimulatorServer
from nexudus_assets_tests.postgres import PostgresMissingError, PostgresServer
from nexudus_assets_tests.utils import Running, Webhook

PROJECT = Path(__file__).resolve().parent.parent
#: What `make dev` uses: run-sharded SQLite under DAGSTER_HOME, the project's run queue.
LOCAL_INSTANCE = PROJECT / "dagster.yaml"
#: The deployed instance; the tests take its PostgreSQL storage section.
DEPLOYED_INSTANCE = PROJECT / "deploy" / "dagster.yaml"


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Fails a test of an `xdist_group` that `--dist loadgroup` would not keep with its group.

    pytest-xdist tells its scheduler a test's group by appending `@<group>` to the test's id in
    each worker. A pytest that drops the suffix lets the group spread over every worker, with no
    error, and each worker then starts the deployment the group's tests were written to share.
    """
    loadgroup = getattr(item.config.option, "loadgroup", False)  # set in the workers of loadgroup only
    if loadgroup and item.get_closest_marker("xdist_group") and item.nodeid.rfind("@") < item.nodeid.rfind("]"):
        pytest.fail(
            "--dist loadgroup does not keep this test with its xdist_group with the pytest and pytest-xdist"
            " installed: install the versions of constraints.txt",
            pytrace=False,
        )


@pytest.fixture
def start_simulator() -> Iterator[Callable[..., Running]]:
    """Starts simulators with the given settings; all stop at the end of the test."""
    with ExitStack() as stack:

        def start(**settings: Any) -> Running:
            settings.setdefault("username", DEFAULT_USERNAME)
            settings.setdefault("password", DEFAULT_PASSWORD)
            sim = Simulator(**settings)
            server = stack.enter_context(SimulatorServer(sim))
            return Running(sim, server.base_url)

        yield start


@pytest.fixture
def running(start_simulator: Callable[..., Running]) -> Running:
    """A small account: 30 tokens, 20 contracts, 20 passes, legacy list shape."""
    return start_simulator(seed=3, tokens=30, contracts=20, passes=20)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """One PostgreSQL server per test process (per xdist worker); see `fresh_database()`."""
    try:
        server = PostgresServer()
    except PostgresMissingError as exc:
        pytest.fail(str(exc), pytrace=False)
    with server:
        yield server


@pytest.fixture(params=["sqlite", "postgres"], ids=["sqlite", "postgres"])
def dagster_instance(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[dg.DagsterInstance]:
    """A persistent instance in a temporary DAGSTER_HOME, once per storage.

    `sqlite`: the project's dagster.yaml as it is. `postgres`: the same settings with the storage
    section of deploy/dagster.yaml, on a database of its own (the `DAGSTER_POSTGRES_*` variables
    are set for the test).
    """
    home = tmp_path / "dagster_home"
    home.mkdir()
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres_server")
        for name, value in server.fresh_database().items():
            monkeypatch.setenv(name, value)
        settings = yaml.safe_load(LOCAL_INSTANCE.read_text())
        settings["storage"] = yaml.safe_load(DEPLOYED_INSTANCE.read_text())["storage"]
        (home / "dagster.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    else:
        shutil.copyfile(LOCAL_INSTANCE, home / "dagster.yaml")
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    with dg.DagsterInstance.get() as instance:
        yield instance


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    """A webhook receiver on 127.0.0.1 for the alert sensor."""
    receiver = Webhook()
    yield receiver
    receiver.close()
