"""Write-back against servers that answer as live accounts do, written here rather than taken from
the simulator: commands that answer nothing usable or fail for some Ids, record updates by PUT.

Each server below answers the calls under test itself and passes every other request (sign-in
checks, lists, the command catalogue) through to a simulator, so that the code location syncs
and materializes its insights as usual. Real HTTP, real DuckDB files, persistent instances.
"""

import copy
import datetime as dt
import json
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import dagster as dg
import httpx
import pytest

from nexudus_assets.assets.insights import insight_run_config
from nexudus_assets.nexudus import ACCESS_TOKENS
from nexudus_assets.nexudus.client import SYSTEM_FIELDS
from nexudus_assets.resources import CommandLedgerResource
from nexudus_assets.simulator.process import running_simulator
from nexudus_assets.writeback.ledger import CommandLedger, default_ledger_path
from nexudus_assets.writeback.rules import CommandRule, FromColumn
from nexudus_assets_tests.utils import Project, Running, Webhook

TOP_UP = CommandRule(
    name="top_up",
    asset="low_minutes_access_tokens",
    command="ACCESSTOKEN_ADD_MINUTES",
    parameters={"Minutes": 120},
    batch_size=3,
    live=True,
)
LABEL_LOW = CommandRule(
    name="label_low",
    asset="low_minutes_access_tokens",
    update={"Description": FromColumn(column="access_code"), "UserLimit": 3},
    live=True,
)

#: (method, path) -> handler(body) returning (status, raw answer bytes); any other request is passed on.
Routes = dict[tuple[str, str], Callable[[Any, str], tuple[int, bytes]]]


class LiveStyleServer:
    """An HTTP server on 127.0.0.1 that answers `routes` itself and passes everything else to `upstream`."""

    def __init__(self, upstream: str, routes: Routes, prefix_routes: Routes | None = None) -> None:
        self.requests: list[tuple[str, str, Any]] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _handle(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = self.path.partition("?")[0]
                payload = json.loads(body) if body else None
                server.requests.append((self.command, path, payload))
                route = routes.get((self.command, path.lower()))
                for (method, prefix), handler in (prefix_routes or {}).items():
                    if route is None and method == self.command and path.lower().startswith(prefix):
                        route = handler
                if route is not None:
                    status, content = route(payload, path)
                else:
                    headers = {k: v for k, v in self.headers.items() if k.lower() in ("authorization", "content-type")}
                    answer = httpx.request(
                        self.command, f"{upstream}{self.path[len('/api') :]}", content=body, headers=headers
                    )
                    status, content = answer.status_code, answer.content
                self.send_response(status)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                if status != 204:
                    self.wfile.write(content)

            do_GET = do_POST = do_PUT = _handle

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base_url = f"http://127.0.0.1:{self.server.server_port}/api"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def live_style(start_simulator, tmp_path) -> Iterator[Callable[..., Project]]:
    """Projects whose API is a LiveStyleServer over one simulator; one warehouse, one persistent instance."""
    running = start_simulator(seed=21, tokens=200, contracts=5, passes=5)
    servers: list[LiveStyleServer] = []
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as default_instance:

        def make(routes: Routes, *, prefix_routes: Routes | None = None, instance=None, **kwargs) -> Project:
            server = LiveStyleServer(running.base_url, routes, prefix_routes)
            servers.append(server)
            project = Project(Running(running.sim, server.base_url), tmp_path / "nexudus.duckdb", **kwargs)
            project.instance = instance or default_instance
            project.server = server
            return project

        yield make
    for server in servers:
        server.close()


def tick(project: Project, rule: str, cursor: str | None) -> dg.SensorResult:
    with dg.build_sensor_context(
        instance=project.instance,
        cursor=cursor,
        resources={"warehouse": project.warehouse, "alerts": project.alerts, "ledger": CommandLedgerResource()},
    ) as context:
        return project.defs.resolve_sensor_def(f"nexudus_rule_{rule}").evaluate_tick(context)


def cycles(project: Project, rule: str, count: int, run_config: dict | None = None) -> list[dg.SensorResult]:
    """`count` times: a sync (a new materialization), a tick of the rule's sensor, and the run it asks for."""
    results, cursor = [], None
    for _ in range(count):
        project.run(run_config=run_config)
        data = tick(project, rule, cursor)
        cursor = data.cursor or cursor
        for request in data.run_requests:
            project.defs.resolve_job_def("nexudus_command").execute_in_process(
                run_config=request.run_config, instance=project.instance, raise_on_error=False
            )
        results.append(data)
    return results


def outcomes(project: Project) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    for row in CommandLedger(default_ledger_path(project.database)).rows():
        found.setdefault(row.record_id, []).append(row.outcome)
    return found


def commands_received(project: Project) -> list[list[int]]:
    return [body["Ids"] for method, path, body in project.server.requests if path.endswith("/runcommand")]


# -- commands that answer nothing usable ---------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "answer"),
    [(200, b""), (204, b""), (200, b'"OK"'), (200, b'{"wasSuccessful": true}')],
    ids=["empty", "204", "ok_text", "camel_case"],
)
def test_a_command_answered_with_nothing_usable_acts_once_per_record(live_style, status, answer):
    """The server acts on every Id it gets, then answers without a `WasSuccessful`."""
    acted: Counter[int] = Counter()

    def run_command(body: Any, path: str) -> tuple[int, bytes]:
        acted.update(body["Ids"])
        return status, answer

    project = live_style({("POST", "/api/spaces/accesstokens/runcommand"): run_command}, rules=[TOP_UP], live=True)
    rounds = 4 if status == 200 and answer == b"" else 2
    results = cycles(project, "top_up", rounds)
    low = project.insight_ids("low_minutes_access_tokens")
    assert low and set(acted) == low
    assert set(acted.values()) == {1}, "a record was sent the command again after an answer that did not say"
    assert all(data.run_requests == [] for data in results[1:])
    assert outcomes(project) == {record_id: ["uncertain"] for record_id in low}


def test_a_batch_failing_for_one_id_leaves_the_other_two_alone(live_style):
    """The server acts on every Id but the first of a call, and answers `WasSuccessful: false` for the call."""
    acted: Counter[int] = Counter()
    failing: set[int] = set()

    def run_command(body: Any, path: str) -> tuple[int, bytes]:
        ids = body["Ids"]
        failing.add(ids[0])
        acted.update(ids[1:])
        answer = {"Status": 500, "WasSuccessful": False, "Message": "The command could not be run.", "Value": None}
        return 200, json.dumps(answer).encode()

    project = live_style({("POST", "/api/spaces/accesstokens/runcommand"): run_command}, rules=[TOP_UP], live=True)
    cycles(project, "top_up", 3)
    calls = commands_received(project)
    assert calls and all(len(call) <= 3 for call in calls)
    sent = Counter(record_id for call in calls for record_id in call)
    assert set(sent.values()) == {1}, "a record of a partly failed call was sent again"
    assert set(acted.values()) == {1}
    low = project.insight_ids("low_minutes_access_tokens")
    assert outcomes(project) == {record_id: ["uncertain"] for record_id in low}


def test_a_failure_naming_its_ids_retries_only_those(live_style):
    """An answer that names the failed Id (`Errors[].AttemptedValue`): the others succeeded, that one is retried."""
    acted: Counter[int] = Counter()
    refused_once: set[int] = set()

    def run_command(body: Any, path: str) -> tuple[int, bytes]:
        ids = body["Ids"]
        first = ids[0]
        if len(ids) > 1 and first not in refused_once:
            refused_once.add(first)
            acted.update(ids[1:])
            errors = [{"AttemptedValue": first, "Message": "not allowed", "PropertyName": "Id"}]
            return 200, json.dumps({"WasSuccessful": False, "Message": "partly", "Errors": errors}).encode()
        acted.update(ids)
        return 200, json.dumps({"WasSuccessful": True, "Message": "done"}).encode()

    project = live_style({("POST", "/api/spaces/accesstokens/runcommand"): run_command}, rules=[TOP_UP], live=True)
    cycles(project, "top_up", 2)
    low = project.insight_ids("low_minutes_access_tokens")
    assert set(acted) == low and set(acted.values()) == {1}
    retried = {record_id for record_id, found in outcomes(project).items() if found == ["failed", "succeeded"]}
    assert retried == refused_once


# -- only what the rule approved ---------------------------------------------------------------


def test_a_widened_insight_sends_no_command_and_alerts(live_style, dagster_instance):
    acted: Counter[int] = Counter()

    def run_command(body: Any, path: str) -> tuple[int, bytes]:
        acted.update(body["Ids"])
        return 200, json.dumps({"WasSuccessful": True, "Message": "done"}).encode()

    webhook = Webhook()
    try:
        project = live_style(
            {("POST", "/api/spaces/accesstokens/runcommand"): run_command},
            rules=[TOP_UP],
            live=True,
            webhook=webhook.url,
            instance=dagster_instance,
        )
        project.run()
        default_ids = project.insight_ids("low_minutes_access_tokens")
        widened = insight_run_config({"low_minutes_access_tokens": {"min_minutes_left": 1_000_000_000}})
        project.run(run_config=widened, assets=["low_minutes_access_tokens"])
        wide_ids = project.insight_ids("low_minutes_access_tokens")
        assert len(wide_ids) > len(default_ids)

        refused = tick(project, "top_up", None)
        assert refused.run_requests == []
        assert "min_minutes_left=1000000000 (approved: 60)" in refused.skip_message
        [alert] = webhook.texts()
        assert "top_up cannot run" in alert and "min_minutes_left" in alert
        # The job refuses too, whatever ids it is asked for.
        config = {"ops": {"run_nexudus_command": {"config": {"rule": "top_up", "record_ids": sorted(wide_ids)}}}}
        result = project.defs.resolve_job_def("nexudus_command").execute_in_process(
            run_config=config, instance=project.instance, raise_on_error=False
        )
        assert not result.success
        assert "Not approved by rule 'top_up'" in result.failure_data_for_node("run_nexudus_command").error.message
        assert not acted

        # A materialization reported by hand, without a run, is not approved either.
        project.instance.report_runless_asset_event(dg.AssetMaterialization("low_minutes_access_tokens"))
        reported = tick(project, "top_up", refused.cursor)
        assert reported.run_requests == [] and "reported, not made by a run" in reported.skip_message
        assert len(webhook.texts()) == 2

        # The next materialization with the defaults acts, on the default records only, and says it recovered.
        project.run(assets=["low_minutes_access_tokens"])
        approved = tick(project, "top_up", reported.cursor)
        [request] = approved.run_requests
        project.defs.resolve_job_def("nexudus_command").execute_in_process(
            run_config=request.run_config, instance=project.instance
        )
        assert set(acted) == project.insight_ids("low_minutes_access_tokens") == default_ids
        assert "runs again" in webhook.texts()[-1] and len(webhook.texts()) == 3
    finally:
        webhook.close()


def test_a_rule_pinning_its_insight_config_acts_on_that_config_only(live_style):
    acted: Counter[int] = Counter()

    def run_command(body: Any, path: str) -> tuple[int, bytes]:
        acted.update(body["Ids"])
        return 200, json.dumps({"WasSuccessful": True, "Message": "done"}).encode()

    pinned = TOP_UP.model_copy(update={"insight_config": {"min_minutes_left": 200}})
    project = live_style({("POST", "/api/spaces/accesstokens/runcommand"): run_command}, rules=[pinned], live=True)
    project.run()
    skipped = tick(project, "top_up", None)
    assert skipped.run_requests == [] and "min_minutes_left=60 (approved: 200)" in skipped.skip_message
    project.run(
        run_config=insight_run_config({"low_minutes_access_tokens": {"min_minutes_left": 200}}),
        assets=["low_minutes_access_tokens"],
    )
    [request] = tick(project, "top_up", skipped.cursor).run_requests
    project.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config=request.run_config, instance=project.instance
    )
    assert set(acted) == project.insight_ids("low_minutes_access_tokens")


# -- record updates by PUT -----------------------------------------------------------------------


class RecordStore:
    """The independent server's own access tokens: read by Id, replaced whole by PUT, as the reference says."""

    def __init__(self, seed: list[dict[str, Any]]) -> None:
        self.records = {record["Id"]: copy.deepcopy(record) for record in seed}
        self.original = copy.deepcopy(self.records)
        self.puts: Counter[int] = Counter()
        self.refusals: list[str] = []

    def get(self, body: Any, path: str) -> tuple[int, bytes]:
        record = self.records.get(int(path.rstrip("/").rsplit("/", 1)[1]))
        return (200, json.dumps(record).encode()) if record else (404, b'"Not found"')

    def put(self, body: Any, path: str) -> tuple[int, bytes]:
        record = self.records.get(body.get("Id")) if isinstance(body, dict) else None
        if record is None:
            return 404, b'"Not found"'
        carried = sorted(SYSTEM_FIELDS & set(body))
        if carried:
            self.refusals.append(f"{body['Id']}: {carried}")
            return 400, json.dumps({"Message": f"{carried[0]}: is a system field", "WasSuccessful": False}).encode()
        self.puts[body["Id"]] += 1
        # Every field missing from the body is cleared; system fields stay.
        kept = {name: record[name] for name in SYSTEM_FIELDS if name in record}
        record.clear()
        record.update(body)
        record.update(kept, UpdatedOn=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"))
        return 200, json.dumps(
            {"Status": 200, "WasSuccessful": True, "Message": "updated", "Value": {"Id": body["Id"]}}
        ).encode()


def test_a_put_rule_updates_each_listed_record_once_and_keeps_every_other_field(live_style):
    store: RecordStore | None = None

    def get(body: Any, path: str) -> tuple[int, bytes]:
        assert store is not None
        return store.get(body, path)

    def put(body: Any, path: str) -> tuple[int, bytes]:
        assert store is not None
        return store.put(body, path)

    routes: Routes = {("PUT", "/api/spaces/accesstokens"): put}
    by_id: Routes = {("GET", "/api/spaces/accesstokens/"): get}
    dry = live_style(routes, prefix_routes=by_id, rules=[LABEL_LOW])
    store = RecordStore(dry.sim.records(ACCESS_TOKENS))
    dry.run()
    data = tick(dry, "label_low", None)
    dry.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config=data.run_requests[0].run_config, instance=dry.instance
    )
    assert not store.puts, "a dry run sends nothing"
    low = sorted(dry.insight_ids("low_minutes_access_tokens"))
    assert {found[0] for found in outcomes(dry).values()} == {"dry_run"}

    # Someone edits one of them in Nexudus after the sync: the insight no longer describes it.
    changed = low[0]
    store.records[changed]["Description"] = "edited meanwhile"
    store.records[changed]["UpdatedOn"] = "2099-01-01T00:00:00.1234567Z"
    store.original[changed] = copy.deepcopy(store.records[changed])

    live = live_style(routes, prefix_routes=by_id, rules=[LABEL_LOW], live=True, instance=dry.instance)
    cycles(live, "label_low", 3)
    assert not store.refusals, "a PUT carried system fields"
    assert set(store.puts) == set(low) - {changed} and set(store.puts.values()) == {1}
    for record_id, record in store.records.items():
        before = store.original[record_id]
        if record_id in store.puts:
            assert record["Description"] == before["AccessCode"] and record["UserLimit"] == 3
            unchanged = {k: v for k, v in before.items() if k not in {"Description", "UserLimit", "UpdatedOn"}}
            assert {k: record.get(k) for k in unchanged} == unchanged, record_id
        else:
            assert record == before, record_id
    found = outcomes(live)
    assert found[changed][-1] == "skipped"
    assert {found[record_id][-1] for record_id in store.puts} == {"succeeded"}


def test_a_simulator_process_told_to_answer_nothing_and_fail_partly_gets_each_record_once(tmp_path):
    """The simulator in a process of its own, its command quirks switched over HTTP as a script would."""
    with running_simulator(["--seed", "21", "--tokens", "200", "--contracts", "5", "--passes", "5"]) as process:
        admin = f"{process.base_url.removesuffix('/api')}/_simulator"
        httpx.post(f"{admin}/command-quirks", json={"answer": "empty", "partial_failure": True}).raise_for_status()
        recorder = LiveStyleServer(process.base_url, {})
        try:
            project = Project(Running(None, recorder.base_url), tmp_path / "nexudus.duckdb", rules=[TOP_UP], live=True)
            project.server = recorder
            project.run()
            low = sorted(project.insight_ids("low_minutes_access_tokens"))
            faults = {"failing_command_ids": low[1:2]}
            httpx.post(f"{admin}/faults", json=faults).raise_for_status()
            cycles(project, "top_up", 3)
        finally:
            recorder.close()
    sent = Counter(record_id for call in commands_received(project) for record_id in call)
    assert sorted(sent) == low and set(sent.values()) == {1}
    assert outcomes(project) == {record_id: ["uncertain"] for record_id in low}


def test_a_widening_run_still_going_holds_the_rule_back(live_style):
    """Such a run publishes the insight's table before its materialization is recorded."""
    project = live_style({}, rules=[TOP_UP], live=True)
    project.run()
    widened = insight_run_config({"low_minutes_access_tokens": {"min_minutes_left": 1_000_000_000}})
    going = project.instance.create_run_for_job(
        project.defs.resolve_job_def("nexudus_sync"), run_config=widened, status=dg.DagsterRunStatus.STARTED
    )
    held = tick(project, "top_up", None)
    assert held.run_requests == [] and held.cursor is None
    assert f"run {going.run_id[:8]} may be rewriting low_minutes_access_tokens" in held.skip_message
    project.instance.report_run_failed(going)
    assert len(tick(project, "top_up", None).run_requests) == 1
