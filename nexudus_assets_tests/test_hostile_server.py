"""A server that lies, stalls or sends poison: the client is never misled and every sync ends.

Real HTTP to the simulator with its hostile faults switched on, real DuckDB files.
"""

from __future__ import annotations

import gc
import json
import uuid
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest

from nexudus_assets.definitions import build_defs
from nexudus_assets.nexudus import (
    ACCESS_TOKENS,
    ENTITIES,
    Entity,
    NexudusClient,
    PermissionDeniedError,
    ResponseFormatError,
    RetryPolicy,
    ServerError,
    SignInRefusedError,
    TransportError,
    UncertainOutcomeError,
)
from nexudus_assets.nexudus.auth import REFUSED_SIGN_INS
from nexudus_assets.nexudus.client import MAX_JSON_DEPTH, _load_json, _UnusableAnswer
from nexudus_assets.resources import AlertWebhookResource, NexudusApiResource, Pacing, WarehouseResource
from nexudus_assets.simulator import DEFAULT_USERNAME
from nexudus_assets.simulator.faults import HOSTILE_IDS
from nexudus_assets.warehouse import SCHEMA, qualified
from nexudus_assets.warehouse.connection import connect
from nexudus_assets.warehouse.load import load_entity
from nexudus_assets_tests.utils import persistent_instance

TOKENS_PATH = "/api/spaces/accesstokens"
#: One attempt and one retry: enough to see what is retried and what is not.
ONE_RETRY = RetryPolicy(max_attempts=2, backoff_initial=0.01, backoff_max=0.02, max_elapsed=30)


def requests_to(sim, path: str, method: str = "GET") -> list[tuple[str, str, dict[str, str], int]]:
    return [entry for entry in sim.request_log if entry[0] == method and entry[1] == path]


def warehouse(path: Path) -> Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]:
    return lambda: connect(str(path))


def sync_tokens(client: NexudusClient, database: Path, run_id: str, **options: Any):
    return load_entity(client, warehouse(database), ACCESS_TOKENS, run_id=run_id, **options)


def query(database: Path, sql: str) -> list[tuple[Any, ...]]:
    with connect(str(database), read_only=True) as conn:
        return conn.execute(sql).fetchall()


def live_ids(database: Path) -> set[int]:
    return {row[0] for row in query(database, f"SELECT id FROM {qualified(ACCESS_TOKENS)} WHERE _deleted_at IS NULL")}


def snapshot(database: Path) -> tuple[list[tuple[Any, ...]], ...]:
    """Everything a published sync changes."""
    return (
        query(database, f"SELECT * FROM {qualified(ACCESS_TOKENS)} ORDER BY id"),
        query(database, f"SELECT * FROM {SCHEMA}._sync_state ORDER BY entity"),
        query(database, f"SELECT * FROM {SCHEMA}._sync_log ORDER BY finished_at"),
        query(database, f"SELECT * FROM {SCHEMA}._rejected_records ORDER BY rejected_at"),
    )


# -- hostile Ids -----------------------------------------------------------------------------


def test_hostile_ids_are_quarantined_and_the_sync_completes_with_every_good_record(running, tmp_path):
    sim = running.sim
    served_ids = [record["Id"] for record in sim.records(ACCESS_TOKENS)]
    kinds = tuple(HOSTILE_IDS)
    sim.faults.hostile_ids = kinds
    # The hostile records stand at list positions 1, 3, 5, ...: spread over the first pages.
    displaced = {served_ids[2 * slot + 1] for slot in range(len(kinds))}
    database = tmp_path / "w.duckdb"

    with running.client(page_size=4) as client:
        report = sync_tokens(client, database, "hostile")

    assert live_ids(database) == set(served_ids) - displaced
    assert not live_ids(database) & {1, 12}, "a hostile Id was taken for a record Id"
    assert report.result.rejected == len(kinds)
    rejected = query(database, f"SELECT record_id, reason, raw_json FROM {SCHEMA}._rejected_records")
    assert [record_id for record_id, _, _ in rejected] == [None] * len(kinds)
    assert sorted((json.loads(raw)["Id"] for _, _, raw in rejected), key=repr) == sorted(HOSTILE_IDS.values(), key=repr)
    for _, reason, _ in rejected:
        assert reason.startswith("AccessToken with the unusable Id ") and "field 'Id'" in reason, reason


def test_every_page_after_hostile_ids_is_still_read(running):
    running.sim.faults.hostile_ids = ("object", "huge")
    with running.client(page_size=2) as client:
        pages = list(client.iter_pages(ACCESS_TOKENS))
    assert sum(len(page.records) for page in pages) == len(running.sim.records(ACCESS_TOKENS)) - 2
    assert [error.record_id for page in pages for error in page.rejected] == [None, None]


@pytest.mark.parametrize("depth", [300, 100_000])
def test_deeply_nested_json_is_a_clear_error_naming_the_request(running, depth):
    running.sim.faults.nesting_depth = depth
    with running.client(retry=ONE_RETRY) as client, pytest.raises(ResponseFormatError) as refused:
        list(client.iter_records(ACCESS_TOKENS))
    assert f"GET {TOKENS_PATH}" in str(refused.value) and "nested" in str(refused.value)
    # A retry would only get the same poison.
    assert len(requests_to(running.sim, TOKENS_PATH)) == 1


def test_nesting_up_to_the_limit_is_read(running):
    # The field sits three levels down: envelope, `Records`, record.
    running.sim.faults.nesting_depth = MAX_JSON_DEPTH - 3
    with running.client(retry=ONE_RETRY) as client:
        records = list(client.iter_records(ACCESS_TOKENS))
    assert len(records) == len(running.sim.records(ACCESS_TOKENS))


@pytest.mark.parametrize(
    "body",
    [
        "\ufeff" + json.dumps({"Records": [{"Id": 1}]}),
        json.dumps({"Records": [{"Id": 1, "Description": "half an emoji \ud83d"}]}),
    ],
    ids=["byte-order mark", "lone surrogate"],
)
def test_json_the_fast_parser_refuses_is_still_read(body):
    assert _load_json(body.encode()) == json.loads(body.removeprefix("\ufeff"))


@pytest.mark.parametrize("nested", ["[1]", '{"a": 1}'])
def test_the_nesting_limit_holds_on_either_parser(nested):
    deepest = "[" * (MAX_JSON_DEPTH - 1) + nested + "]" * (MAX_JSON_DEPTH - 1)
    too_deep = "[" + deepest + "]"
    for prefix in ("", "\ufeff"):
        assert _load_json((prefix + deepest).encode())
        with pytest.raises(_UnusableAnswer, match=f"nested more than {MAX_JSON_DEPTH} levels"):
            _load_json((prefix + too_deep).encode())


def test_malformed_json_is_refused_as_before():
    with pytest.raises(ValueError, match="Expecting ':' delimiter"):
        _load_json(b'{"Records": [{"Id": 1}, {"Id"')


def test_an_answer_larger_than_allowed_is_refused_unread(running):
    with running.client(max_body_bytes=2_000, retry=ONE_RETRY) as client, pytest.raises(ResponseFormatError) as refused:
        list(client.iter_records(ACCESS_TOKENS))
    assert f"GET {TOKENS_PATH}" in str(refused.value) and "max_body_bytes" in str(refused.value)
    assert len(requests_to(running.sim, TOKENS_PATH)) == 1


# -- every sync ends -------------------------------------------------------------------------


def test_endless_pages_stop_with_a_clear_error_within_a_bounded_number_of_requests(running):
    total = len(running.sim.records(ACCESS_TOKENS))
    running.sim.faults.endless_pages = True
    with running.client(page_size=10) as client, pytest.raises(ResponseFormatError) as endless:
        for _ in client.iter_pages(ACCESS_TOKENS):
            pass
    assert f"GET /{ACCESS_TOKENS.path}:" in str(endless.value)
    assert f"announced {total} items" in str(endless.value)
    # The 3 pages the total allows, a margin of 3 for records added meanwhile, and no more.
    assert len(requests_to(running.sim, TOKENS_PATH)) <= 3 + 3 + 1


def test_the_page_cap_holds_whatever_the_server_announces(running):
    running.sim.faults.endless_pages = True
    with running.client(page_size=5, max_pages=2) as client, pytest.raises(ResponseFormatError, match="max_pages"):
        for _ in client.iter_pages(ACCESS_TOKENS):
            pass
    assert len(requests_to(running.sim, TOKENS_PATH)) <= 3


def test_a_trickled_answer_is_cut_at_the_deadline_and_retried_like_a_timeout(start_simulator):
    running = start_simulator(seed=3, tokens=2, contracts=1, passes=1)
    running.sim.faults.trickle_body_seconds = 0.2
    with running.client(request_deadline=0.5, retry=ONE_RETRY) as client, pytest.raises(TransportError) as cut:
        client.list_page(ACCESS_TOKENS)
    assert not isinstance(cut.value, UncertainOutcomeError)
    assert "0.5s request deadline" in str(cut.value) and "gave up after 2 attempts" in str(cut.value)
    # Answered with 200 both times: the body, not the status, never finished.
    assert [entry[3] for entry in requests_to(running.sim, TOKENS_PATH)] == [200, 200]


def test_a_trickled_answer_to_a_write_is_uncertain_and_not_repeated(start_simulator):
    running = start_simulator(seed=3, tokens=2, contracts=1, passes=1)
    business = running.sim.records(ACCESS_TOKENS)[0]["BusinessId"]
    running.sim.faults.trickle_body_seconds = 0.2
    with running.client(request_deadline=0.5, retry=ONE_RETRY) as client, pytest.raises(UncertainOutcomeError) as cut:
        client.create(ACCESS_TOKENS, {"BusinessId": business, "AccessCode": "SLOW0001", "MinutesIncluded": 60})
    assert "request deadline" in str(cut.value)
    assert len(requests_to(running.sim, TOKENS_PATH, "POST")) == 1
    assert len(running.sim.records(ACCESS_TOKENS)) == 3, "the write reached the server: hence uncertain"


@pytest.mark.parametrize(
    "fault",
    [{"endless_pages": True}, {"nesting_depth": 300}, {"trickle_body_seconds": 0.2}],
    ids=["endless pages", "deep json", "trickled body"],
)
def test_a_sync_that_fails_leaves_the_previous_warehouse_as_it_was(running, tmp_path, fault):
    database = tmp_path / "w.duckdb"
    with running.client(page_size=10) as client:
        sync_tokens(client, database, "good")
    before = snapshot(database)
    running.sim.mutate(ACCESS_TOKENS, update=5, insert=3, delete=2)
    running.sim.faults.update(fault)

    # Small batches, so that records are staged before the failure and must stay unpublished.
    with (
        running.client(page_size=10, request_deadline=0.5, retry=ONE_RETRY) as client,
        pytest.raises((ResponseFormatError, TransportError)),
    ):
        sync_tokens(client, database, "failed", full_refresh=True, batch_rows=5)

    assert snapshot(database) == before
    running.sim.faults.update({name: type(value)() for name, value in fault.items()})
    with running.client(page_size=10) as client:
        report = sync_tokens(client, database, "failed", full_refresh=True)
    assert live_ids(database) == {record["Id"] for record in running.sim.records(ACCESS_TOKENS)}
    assert (report.result.inserted, report.result.deleted) == (3, 2)


def history(database: Path) -> list[tuple[Any, ...]]:
    return query(database, f"SELECT * FROM {SCHEMA}.access_tokens_history ORDER BY id, _valid_from")


def test_an_incremental_sync_whose_check_of_the_walk_fails_publishes_nothing_of_its_first_pass(running, tmp_path):
    # The changes the first pass read are written while the walk checks it: a check that fails
    # must leave them unwritten, and the next sync writes them.
    database = tmp_path / "w.duckdb"
    with running.client(page_size=10) as client:
        sync_tokens(client, database, "good")
    before, versions = snapshot(database), history(database)
    changed = running.sim.mutate(ACCESS_TOKENS, update=25)["updated"]

    first_pages = []

    def fail_the_check(entity: Entity, page: int) -> None:
        if page == 1:
            first_pages.append(page)
            if len(first_pages) == 2:  # the check's first page goes out, its next ones fail
                running.sim.faults.error_burst = 10

    running.sim.on_list_page = fail_the_check
    with running.client(page_size=10, retry=ONE_RETRY) as client, pytest.raises(ServerError):
        sync_tokens(client, database, "failed")
    pages = [params["page"] for *_, params, _ in requests_to(running.sim, TOKENS_PATH)]
    assert pages[-6:] == ["1", "2", "3", "1", "2", "2"], "the first pass read three pages, the check failed"
    assert (snapshot(database), history(database)) == (before, versions)

    running.sim.on_list_page = None
    running.sim.faults.error_burst = 0
    with running.client(page_size=10) as client:
        report = sync_tokens(client, database, "again")
    assert report.result.updated == len(changed)
    upstream = {record["Id"]: record["MinutesLeft"] for record in running.sim.records(ACCESS_TOKENS)}
    assert dict(query(database, f"SELECT id, minutes_left FROM {qualified(ACCESS_TOKENS)}")) == upstream


@pytest.mark.parametrize("batch_rows", [1, 5_000], ids=["batches of one", "one batch"])
def test_what_the_check_of_an_incremental_walk_finds_is_published_with_its_first_pass(running, tmp_path, batch_rows):
    database = tmp_path / "w.duckdb"
    with running.client(page_size=10) as client:
        sync_tokens(client, database, "good")
    changed = running.sim.mutate(ACCESS_TOKENS, update=25)["updated"]
    running.sim.faults.drift_between_pages = 1  # a record deleted before a boundary, one inserted after it
    with running.client(page_size=10) as client:
        report = sync_tokens(client, database, "drifted", batch_rows=batch_rows)
    assert report.paging.passes >= 2 and report.paging.incomplete is None
    assert report.result.inserted == 1 and report.result.updated >= len(changed) - 1
    upstream = {record["Id"]: record["MinutesLeft"] for record in running.sim.records(ACCESS_TOKENS)}
    stored = dict(query(database, f"SELECT id, minutes_left FROM {qualified(ACCESS_TOKENS)}"))
    assert upstream.items() <= stored.items()  # the record drift deleted stays: only a full sync sees deletions
    [(logged,)] = query(database, f"SELECT count(*) FROM {SCHEMA}._sync_log WHERE run_id = 'drifted'")
    assert logged == 1


def test_a_sync_leaves_the_heap_it_found_to_the_collector_during_the_load_and_gives_it_back(running, tmp_path):
    # Frozen while it loads, so the collections its records set off skip what was alive before;
    # after the load, failed or not, the collector sees everything again.
    before = gc.get_freeze_count()
    frozen_while_loading = []

    def watched(path: Path) -> Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]:
        def open_warehouse() -> AbstractContextManager[duckdb.DuckDBPyConnection]:
            frozen_while_loading.append(gc.get_freeze_count())
            return connect(str(path))

        return open_warehouse

    with running.client(page_size=10) as client:
        load_entity(client, watched(tmp_path / "w.duckdb"), ACCESS_TOKENS, run_id="frozen")
        (tmp_path / "not-a-file.duckdb").mkdir()
        with pytest.raises(duckdb.Error):
            load_entity(client, watched(tmp_path / "not-a-file.duckdb"), ACCESS_TOKENS, run_id="failing")
    assert len(frozen_while_loading) == 2 and min(frozen_while_loading) > before
    assert gc.get_freeze_count() == before

    # A host that froze objects of its own keeps them frozen.
    gc.freeze()
    try:
        frozen_by_host = gc.get_freeze_count()
        with running.client(page_size=10) as client:
            load_entity(client, watched(tmp_path / "w.duckdb"), ACCESS_TOKENS, run_id="host-frozen")
        # Unfreezing would have made it 0; frozen objects freed since only make it a little smaller.
        assert frozen_by_host > 0 and gc.get_freeze_count() > frozen_by_host // 2
    finally:
        gc.unfreeze()


# -- refused sign-ins ------------------------------------------------------------------------


@pytest.mark.parametrize("auth", ["basic", "bearer"])
def test_a_refused_sign_in_is_attempted_once_per_process_however_many_clients_ask(running, auth):
    # A password no other test uses: the memo lives as long as the process.
    wrong = f"wrong-{uuid.uuid4()}"
    if auth == "basic":
        # A 401 alone may be a missing role: Basic credentials count as refused once every
        # entity's endpoint has refused them.
        for entity in ENTITIES[:-1]:
            with running.client(password=wrong) as client, pytest.raises(PermissionDeniedError):
                client.list_page(entity)
    refusals = []
    for _ in range(3):
        with running.client(auth=auth, password=wrong) as client, pytest.raises(SignInRefusedError) as refused:
            client.list_page(ENTITIES[-1])
        refusals.append(refused.value)

    sign_ins = requests_to(running.sim, "/api/token", "POST") if auth == "bearer" else running.sim.request_log
    assert [entry[3] for entry in sign_ins] == ([400] if auth == "bearer" else [401] * len(ENTITIES))
    assert len({(error.status_code, error.request) for error in refusals}) == 1
    assert all(refusals[0].reason in str(later) for later in refusals[1:])
    assert "not sent again" in str(refusals[-1])
    assert wrong not in repr(vars(REFUSED_SIGN_INS)) + "".join(map(str, refusals))

    # A corrected password is tried, and works.
    with running.client(auth=auth) as client:
        assert client.list_page(ACCESS_TOKENS).records


def test_one_dagster_run_with_a_wrong_password_signs_in_once(running, tmp_path, monkeypatch):
    resources = {
        "nexudus_api": NexudusApiResource(
            base_url=running.base_url,
            username=DEFAULT_USERNAME,
            password=f"wrong-{uuid.uuid4()}",
            pacing=Pacing(enabled=False),
        ),
        "warehouse": WarehouseResource(database=str(tmp_path / "w.duckdb")),
        "alerts": AlertWebhookResource(url=None),
    }
    job = build_defs(resources, ()).resolve_job_def("nexudus_sync")

    result = job.execute_in_process(instance=persistent_instance(tmp_path), raise_on_error=False)

    assert not result.success
    failures = [event for event in result.all_events if event.event_type == dg.DagsterEventType.STEP_FAILURE]
    assert len(failures) >= 3, "every API step fails"
    # Each entity's endpoint asked once: after the last refusal the credentials are not sent again.
    assert [entry[3] for entry in running.sim.request_log] == [401] * len(ENTITIES)
