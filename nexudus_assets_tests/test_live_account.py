"""The code location against a server that behaves as live accounts do: long throttling, bursts
of the generic error, a user missing one entity's roles, one token per client_id."""

import datetime as dt
import email.utils
import json
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import pytest

from nexudus_assets.definitions import build_defs
from nexudus_assets.nexudus import (
    ACCESS_TOKENS,
    COWORKER_CONTRACTS,
    COWORKER_TIME_PASSES,
    ENTITIES,
    NexudusClient,
    PermissionDeniedError,
    RateLimits,
    RetryPolicy,
    ServerError,
    ThrottledError,
    TransportError,
)
from nexudus_assets.nexudus.auth import required_role
from nexudus_assets.nexudus.retry import retry_after, wait_in_body
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


def test_a_replayable_write_that_kept_failing_may_have_been_applied_and_a_read_may_not(small_account, scripted):
    record = json.dumps(small_account.sim.records(ACCESS_TOKENS)[0]).encode()
    attempts = QUICK_DEFAULT_ATTEMPTS.max_attempts
    # The update reads the record, then PUTs it: a PUT is replayed, and any attempt may have changed it.
    server = scripted([(200, {}, record)] + [(500, {}, b"")] * attempts + [(500, {}, b"")] * attempts)
    with server.client() as client:
        with pytest.raises(ServerError) as put_failed:
            client.update(ACCESS_TOKENS, 1, {"MinutesIncluded": 5})
        with pytest.raises(ServerError) as get_failed:
            client.get(ACCESS_TOKENS, 1)
    assert put_failed.value.may_have_been_applied and str(put_failed.value).startswith("PUT")
    assert not get_failed.value.may_have_been_applied and str(get_failed.value).startswith("GET")
    assert server.methods == ["GET"] + ["PUT"] * attempts + ["GET"] * attempts


def test_a_write_that_never_reached_the_server_was_not_applied():
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        closed_port = unused.getsockname()[1]
    client = NexudusClient(
        f"http://127.0.0.1:{closed_port}/api",
        DEFAULT_USERNAME,
        DEFAULT_PASSWORD,
        limits=RateLimits.unlimited(),
        retry=QUICK_DEFAULT_ATTEMPTS,
    )
    with client, pytest.raises(TransportError) as failed:
        client.run_command(ACCESS_TOKENS, "SomeCommand", [1], [])
    assert failed.value.retryable and not failed.value.may_have_been_applied


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_a_missing_role_fails_that_entity_alone_naming_the_role(small_account, tmp_path, auth):
    project = LiveProject(small_account, tmp_path, auth=auth)
    small_account.sim.faults.update({"denied_entities": ["CoworkerTimePass"]})

    result = project.sync()

    failures = step_failures(result)
    assert list(failures) == [COWORKER_TIME_PASSES.table]
    message = failures[COWORKER_TIME_PASSES.table]
    assert "CoworkerTimePass-List" in message and "coworker time passes" in message
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


# -- the same behaviours from a small server written here, independent of the simulator ------


class Scripted:
    """A Nexudus-style server on 127.0.0.1 that plays `script` (status, headers, body) for each
    request in turn, then answers an empty list envelope; it records each request's path and method."""

    def __init__(self, script: list[tuple[int, dict[str, str], bytes]]) -> None:
        self.script = list(script)
        self.paths: list[str] = []
        self.methods: list[str] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                receiver.paths.append(self.path.split("?")[0])
                receiver.methods.append(self.command)
                status, headers, body = (
                    receiver.script.pop(0) if receiver.script else (200, {}, b'{"Records":[],"HasNextPage":false}')
                )
                self.send_response(status)
                for name, value in {"Content-Type": "application/json", **headers}.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_PUT = do_POST = do_GET

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def client(self, **settings: Any) -> NexudusClient:
        return NexudusClient(
            self.base_url,
            "someone@example.com",
            "pw",
            **{"limits": RateLimits.unlimited(), "retry": QUICK_DEFAULT_ATTEMPTS, **settings},
        )

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def scripted():
    servers: list[Scripted] = []

    def serve(script: list[tuple[int, dict[str, str], bytes]]) -> Scripted:
        servers.append(Scripted(script))
        return servers[-1]

    yield serve
    for server in servers:
        server.close()


WAIT_IN_JSON = b'{"Message":"You must wait before accessing this url again. Wait 0.4 seconds"}'
WAIT_IN_TEXT = b"You must wait before accessing this url again. Wait 0.4 seconds"


@pytest.mark.parametrize("body", [WAIT_IN_JSON, WAIT_IN_TEXT], ids=["json-message", "text"])
def test_a_429_with_the_wait_only_in_its_body_waits_that_long(scripted, body):
    server = scripted([(429, {"Content-Type": "text/plain"}, body)] * 3)
    with server.client() as client:
        assert client.list_page(ACCESS_TOKENS).records == []
    assert client.stats.throttled == 3
    assert client.stats.throttle_wait_seconds == pytest.approx(1.2)


def test_retry_after_as_an_http_date_is_waited_until_then(scripted):
    moment = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=2), usegmt=True)
    server = scripted([(409, {"Retry-After": moment}, b"")])
    started = time.monotonic()
    with server.client() as client:
        client.list_page(ACCESS_TOKENS)
    assert time.monotonic() - started >= 0.9  # the date has whole seconds: at least one is left
    assert 0.9 <= client.stats.throttle_wait_seconds <= 2.1


def test_throttling_that_names_no_wait_backs_off_and_gives_up_at_the_patience(scripted):
    server = scripted([(409, {}, b"")] * 1000)
    patient = RetryPolicy(backoff_initial=0.05, backoff_max=0.2, throttle_patience=1.5)
    with (
        server.client(retry=patient) as client,
        pytest.raises(ThrottledError, match="NEXUDUS_THROTTLE_PATIENCE") as gave_up,
    ):
        client.list_page(ACCESS_TOKENS)
    assert gave_up.value.retryable and not gave_up.value.may_have_been_applied
    assert 5 <= client.stats.throttled == len(server.paths) < 100  # backed off, not hammered


@pytest.mark.parametrize(
    ("status", "call", "role"),
    [
        (401, lambda client: client.get(COWORKER_TIME_PASSES, 5), "CoworkerTimePass-Read"),
        (403, lambda client: client.list_page(COWORKER_TIME_PASSES), "CoworkerTimePass-List"),
        (401, lambda client: client.commands(COWORKER_CONTRACTS), "CoworkerContract-List"),
    ],
)
def test_a_refusal_on_one_endpoint_names_its_role_and_spares_the_others(scripted, status, call, role):
    denied = b'{"Message":"Authorization has been denied for this request."}'
    server = scripted([(status, {}, denied)])
    with server.client() as client:
        with pytest.raises(PermissionDeniedError) as refused:
            call(client)
        assert refused.value.role == role and role in str(refused.value)
        assert not refused.value.retryable
        assert client.list_page(ACCESS_TOKENS).records == []  # the next endpoint is asked, and answers


def test_the_role_each_kind_of_request_needs():
    assert required_role("GET", "billing/coworkertimepasses") == "CoworkerTimePass-List"
    assert required_role("GET", "billing/coworkertimepasses/12") == "CoworkerTimePass-Read"
    assert required_role("PUT", "billing/coworkercontracts") == "CoworkerContract-Edit"
    assert required_role("POST", "billing/coworkercontracts/runcommand") == "CoworkerContract-Edit"
    assert required_role("POST", "spaces/accesstokens") == "AccessToken-Create"
    assert required_role("DELETE", "spaces/accesstokens/3") == "AccessToken-Delete"
    assert required_role("GET", "token") is None


@pytest.mark.parametrize(
    ("body", "wait"),
    [
        (b"You must wait before accessing this url again. Wait 2.5 seconds", 2.5),
        (b'{"Message":"You must wait before accessing this url again. Wait 3 seconds"}', 3.0),
        (b"You must wait before accessing this url again.", None),
        (b"", None),
    ],
)
def test_the_wait_is_read_from_a_throttling_body(body, wait):
    assert wait_in_body(body) == wait


def test_retry_after_reads_seconds_and_http_dates():
    assert retry_after("3") == 3.0
    assert retry_after("-2") == 0.0
    assert retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0  # in the past: no wait
    later = email.utils.format_datetime(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=30), usegmt=True)
    assert 28 <= (retry_after(later) or 0) <= 30
    assert retry_after("soon") is None and retry_after(None) is None


# -- the simulator's live-account switches, as a client sees them on the wire ----------------


def basic_get(running: Running, path: str) -> httpx.Response:
    return httpx.get(f"{running.base_url}/{path}", auth=(DEFAULT_USERNAME, DEFAULT_PASSWORD))


def test_the_simulator_throttles_a_stretch_with_the_wait_only_in_the_body(small_account):
    small_account.sim.faults.update(
        {"throttle_stretch_seconds": 1, "throttle_stretch_status": 429, "throttle_wait_in_body": True}
    )
    throttled = basic_get(small_account, ACCESS_TOKENS.path)
    assert throttled.status_code == 429 and "Retry-After" not in throttled.headers
    assert throttled.text.endswith("Wait 1 seconds")
    time.sleep(1.1)
    assert basic_get(small_account, ACCESS_TOKENS.path).status_code == 200


def test_the_simulator_answers_a_burst_of_the_generic_error_then_recovers(small_account):
    small_account.sim.faults.update({"error_burst": 5, "error_burst_status": 400})
    statuses = [basic_get(small_account, ACCESS_TOKENS.path) for _ in range(6)]
    assert [answer.status_code for answer in statuses] == [400] * 5 + [200]
    assert "Ooops! There was a problem while running this action" in statuses[0].json()["Message"]


def test_the_simulator_denies_one_entity_only(small_account):
    small_account.sim.faults.update({"denied_entities": ["CoworkerTimePass"]})
    assert basic_get(small_account, COWORKER_TIME_PASSES.path).status_code == 401
    assert basic_get(small_account, f"{COWORKER_TIME_PASSES.path}/1").status_code == 401
    assert basic_get(small_account, COWORKER_CONTRACTS.path).status_code == 200


def test_the_simulator_keeps_one_token_per_client_id(start_simulator):
    running = start_simulator(seed=18, tokens=2, contracts=1, passes=1, one_token_per_client_id=True)

    def sign_in(client_id: str) -> dict[str, Any]:
        form = {"grant_type": "password", "username": DEFAULT_USERNAME, "password": DEFAULT_PASSWORD}
        answer: dict[str, Any] = httpx.post(
            f"{running.base_url}/token", data=form, headers={"client_id": client_id}
        ).json()
        return answer

    def answers(token: dict[str, Any]) -> int:
        headers = {"Authorization": f"Bearer {token['access_token']}"}
        return httpx.get(f"{running.base_url}/{ACCESS_TOKENS.path}", headers=headers).status_code

    first, other = sign_in("sync"), sign_in("someone-else")
    second = sign_in("sync")
    assert (answers(first), answers(second), answers(other)) == (401, 200, 200)
    refresh = {"grant_type": "refresh_token", "refresh_token": first["refresh_token"]}
    voided = httpx.post(f"{running.base_url}/token", data=refresh, headers={"client_id": "sync"})
    assert voided.status_code == 400
