"""Every record a live-style account sends, stored exactly.

Live accounts differ from the reference pages (FACTS.md, "Seen in live accounts"): Ids beyond
2^31 handed out in interleaved blocks, 7-digit fractions, business dates with `Z`, pages capped
below the size asked while `TotalPages` is computed from the size asked, the range filter read
in a zone west of UTC, lists drifting between two page requests, a string cut mid-emoji, a
total that grows with every page. The simulator's `live` dialect shows them all at once; a small
server written here shows the list behaviours and an invalid UTF-8 byte independently of it.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, ENTITIES, NexudusClient, RateLimits
from nexudus_assets.nexudus.paging import EXTRA_PAGES
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME, DIALECTS
from nexudus_assets.warehouse import connect, qualified, read_high_water_mark
from nexudus_assets.warehouse.load import FILTER_ZONE_MARGIN, load_entity
from nexudus_assets_tests.utils import FAST_RETRY, Project, metadata

# -- the simulator's live dialect, everything at once --------------------------------------------


@pytest.fixture
def live(start_simulator, tmp_path) -> Project:
    running = start_simulator(seed=71, tokens=450, contracts=160, passes=140, dialect=DIALECTS["live"])
    return Project(running, tmp_path / "w.duckdb")


def storable_upstream(project: Project, entity) -> dict[int, dict[str, Any]]:
    """Upstream rows of every record but the one cut mid-emoji (which no text column can hold)."""
    rows = {}
    for raw in project.sim.records(entity):
        if raw.get("Description") == "Front desk \ud83d":
            continue
        model = entity.model.model_validate(raw)
        rows[model.id] = model.model_dump(exclude=set(entity.model.display_fields))
    return rows


def sync_log(project: Project) -> list[tuple[Any, ...]]:
    return project.query(
        "SELECT entity, mode, pages, verification_pages, walk_incomplete, rejected FROM raw._sync_log"
        " ORDER BY finished_at, entity"
    )


def test_a_live_style_account_is_stored_exactly_through_first_incremental_and_full_syncs(live):
    sim = live.sim
    # The newest change lands right now, so the cursor sits at the present: a server reading the
    # filter in UTC-5 would hide the next changes for five hours from a client that sends UTC.
    sim.update(ACCESS_TOKENS, [sim.records(ACCESS_TOKENS)[3]["Id"]])
    before = {entity: {r["Id"] for r in sim.records(entity)} for entity in ENTITIES}
    sim.faults.drift_between_pages = 2  # a deletion on a page read and an insertion after it, twice
    live.run()
    assert sim.faults.drift_between_pages == 0
    # Records deleted while the walk was under way were read before they went: an incremental
    # sync cannot see deletions, the full refresh below marks them.
    gone_while_read = {entity: before[entity] - {r["Id"] for r in sim.records(entity)} for entity in ENTITIES}
    assert sum(len(ids) for ids in gone_while_read.values()) == 2
    for entity in ENTITIES:
        rows = live.live_rows(entity)
        assert set(rows) - set(storable_upstream(live, entity)) == gone_while_read[entity], entity.name
        assert {i: rows[i] for i in storable_upstream(live, entity)} == storable_upstream(live, entity), entity.name

    # Long Ids, relations too, and interleaved: Id order is not creation order.
    tokens = live.query(f"SELECT id, business_id, created_on FROM {qualified(ACCESS_TOKENS)} ORDER BY id")
    assert min(row[0] for row in tokens) > 2**32 and min(row[1] for row in tokens) > 2**31
    assert [row[2] for row in tokens] != sorted(row[2] for row in tokens)
    # Fractions kept to the microsecond; business dates keep their calendar day and wall time.
    assert any(row[2].microsecond for row in tokens)
    contract = sim.records(COWORKER_CONTRACTS)[0]
    assert contract["StartDate"].endswith("Z")
    stored_start = live.query(f"SELECT start_date FROM {qualified(COWORKER_CONTRACTS)} WHERE id = ?", [contract["Id"]])
    assert stored_start == [(dt.datetime.fromisoformat(contract["StartDate"][:-1]),)]

    # One record rejected, the one no text can hold, naming record and field; its JSON is stored.
    rejected = live.query("SELECT entity, record_id, reason, raw_json FROM raw._rejected_records")
    [(table, record_id, reason, raw_json)] = rejected
    assert table == ACCESS_TOKENS.table and f"AccessToken {record_id}" in reason
    assert "'Description'" in reason and "lone UTF-16 surrogate" in reason
    assert json.loads(raw_json)["Description"] == "Front desk \ufffd"
    # Every list spans several pages of 100: each was walked again, and every walk was settled.
    first = sync_log(live)
    assert all(
        pages and verification_pages and incomplete is None for _, _, pages, verification_pages, incomplete, _ in first
    )

    sim.mutate(ACCESS_TOKENS, update=9, insert=4)
    sim.mutate(COWORKER_CONTRACTS, update=3, insert=1)
    sim.reset_stats()
    result = live.run()
    tokens_run = metadata(result, "access_tokens")
    assert (tokens_run["rows_inserted"], tokens_run["rows_updated"]) == (4, 9)
    bounds = [query for _, path, query, _ in sim.request_log if "from_AccessToken_UpdatedOn" in query]
    high_water_mark = live.query("SELECT high_water_mark FROM raw._sync_state WHERE entity = 'access_tokens'")
    assert bounds and all(
        dt.datetime.fromisoformat(q["from_AccessToken_UpdatedOn"]) <= high_water_mark[0][0] - FILTER_ZONE_MARGIN
        for q in bounds
    )
    for entity in ENTITIES:
        rows = live.live_rows(entity)
        assert {i: rows[i] for i in storable_upstream(live, entity)} == storable_upstream(live, entity), entity.name

    result = live.run("nexudus_full_refresh", assets=[entity.table for entity in ENTITIES])
    for entity in ENTITIES:
        assert live.live_rows(entity) == storable_upstream(live, entity), entity.name
        assert metadata(result, entity.table)["rows_deleted"] == len(gone_while_read[entity])
    # The record cut mid-emoji is quarantined again, and blocks no sync.
    assert [metadata(result, entity.table)["rows_rejected"] for entity in ENTITIES] == [1, 0, 0]


# -- the hours the filter's margins re-read -----------------------------------------------------


def test_an_incremental_sync_leaves_out_the_versions_it_holds_but_not_one_it_read_in_its_stamps_second(
    start_simulator, tmp_path
):
    running = start_simulator(seed=79, tokens=40, contracts=1, passes=1)
    sim = running.sim
    database = tmp_path / "w.duckdb"
    now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)
    settled, fresh, changing = sim.records(ACCESS_TOKENS)[:3]
    # Stamped an hour before the first sync, with 7 digits and an offset: the model reads it as
    # 13:17:58.123456 UTC, and so must the walk that compares it with the stored version.
    an_hour_ago = (now - dt.timedelta(hours=1) + dt.timedelta(hours=2)).isoformat() + ".1234567+02:00"
    sim.put_raw(ACCESS_TOKENS, {**settled, "UpdatedOn": an_hour_ago, "Description": "first"})
    # Stamped in the second the first sync reads it, by a server that stamps whole seconds.
    sim.put_raw(ACCESS_TOKENS, {**fresh, "UpdatedOn": now.isoformat() + "Z", "Description": "first"})
    with running.client() as client:
        load_entity(client, lambda: connect(str(database)), ACCESS_TOKENS, run_id="first")

    # Both change upstream under the same stamp, as a second change in the same second does.
    for record in (settled, fresh):
        sim.put_raw(ACCESS_TOKENS, {**sim.get(ACCESS_TOKENS, record["Id"]), "Description": "second"})
    sim.update(ACCESS_TOKENS, [changing["Id"]])
    with running.client() as client:
        second = load_entity(client, lambda: connect(str(database)), ACCESS_TOKENS, run_id="second")

    def descriptions() -> dict[int, str]:
        conn = connect(str(database), read_only=True)
        try:
            rows = conn.execute(f"SELECT id, description FROM {qualified(ACCESS_TOKENS)}").fetchall()
        finally:
            conn.close()
        return dict(rows)

    # An Id and its `UpdatedOn` name a version: the one read an hour after its stamp is held and
    # left out; the one read in its stamp's second may hide a second change, and is read again.
    assert descriptions()[settled["Id"]] == "first"
    assert descriptions()[fresh["Id"]] == "second"
    assert (second.result.updated, second.result.inserted) == (2, 0)  # `fresh`, and `changing`
    assert second.known >= 1 and second.result.unchanged == second.result.fetched - 2
    # Only an incremental sync leaves records out: a full one reads every version again.
    with running.client() as client:
        full = load_entity(client, lambda: connect(str(database)), ACCESS_TOKENS, run_id="full", full_refresh=True)
    assert full.known == 0 and descriptions()[settled["Id"]] == "second"


# -- an independent server: capped, drifting and growing lists, and an invalid UTF-8 byte ---------


class LiveStyleList:
    """`GET /api/spaces/accesstokens` as a live account may answer it, with Basic auth taken as given.

    Pages hold at most `cap` records whatever `size` asks, while `TotalPages` and `HasNextPage`
    are computed from the size asked. `drift_after`: page requests after which a record on the
    page just served is deleted and one inserted after the boundary. `grow`: every page served
    adds a page of new records. One record's description holds an invalid UTF-8 byte.
    """

    def __init__(self, count: int, *, cap: int = 100, grow: bool = False, drift_after: tuple[int, ...] = ()) -> None:
        self.cap = cap
        self.grow = grow
        self.drift_after = set(drift_after)
        self.requests = 0
        base = dt.datetime(2026, 8, 27, 8, 0, tzinfo=dt.UTC)
        # Interleaved blocks: even positions from a low block, odd ones from a high one.
        self.ids = sorted(3_000_000_000 + (i // 2) * 7 + (i % 2) * 4_000_000_000 for i in range(count))
        self.stamps = {
            record_id: base + dt.timedelta(seconds=n, microseconds=599381) for n, record_id in enumerate(self.ids)
        }
        self.bad_byte = self.ids[count // 3]
        #: The low block's next Id: a record created now sorts in the middle of the list.
        self.next_low = max(i for i in self.ids if i < 4_000_000_000) + 7
        self.lock = threading.Lock()

    def record(self, record_id: int) -> bytes:
        stamp = self.stamps[record_id].strftime("%Y-%m-%dT%H:%M:%S.%f") + "5Z"  # seven digits
        description = b"Caf\xe9 desk" if record_id == self.bad_byte else b"Desk"
        return (
            b'{"Id":%d,"BusinessId":%d,"Description":"%s","MinutesLeft":%d,"ValidTo":"2025-04-01T00:00:00Z",'
            b'"CreatedOn":"%s","UpdatedOn":"%s"}'
            % (record_id, 2_023_063_572, description, record_id % 97, stamp.encode(), stamp.encode())
        )

    def answer(self, query: dict[str, str]) -> bytes:
        with self.lock:
            self.requests += 1
            page, asked = int(query.get("page", 1)), int(query.get("size", 25))
            served = min(asked, self.cap)
            start = (page - 1) * served
            ids = self.ids[start : start + served]
            total = len(self.ids)
            pages = math.ceil(total / asked)
            body = b'{"Records":[%s],"TotalItems":%d,"TotalPages":%d,"HasNextPage":%s,"CurrentPage":%d}' % (
                b",".join(self.record(record_id) for record_id in ids),
                total,
                pages,
                b"true" if page < pages else b"false",
                page,
            )
            if self.requests in self.drift_after and ids:
                self.ids.remove(ids[len(ids) // 2])
                self.add()
            if self.grow:
                for _ in range(served):
                    self.add(self.ids[-1] + 1)
            return body

    def add(self, record_id: int | None = None) -> None:
        """A new record; by default its Id from the low block, lower than the high block's older records."""
        if record_id is None:
            record_id, self.next_low = self.next_low, self.next_low + 7
        self.ids = sorted([*self.ids, record_id])
        self.stamps[record_id] = dt.datetime(2026, 8, 27, 9, 0, tzinfo=dt.UTC)


@pytest.fixture
def serve() -> Iterator[Any]:
    servers: list[ThreadingHTTPServer] = []

    def start(listing: LiveStyleList) -> str:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                url = urlsplit(self.path)
                if url.path != f"/api/{ACCESS_TOKENS.path}":
                    self.send_response(404)
                    self.end_headers()
                    return
                body = listing.answer(dict(parse_qsl(url.query)))
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/api"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


def sync_tokens(base_url: str, database: Path, run_id: str):
    client = NexudusClient(
        base_url, DEFAULT_USERNAME, DEFAULT_PASSWORD, limits=RateLimits.unlimited(), retry=FAST_RETRY
    )
    with client:
        return load_entity(client, lambda: connect(str(database)), ACCESS_TOKENS, run_id=run_id)


def stored(database: Path) -> dict[int, tuple[Any, ...]]:
    conn = connect(str(database), read_only=True)
    try:
        rows = conn.execute(f"SELECT id, business_id, valid_to, updated_on FROM {qualified(ACCESS_TOKENS)}").fetchall()
    finally:
        conn.close()
    return {row[0]: row[1:] for row in rows}


def test_capped_drifting_pages_and_an_invalid_utf8_byte_lose_nothing_over_two_syncs(serve, tmp_path):
    listing = LiveStyleList(2_500, drift_after=(4, 11))
    base_url = serve(listing)
    database = tmp_path / "w.duckdb"
    existed_throughout = set(listing.ids)

    report = sync_tokens(base_url, database, "first")
    existed_throughout &= set(listing.ids)
    rows = stored(database)
    assert existed_throughout - {listing.bad_byte} <= set(rows)
    assert set(listing.ids) - {listing.bad_byte} <= set(rows)
    assert listing.bad_byte not in rows
    some = rows[listing.ids[0]]
    assert some[0] == 2_023_063_572 and some[1] == dt.datetime(2025, 4, 1)
    assert some[2].microsecond == 599381  # the seventh digit dropped, the other six kept
    assert report.result.rejected == 1 and report.paging.incomplete is None
    # 25 pages of 100 for `TotalPages: 3`; the second pass finds the records drift moved past
    # the first, the third finds nothing new.
    assert report.paging.passes == 3 and report.paging.verification_pages == 2 * 25

    conn = connect(str(database), read_only=True)
    try:
        [(record_id, reason, raw_json)] = conn.execute(
            "SELECT record_id, reason, raw_json FROM raw._rejected_records"
        ).fetchall()
        [(pages, verification_pages, incomplete)] = conn.execute(
            "SELECT pages, verification_pages, walk_incomplete FROM raw._sync_log"
        ).fetchall()
    finally:
        conn.close()
    assert record_id == listing.bad_byte and "'Description'" in reason and "invalid UTF-8 byte (0xe9)" in reason
    assert json.loads(raw_json)["Description"] == "Caf\ufffd desk"
    assert (pages, verification_pages, incomplete) == (report.paging.pages, 50, None)

    again = sync_tokens(base_url, database, "second")
    assert again.result.rejected == 1
    assert set(listing.ids) - {listing.bad_byte} <= set(stored(database))


def test_a_total_growing_by_a_page_with_every_page_is_stopped_with_the_data_intact_and_the_cursor_kept(serve, tmp_path):
    listing = LiveStyleList(300, grow=True)
    base_url = serve(listing)
    database = tmp_path / "w.duckdb"
    at_start = set(listing.ids)

    report = sync_tokens(base_url, database, "growing")
    assert listing.requests == 3 + EXTRA_PAGES  # the first answer's 300 records, plus the margin
    assert at_start - {listing.bad_byte} <= set(stored(database))
    assert "announced 300 records at first" in str(report.paging.incomplete)
    conn = connect(str(database), read_only=True)
    try:
        assert read_high_water_mark(conn, ACCESS_TOKENS) is None
        [(incomplete,)] = conn.execute("SELECT walk_incomplete FROM raw._sync_log").fetchall()
    finally:
        conn.close()
    assert "announced 300 records at first" in incomplete


def test_the_simulator_growing_its_total_with_every_page_is_stopped_and_the_next_sync_completes(
    start_simulator, tmp_path
):
    running = start_simulator(seed=73, tokens=300, contracts=1, passes=1, dialect=DIALECTS["live"])
    database = tmp_path / "w.duckdb"
    running.sim.faults.growing_total = True
    at_start = {record["Id"] for record in running.sim.records(ACCESS_TOKENS)}
    with running.client() as client:
        grown = load_entity(client, lambda: connect(str(database)), ACCESS_TOKENS, run_id="growing")
    assert grown.requests == 3 + EXTRA_PAGES and "at first" in str(grown.paging.incomplete)
    assert grown.result.high_water_mark is None
    running.sim.faults.growing_total = False
    with running.client() as client:
        settled = load_entity(client, lambda: connect(str(database)), ACCESS_TOKENS, run_id="settled")
    assert settled.paging.incomplete is None and settled.result.high_water_mark is not None
    conn = connect(str(database), read_only=True)
    try:
        stored_ids = {
            record_id for (record_id,) in conn.execute(f"SELECT id FROM {qualified(ACCESS_TOKENS)}").fetchall()
        }
    finally:
        conn.close()
    upstream = {record["Id"] for record in running.sim.records(ACCESS_TOKENS)}
    assert at_start <= upstream and stored_ids == upstream - {min(at_start)}  # the one cut mid-emoji is quarantined
