"""The simulator's live account (`live_changes`, `--live-changes`): changes fall as a clock the test
moves on, reach the warehouse through incremental syncs over HTTP, and fill the forecast."""

import datetime as dt
import time

from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, ENTITIES
from nexudus_assets.simulator import LiveChanges, Simulator
from nexudus_assets.simulator.process import running_simulator
from nexudus_assets.warehouse import history_table
from nexudus_assets_tests.utils import Project, Running


class TestClock:
    """Naive UTC, moved on only by the test."""

    __test__ = False

    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC).replace(tzinfo=None, microsecond=0)

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, minutes: float) -> None:
        self.now += dt.timedelta(minutes=minutes)


def served(project: Project, entity) -> dict[int, str]:
    """Id -> UpdatedOn of each record, as a list over HTTP gives them."""
    with project.running.client() as client:
        return {record.id: record.updated_on for record in client.iter_records(entity)}


def test_the_account_changes_as_the_clock_moves_and_incremental_syncs_bring_it_to_the_forecast(
    start_simulator, tmp_path
):
    clock = TestClock()
    running = start_simulator(
        seed=31, tokens=80, contracts=40, passes=40, live_changes=LiveChanges(per_minute=6), clock=clock
    )
    project = Project(running, tmp_path / "warehouse.duckdb")
    project.run()
    first = {entity: served(project, entity) for entity in ENTITIES}
    assert running.sim.live.applied == 0, "nothing changes while the clock stands still"
    assert project.insight_ids("access_tokens_running_out") == set()

    clock.advance(10)  # 60 changes fall
    later = {entity: served(project, entity) for entity in ENTITIES}
    assert running.sim.live.applied == 60
    for entity in ENTITIES:
        changed = {key for key, stamp in later[entity].items() if first[entity].get(key) != stamp}
        assert changed, f"{entity.name}: nothing changed"
        moments = [later[entity][key] for key in changed]
        assert all(
            clock.now - dt.timedelta(minutes=10) < moment.replace(tzinfo=None) <= clock.now for moment in moments
        )
    assert len(later[COWORKER_CONTRACTS]) + len(later[COWORKER_TIME_PASSES]) > 80, "contracts started, passes bought"

    project.run()
    logged = dict(
        project.query(
            "SELECT entity, updated + inserted FROM raw._sync_log WHERE mode = 'incremental'"
            " AND finished_at = (SELECT max(finished_at) FROM raw._sync_log AS l WHERE l.entity = _sync_log.entity)"
        )
    )
    assert all(logged[entity.table] > 0 for entity in ENTITIES), logged
    for entity in ENTITIES:
        assert project.live_rows(entity) == project.upstream_rows(entity), entity.name

    # Tokens used since the first sync: two versions each, and the ones running low are forecast.
    used = {
        record["Id"]
        for record in running.sim.records(ACCESS_TOKENS)
        if first[ACCESS_TOKENS][record["Id"]] != later[ACCESS_TOKENS][record["Id"]]
    }
    versions = dict(project.query(f"SELECT id, count(*) FROM {history_table(ACCESS_TOKENS)} GROUP BY id"))
    assert used and all(versions[token] >= 2 for token in used)
    forecast = project.insight_ids("access_tokens_running_out")
    assert forecast and forecast <= used


def test_the_same_seed_and_clock_give_the_same_account_however_often_it_is_asked():
    def account(pauses: list[float]) -> Simulator:
        clock = TestClock()
        clock.now = dt.datetime(2026, 6, 1, 9, 0)
        sim = Simulator(seed=32, tokens=60, contracts=30, passes=30, live_changes=LiveChanges(12), clock=clock)
        for minutes in pauses:
            clock.advance(minutes)
            sim.catch_up()
        return sim

    once, often = account([30]), account([0.5, 4, 0.01, 12, 13.49])
    assert once.live.applied == often.live.applied == 360
    for entity in ENTITIES:
        assert once.records(entity) == often.records(entity), entity.name
    assert all(count > 0 for count in once.live.counts.values()), once.live.counts
    still = Simulator(seed=32, tokens=60, contracts=30, passes=30)
    assert still.catch_up() == 0, "off by default"


def test_the_simulator_process_changes_its_account_with_the_live_changes_switch():
    launched = dt.datetime.now(dt.UTC).replace(tzinfo=None)  # the client gives UTC stamps naive
    account = ["--tokens", "20", "--contracts", "5", "--passes", "5", "--live-changes", "6000"]
    with running_simulator(account) as process:
        client = Running(None, process.base_url).client()  # type: ignore[arg-type]
        deadline = time.monotonic() + 60
        changed: list[int] = []
        while not changed and time.monotonic() < deadline:
            changed = [
                record.id
                for entity in ENTITIES
                for record in client.iter_records(entity)
                if record.updated_on is not None and record.updated_on > launched
            ]
        client.close()
    assert changed, "records the simulator generated are all older than its start"
