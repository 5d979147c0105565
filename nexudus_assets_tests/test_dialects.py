"""The whole sync against servers that answer as the documentation allows, not as our simulator does.

Each dialect (simulator/dialect.py) is a Nexudus-compatible server that differs from the default
one where the documentation leaves room: capped pages that echo the size asked for, envelopes with
only `Records` and `TotalItems`, 404 for a by-Ids lookup that finds nothing, 429 for throttling,
`+00:00` instead of `Z`, and the newer record shape. The sync must come out exactly the same.
"""

import math

import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, ENTITIES
from nexudus_assets.simulator import DIALECTS
from nexudus_assets_tests.utils import Project, metadata


@pytest.fixture(
    # The live dialect, whose one unstorable record no upstream row can be made of, has tests of its
    # own (test_live_records.py).
    params=list(zip(("capped", "reference", "terse"), ("modern", "legacy", "modern"), strict=True)),
    ids=lambda param: f"{param[0]}-{param[1]}",
)
def project(request, start_simulator, tmp_path):
    name, shape = request.param
    running = start_simulator(seed=21, tokens=1100, contracts=120, passes=120, dialect=DIALECTS[name], list_shape=shape)
    return Project(running, tmp_path / "w.duckdb")


def assert_equal_to_upstream(project):
    for entity in ENTITIES:
        assert project.live_rows(entity) == project.upstream_rows(entity), entity.name


def test_first_sync_incremental_and_full_refresh_give_the_same_warehouse_in_every_dialect(project):
    sim = project.sim
    project.run()
    assert_equal_to_upstream(project)

    sim.mutate(ACCESS_TOKENS, update=12, insert=4)
    sim.mutate(COWORKER_CONTRACTS, update=3)
    sim.faults.update({"throttle_rate": 0.2, "retry_after": 0})
    sim.reset_stats()
    result = project.run()
    sim.faults.update({"throttle_rate": 0.0})
    tokens = metadata(result, "access_tokens")
    assert (tokens["rows_inserted"], tokens["rows_updated"]) == (4, 12)
    assert sum(metadata(result, e.table)["throttled_responses"] for e in ENTITIES) > 0
    assert_equal_to_upstream(project)
    # Few changes: one page each, whatever the envelope says of the pages.
    assert [metadata(result, e.table)["pages"] for e in ENTITIES] == [1, 1, 1]

    gone = [record["Id"] for record in sim.records(COWORKER_TIME_PASSES)][5:8]
    sim.delete(COWORKER_TIME_PASSES, gone)
    sim.delete(ACCESS_TOKENS, [record["Id"] for record in sim.records(ACCESS_TOKENS)][-2:])
    result = project.run("nexudus_full_refresh")
    assert metadata(result, "coworker_time_passes")["rows_deleted"] == 3
    assert metadata(result, "access_tokens")["rows_deleted"] == 2
    assert_equal_to_upstream(project)


def test_records_gone_from_the_listing_are_confirmed_by_id_before_they_are_marked_deleted(project):
    # The listing drops two live records (a truncated answer); the lookup by Id finds them, while
    # the really deleted one is looked up and found gone, answered by 404 in the terse dialect.
    sim = project.sim
    project.run()
    hidden = [record["Id"] for record in sim.records(ACCESS_TOKENS)][:2]
    deleted = [record["Id"] for record in sim.records(ACCESS_TOKENS)][2]
    sim.delete(ACCESS_TOKENS, [deleted])
    table = sim.table(ACCESS_TOKENS)
    saved = {key: table[key] for key in hidden}
    sim.delete(ACCESS_TOKENS, hidden)

    # Back once the listing's last page is answered: a walk of several pages is walked twice (the
    # second pass checks that nothing moved past the first), so that is page `pages` of pass 2.
    pages = math.ceil(len(table) / min(1000, sim.dialect.max_page_size))
    served = []

    def restore_after_listing(entity, page):
        if entity == ACCESS_TOKENS:
            served.append(page)
            if len(served) == 2 * pages:
                for row in saved.values():
                    sim.put_raw(ACCESS_TOKENS, dict(row))

    sim.on_list_page = restore_after_listing
    result = project.run("nexudus_full_refresh")
    tokens = metadata(result, "access_tokens")
    assert tokens["rows_deleted"] == 1
    assert tokens["rows_recovered_by_id"] == 2
    assert project.query("SELECT id FROM raw.access_tokens WHERE _deleted_at IS NOT NULL") == [(deleted,)]
