"""What the host does to the warehouse: an analyst's write killed midway, file modes an operator
set, the image's user, the one publish of a run."""

from __future__ import annotations

import os
import shutil
import signal
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS
from nexudus_assets.resources import CommandLedgerResource, WarehouseResource
from nexudus_assets.warehouse import WarehouseFiles, qualified
from nexudus_assets.writeback.ledger import CommandLedger, default_ledger_path
from nexudus_assets_tests.test_writeback import TOP_UP
from nexudus_assets_tests.utils import Project, Running, persistent_instance
from scripts import deploy_check

#: An analyst writing in the published file with the DuckDB CLI's defaults (read-write), whose
#: change stays in the log until a checkpoint that never comes.
_ANALYST = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
conn.execute("SET checkpoint_threshold = '1TB'")
conn.execute("CREATE TABLE main.analyst_notes AS SELECT 1 AS note")
conn.execute("UPDATE raw.access_tokens SET access_code = 'edited by hand'")
print("written", flush=True)
time.sleep(600)
"""


def killed_analyst_write(published: Path) -> Path:
    """Runs the analyst's write in another process and kills it with SIGKILL; returns the log it left."""
    analyst = subprocess.Popen([sys.executable, "-c", _ANALYST, str(published)], stdout=subprocess.PIPE, text=True)
    try:
        assert analyst.stdout and analyst.stdout.readline().strip() == "written"
    finally:
        analyst.send_signal(signal.SIGKILL)
        analyst.wait(timeout=30)
    log = Path(f"{published}.wal")
    assert log.stat().st_size > 0, "the killed write left no log to replay"
    return log


@pytest.fixture
def project(start_simulator, tmp_path) -> Project:
    running: Running = start_simulator(seed=21, tokens=300, contracts=10, passes=10)
    return Project(running, tmp_path / "warehouse.duckdb", rules=[TOP_UP])


def tick_and_run_dry(project: Project) -> dg.ExecuteInProcessResult:
    """The rule sensor's tick and the dry command run it asks for."""
    with dg.build_sensor_context(
        instance=project.instance,
        resources={"warehouse": project.warehouse, "alerts": project.alerts, "ledger": CommandLedgerResource()},
    ) as context:
        data = project.defs.resolve_sensor_def("nexudus_rule_top_up").evaluate_tick(context)
    [request] = data.run_requests
    return project.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config=request.run_config, instance=project.instance
    )


def access_codes(published: Path) -> set[str]:
    with duckdb.connect(str(published), read_only=True) as conn:
        found = conn.execute(f"SELECT DISTINCT access_code FROM {qualified(ACCESS_TOKENS)}").fetchall()
    return {code for (code,) in found}


def test_an_analysts_write_killed_midway_breaks_nothing_after_the_next_sync(project: Project) -> None:
    published = Path(project.database)
    project.run()
    killed_analyst_write(published)

    project.run()

    # The published file opens read-only, as a BI tool opens it, without the analyst's change.
    assert "edited by hand" not in access_codes(published)
    assert not [log for log in WarehouseFiles(published).logs_of(published) if log.exists()]
    report = subprocess.run(
        [sys.executable, "-m", "nexudus_assets.report", str(published)], capture_output=True, text=True, timeout=120
    )
    assert report.returncode == 0, report.stderr
    assert f"{qualified(ACCESS_TOKENS)}" in report.stdout and "insights.low_minutes_access_tokens" in report.stdout
    result = tick_and_run_dry(project)
    assert result.success and result.dagster_run.tags["nexudus/live"] == "false"
    assert project.sim.commands_run == []


def test_readers_fall_back_to_the_working_file_while_the_published_one_will_not_open(project: Project) -> None:
    published = Path(project.database)
    project.run()
    stale = killed_analyst_write(published).read_bytes()
    project.run()
    # A log for the previous file, back beside the new one: as if written between the two renames.
    Path(f"{published}.wal").write_bytes(stale)
    with pytest.raises(duckdb.IOException, match="WAL"), duckdb.connect(str(published), read_only=True):
        pass

    with project.warehouse.read_only_connection() as conn:
        assert conn.execute(f"SELECT count(*) FROM {qualified(ACCESS_TOKENS)}").fetchone() == (300,)
    assert tick_and_run_dry(project).success
    project.run()
    assert "edited by hand" not in access_codes(published)


def test_a_run_publishes_once_when_its_execution_ends_failed_step_or_not(tmp_path: Path) -> None:
    warehouse = WarehouseResource(database=str(tmp_path / "warehouse.duckdb"))
    files = WarehouseFiles(Path(warehouse.database))
    published_during_the_run = []

    @dg.asset
    def first(warehouse: WarehouseResource) -> None:
        with warehouse.get_connection() as conn:
            conn.execute("CREATE TABLE main.t AS SELECT 1 AS a")

    @dg.asset(deps=[first])
    def second(warehouse: WarehouseResource) -> None:
        published_during_the_run.append(files.published.exists())
        with warehouse.get_connection() as conn:
            conn.execute("INSERT INTO main.t VALUES (2)")
        raise RuntimeError("fails after its write committed")

    @dg.asset
    def only_write_fails(warehouse: WarehouseResource) -> None:
        with warehouse.get_connection() as conn:
            conn.execute("CREATE TABLE main.committed AS SELECT 1 AS a")
            raise RuntimeError("fails inside its write session, after a commit")

    instance = persistent_instance(tmp_path)
    result = dg.materialize(
        [first, second], resources={"warehouse": warehouse}, instance=instance, raise_on_error=False
    )

    assert not result.success and published_during_the_run == [False]
    with duckdb.connect(str(files.published), read_only=True) as conn:
        assert conn.execute("SELECT a FROM main.t ORDER BY a").fetchall() == [(1,), (2,)]
    assert not files.has_unpublished_changes()
    # Outside a run, a write session publishes at its end.
    with warehouse.get_connection() as conn:
        conn.execute("INSERT INTO main.t VALUES (3)")
    with duckdb.connect(str(files.published), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM main.t").fetchall() == [(3,)]

    # A run whose one write fails midway still publishes what that write committed.
    failed = dg.materialize(
        [only_write_fails], resources={"warehouse": warehouse}, instance=instance, raise_on_error=False
    )
    assert not failed.success and not files.has_unpublished_changes()
    with duckdb.connect(str(files.published), read_only=True) as conn:
        assert conn.execute("SELECT a FROM main.committed").fetchall() == [(1,)]


def test_a_rule_waits_for_the_publish_of_the_run_that_made_its_insight(project: Project) -> None:
    project.run()
    # As between a run's last step and the end of its execution, or after a run killed in between.
    with WarehouseFiles(Path(project.database)).write(publish=False) as conn:
        conn.execute("CREATE TABLE main.written_by_a_run AS SELECT 1 AS a")
    with dg.build_sensor_context(
        instance=project.instance,
        resources={"warehouse": project.warehouse, "alerts": project.alerts, "ledger": CommandLedgerResource()},
    ) as context:
        data = project.defs.resolve_sensor_def("nexudus_rule_top_up").evaluate_tick(context)
    assert data.run_requests == [] and "not published" in (data.skip_message or "")

    project.run()  # publishes, with its own changes, what the one before left
    assert not WarehouseFiles(Path(project.database)).has_unpublished_changes()
    assert tick_and_run_dry(project).success


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def usual_umask() -> Iterator[None]:
    before = os.umask(0o022)
    yield
    os.umask(before)


def test_what_a_run_creates_is_private_and_the_umask_is_given_back(tmp_path: Path, usual_umask: None) -> None:
    files = WarehouseFiles(tmp_path / "warehouse.duckdb")
    with files.write() as conn:
        conn.execute("CREATE TABLE main.t AS SELECT 1 AS a")
        assert mode(files.working) == 0o600
        assert mode(Path(f"{files.working}.wal")) == 0o600
    assert {path.name: mode(path) for path in tmp_path.iterdir()} == {
        files.published.name: 0o600,
        files.working.name: 0o600,
        files.lock.name: 0o600,
    }
    ledger = CommandLedger.create(default_ledger_path(files.published))
    assert mode(ledger.path) == 0o600
    assert os.umask(0o022) == 0o022
    (tmp_path / "after").touch()
    assert mode(tmp_path / "after") == 0o644


def test_the_modes_an_operator_sets_survive_syncs_and_commands(project: Project, usual_umask: None) -> None:
    published = Path(project.database)
    project.run()
    assert tick_and_run_dry(project).success
    ledger = default_ledger_path(published)
    assert (mode(published), mode(ledger)) == (0o600, 0o600)

    published.chmod(0o640)
    ledger.chmod(0o600)
    project.run()
    assert tick_and_run_dry(project).success
    project.run()
    assert (mode(published), mode(ledger)) == (0o640, 0o600)
    # Its journals take its mode too.
    journals = [path for path in published.parent.iterdir() if path.name.startswith(f"{ledger.name}-")]
    assert all(mode(path) == 0o600 for path in journals)


@pytest.mark.skipif(os.geteuid() != 0, reason="giving a file another group than the user's own needs root")
def test_a_publish_keeps_the_group_of_the_file_it_replaces(tmp_path: Path) -> None:
    files = WarehouseFiles(tmp_path / "warehouse.duckdb")
    with files.write() as conn:
        conn.execute("CREATE TABLE main.t AS SELECT 1 AS a")
    with files.write() as conn:  # keeps the first file as the spare
        conn.execute("INSERT INTO main.t VALUES (2)")
    analysts = 65534
    os.chown(files.published, -1, analysts)
    files.published.chmod(0o640)
    spare = files.spare.stat().st_ino
    with files.write() as conn:  # written into the spare
        conn.execute("INSERT INTO main.t VALUES (3)")
    found = files.published.stat()
    assert (found.st_ino, found.st_gid, stat.S_IMODE(found.st_mode)) == (spare, analysts, 0o640)
    files.spare.unlink()
    with files.write() as conn:  # a whole copy
        conn.execute("INSERT INTO main.t VALUES (4)")
    found = files.published.stat()
    assert (found.st_gid, stat.S_IMODE(found.st_mode)) == (analysts, 0o640)


def test_the_image_runs_as_a_user_owning_the_warehouse_volume(tmp_path: Path) -> None:
    shipped = (deploy_check.DEPLOY / "Dockerfile").read_text()
    assert deploy_check.dockerfile_problems() == []
    assert deploy_check.dockerfile_user_problems(shipped.replace("USER dagster\n", "")) == [
        "no USER line: the processes would run as root"
    ]
    assert deploy_check.dockerfile_user_problems(shipped.replace("USER dagster", "USER root")) == [
        "USER root: the processes would run as root"
    ]
    unowned = shipped.replace("chown -R dagster:dagster /opt/dagster/data", "chown -R dagster:dagster")
    assert deploy_check.dockerfile_user_problems(unowned) == [
        "/opt/dagster/data (the warehouse volume) is not created and chowned to dagster before USER dagster"
    ]
    copy = tmp_path / "Dockerfile"
    shutil.copy(deploy_check.DEPLOY / "Dockerfile", copy)
    copy.write_text(shipped.replace("USER dagster", "USER 0"))
    assert deploy_check.dockerfile_problems(copy) == ["USER 0: the processes would run as root"]
