"""The code location against a server that behaves as live accounts do: long throttling, bursts
of the generic error, a user missing one entity's roles, one token per client_id."""

from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from nexudus_assets.definitions import build_defs
from nexudus_assets.nexudus import (
    ACCESS_TOKENS,
    COWORKER_CONTRACTS,
    COWORKER_TIME_PASSES,
    ENTITIES,
    RetryPolicy,
    ServerError,
)
from nexudus_assets.resources import AlertWebhookResource, NexudusApiResource, Pacing, WarehouseResource
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets_tests.utils import Running, live_rows, metadata, persistent_instance

RAW_TABLES = [entity.table for entity in ENTITIES]


class LiveProject:
    """The raw steps of the code location wired to one simulator, run in this process."""

    def __init__(self, running: Running, directory: Path, *, auth: str = "basic", throttle_patience: float = 900):
        self.running = running
        self.warehouse = WarehouseResource(database=str(directory / "warehouse.duckdb"))
        resources = {
            "nexudus_api": NexudusApiResource(
                base_url=running.base_url,
                username=DEFAULT_USERNAME,
                password=DEFAULT_PASSWORD,
                auth=auth,
                pacing=Pacing(enabled=False),
                throttle_patience=throttle_patience,
            ),
            "warehouse": self.warehouse,
            "alerts": AlertWebhookResource(url=None),
        }
        self.job = build_defs(resources, ()).resolve_job_def("nexudus_sync")
        self.instance = persistent_instance(directory)

    def sync(self) -> dg.ExecuteInProcessResult:
        return self.job.execute_in_process(
            instance=self.instance,
            raise_on_error=False,
            asset_selection=[dg.AssetKey(table) for table in RAW_TABLES],
        )

    def exact(self, entity: Any) -> bool:
        models = [entity.model.model_validate(raw) for raw in self.running.sim.records(entity)]
        upstream = {m.id: m.model_dump(exclude=set(entity.model.display_fields)) for m in models}
        with self.warehouse.read_only_connection() as conn:
            return live_rows(conn, entity) == upstream


def step_failures(result: dg.ExecuteInProcessResult) -> dict[str, str]:
    """Each failed step's error, its causes included, by step."""
    failures = {}
    for event in result.all_events:
        if event.event_type == dg.DagsterEventType.STEP_FAILURE:
            error = event.step_failure_data.error
            messages = []
            while error is not None:
                messages.append(error.message)
                error = error.cause
            failures[event.step_key or ""] = " | ".join(messages)
    return failures


@pytest.fixture
def small_account(start_simulator: Any) -> Running:
    return start_simulator(seed=18, tokens=12, contracts=9, passes=7)


THROTTLING = {
    # The wait only in a 429's body, as live accounts send it.
    "429-wait-in-body": {"throttle_stretch_status": 429, "throttle_wait_in_body": True, "retry_after": 1},
    # 409 with `Retry-After: 1`, repeated while the account's budget recovers.
    "409-retry-after-1": {"throttle_stretch_status": 409, "retry_after": 1},
}


def _throttled_sync(small_account: Running, tmp_path: Path, form: str, stretch: float) -> None:
    project = LiveProject(small_account, tmp_path)
    small_account.sim.faults.update({**THROTTLING[form], "throttle_stretch_seconds": stretch})

    result = project.sync()

    assert result.success, step_failures(result)
    assert all(project.exact(entity) for entity in ENTITIES)
    throttled = sum(metadata(result, table)["throttled_responses"] for table in RAW_TABLES)
    waited = sum(metadata(result, table)["throttle_wait_seconds"] for table in RAW_TABLES)
    assert throttled == small_account.sim.stats["throttled"] >= stretch - 1
    assert waited >= stretch - 1.5


@pytest.mark.parametrize("form", THROTTLING)
def test_a_stretch_of_throttling_is_waited_out_and_the_sync_is_exact(small_account, tmp_path, form):
    _throttled_sync(small_account, tmp_path, form, stretch=3)


@pytest.mark.slow
@pytest.mark.parametrize(("form", "stretch"), [("429-wait-in-body", 20), ("409-retry-after-1", 60)])
def test_the_long_throttling_stretches_of_live_accounts_are_waited_out(small_account, tmp_path, form, stretch):
    _throttled_sync(small_account, tmp_path, form, stretch)


def test_throttling_past_the_patience_fails_the_step_naming_the_setting(small_account, tmp_path):
    project = LiveProject(small_account, tmp_path, throttle_patience=2)
    small_account.sim.faults.update({"throttle_stretch_seconds": 30, "retry_after": 1})

    result = project.sync()

    assert not result.success
    failures = step_failures(result)
    assert failures and all("NEXUDUS_THROTTLE_PATIENCE" in message for message in failures.values())


#: The default policy but for the length of its waits: the count of attempts is what outlasts a burst.
QUICK_DEFAULT_ATTEMPTS = RetryPolicy(backoff_initial=0.01, backoff_max=0.05)


@pytest.mark.parametrize("status", [500, 400])
def test_a_burst_of_the_generic_error_is_outlasted_on_reads(small_account, status):
    small_account.sim.faults.update({"error_burst": 6, "error_burst_status": status})

    with small_account.client(retry=QUICK_DEFAULT_ATTEMPTS) as client:
        records = list(client.iter_records(COWORKER_TIME_PASSES))

    assert len(records) == len(small_account.sim.records(COWORKER_TIME_PASSES))
    assert small_account.sim.stats["by_status"][status] == 6
    assert client.stats.retries == 6


@pytest.mark.parametrize("status", [500, 400])
def test_the_generic_error_on_a_write_is_not_sent_again_and_may_have_been_applied(small_account, status):
    token_id = small_account.sim.records(ACCESS_TOKENS)[0]["Id"]
    with small_account.client(retry=QUICK_DEFAULT_ATTEMPTS) as client:
        command = client.commands(ACCESS_TOKENS)[0]
        small_account.sim.faults.update({"error_burst": 6, "error_burst_status": status})
        with pytest.raises(ServerError) as failed:
            client.run_command(ACCESS_TOKENS, command.key, [token_id], [])
    assert failed.value.may_have_been_applied and "not retried" in str(failed.value)
    assert [entry[3] for entry in small_account.sim.request_log if entry[1].endswith("runcommand")] == [status]


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_a_missing_role_fails_that_entity_alone_naming_the_role(small_account, tmp_path, auth):
    project = LiveProject(small_account, tmp_path, auth=auth)
    small_account.sim.faults.update({"denied_entities": ["CoworkerTimePass"]})

    result = project.sync()

    failures = step_failures(result)
    assert list(failures) == [COWORKER_TIME_PASSES.table]
    message = failures[COWORKER_TIME_PASSES.table]
    assert "CoworkerTimePass-List" in message and "CoworkerTimePass records" in message
    assert "billing/coworkertimepasses" in message
    assert project.exact(ACCESS_TOKENS) and project.exact(COWORKER_CONTRACTS)
    # Not remembered as a refused sign-in: the next run reads the others again, and time passes once granted.
    small_account.sim.faults.update({"denied_entities": []})
    assert project.sync().success
    assert all(project.exact(entity) for entity in ENTITIES)


def test_two_syncs_with_one_token_per_client_id_sign_in_once_each(start_simulator, tmp_path):
    running = start_simulator(seed=18, tokens=12, contracts=9, passes=7, one_token_per_client_id=True)
    project = LiveProject(running, tmp_path, auth="bearer")

    runs = [project.sync(), project.sync()]

    for result in runs:
        assert result.success, step_failures(result)
        assert sum(metadata(result, table)["password_grants"] for table in RAW_TABLES) == 1
    sign_ins = [entry for entry in running.sim.request_log if entry[1] == "/api/token"]
    assert [entry[3] for entry in sign_ins] == [200, 200]
    assert 401 not in running.sim.stats["by_status"]
    assert all(project.exact(entity) for entity in ENTITIES)
