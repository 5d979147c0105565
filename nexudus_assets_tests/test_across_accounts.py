"""The file across accounts, built from warehouses the real sync wrote against simulators."""

import datetime as dt
import os
import re
import stat
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS, ENTITIES
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME, Simulator, SimulatorServer
from nexudus_assets.warehouse import (
    WarehouseBusyError,
    WarehouseFiles,
    WarehouseUnreadableError,
    ensure_schema,
    qualified,
)
from nexudus_assets.warehouse.across_accounts import (
    ACCOUNTS_TABLE,
    INSIGHTS_SCHEMA,
    publish_across_accounts,
)
from nexudus_assets_tests.utils import Project, Running, held_open

#: Three accounts of different sizes; `brand_c` is never synced.
SIZES = {
    "brand_a": {"seed": 11, "tokens": 40, "contracts": 25, "passes": 15},
    "brand_b": {"seed": 12, "tokens": 15, "contracts": 35, "passes": 30},
    "brand_c": {"seed": 13, "tokens": 5, "contracts": 5, "passes": 5},
}
SYNCED = ("brand_a", "brand_b")
METRICS = f"{INSIGHTS_SCHEMA}.account_metrics_daily"
#: Access tokens of brand_a deleted upstream before its full refresh: kept in its warehouse as deleted rows.
DELETED_TOKENS = 2


# Its tests share the module's warehouses on one worker (`--dist loadgroup`).
pytestmark = pytest.mark.xdist_group("across_accounts")


@pytest.fixture(scope="module")
def warehouses(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each account's published warehouse, as the jobs left it (brand_c's never written)."""
    directory = tmp_path_factory.mktemp("accounts")
    paths = {}
    for account, size in SIZES.items():
        paths[account] = directory / account / f"{account}.duckdb"
        if account not in SYNCED:
            continue
        simulator = Simulator(username=DEFAULT_USERNAME, password=DEFAULT_PASSWORD, **size)
        with SimulatorServer(simulator) as server:
            project = Project(Running(simulator, server.base_url), paths[account])
            project.run("nexudus_sync")
            if account == "brand_a":
                simulator.delete(
                    ACCESS_TOKENS, [record["Id"] for record in simulator.records(ACCESS_TOKENS)][:DELETED_TOKENS]
                )
                project.run("nexudus_full_refresh")
                # Yesterday's account metrics: a table of the insights schema only brand_a has.
                yesterday = dt.datetime.now(dt.UTC).date() - dt.timedelta(days=1)
                project.defs.resolve_job_def("nexudus_account_metrics").execute_in_process(
                    instance=project.instance, partition_key=yesterday.isoformat()
                )
    return paths


def rows_of(conn: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    return sorted(conn.execute(sql, params or []).fetchall(), key=repr)


def insight_tables(path: Path) -> set[str]:
    with WarehouseFiles(path).read_published() as conn:
        found = conn.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = ?",
            [INSIGHTS_SCHEMA],
        ).fetchall()
    return {f"{INSIGHTS_SCHEMA}.{name}" for (name,) in found}


def test_each_account_s_live_rows_and_insights_are_there_exactly_under_its_name(
    warehouses: dict[str, Path], tmp_path: Path
) -> None:
    target = tmp_path / "across_accounts.duckdb"

    result = publish_across_accounts(warehouses, target)

    assert result.included == SYNCED
    assert result.not_synced == ("brand_c",)
    insights = insight_tables(warehouses["brand_a"])
    assert insight_tables(warehouses["brand_b"]) == insights - {METRICS}
    assert set(result.tables) == {qualified(entity) for entity in ENTITIES} | insights
    # A table one account has holds its rows only.
    assert set(result.rows[METRICS]) == {"brand_a"} and result.rows[METRICS]["brand_a"] > 0
    with duckdb.connect(str(target), read_only=True) as across:
        for account in SYNCED:
            with WarehouseFiles(warehouses[account]).read_published() as own:
                for entity in ENTITIES:
                    table = qualified(entity)
                    expected = rows_of(own, f"SELECT * FROM {table} WHERE _deleted_at IS NULL")
                    assert expected, f"{account} has no {table} rows"
                    assert rows_of(across, f"SELECT * EXCLUDE (account) FROM {table} WHERE account = ?", [account]) == (
                        expected
                    )
                    assert result.rows[table][account] == len(expected)
                for table in insight_tables(warehouses[account]):
                    expected = rows_of(own, f"SELECT * FROM {table}")
                    assert rows_of(across, f"SELECT * EXCLUDE (account) FROM {table} WHERE account = ?", [account]) == (
                        expected
                    )
                    assert result.rows[table][account] == len(expected)
        # Rows deleted upstream stay in the account's warehouse, and out of this file.
        with WarehouseFiles(warehouses["brand_a"]).read_published() as own:
            assert own.execute("SELECT count(*) FROM raw.access_tokens WHERE _deleted_at IS NOT NULL").fetchall() == [
                (DELETED_TOKENS,)
            ]
        assert result.rows["raw.access_tokens"]["brand_a"] == SIZES["brand_a"]["tokens"] - DELETED_TOKENS
        # The raw tables keep their columns in their order, after the account.
        with WarehouseFiles(warehouses["brand_a"]).read_published() as own:
            columns = [d[0] for d in own.execute("SELECT * FROM raw.access_tokens LIMIT 0").description]
        assert [d[0] for d in across.execute("SELECT * FROM raw.access_tokens LIMIT 0").description] == [
            "account",
            *columns,
        ]
        accounts = across.execute(
            f'SELECT account, included, tables, "rows", last_synced_at IS NOT NULL FROM {ACCOUNTS_TABLE}'
            " ORDER BY account"
        ).fetchall()
    contributed = {
        account: (
            len([t for t in result.rows.values() if account in t]),
            sum(t.get(account, 0) for t in result.rows.values()),
        )
        for account in SYNCED
    }
    assert accounts == [
        ("brand_a", True, *contributed["brand_a"], True),
        ("brand_b", True, *contributed["brand_b"], True),
        ("brand_c", False, 0, 0, False),
    ]
    assert contributed["brand_a"][0] == contributed["brand_b"][0] + 1
    # Private to the user, as the warehouses are; nothing left beside it but its lock.
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".across_accounts.duckdb.lock", "across_accounts.duckdb"]


def test_the_accounts_compare_in_one_query(warehouses: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "across_accounts.duckdb"
    publish_across_accounts(warehouses, target)

    with duckdb.connect(str(target), read_only=True) as across:
        compared = across.execute(
            "SELECT account, count(*) FROM raw.coworker_contracts GROUP BY account ORDER BY account"
        ).fetchall()
        (everyone,) = across.execute("SELECT count(*) FROM accounts").fetchone() or (None,)

    assert compared == [("brand_a", SIZES["brand_a"]["contracts"]), ("brand_b", SIZES["brand_b"]["contracts"])]
    assert everyone == len(SIZES)


def write_warehouse(path: Path, *statements: str) -> None:
    with WarehouseFiles(path).write() as conn:
        ensure_schema(conn, describe_columns=False)
        conn.execute(f"CREATE SCHEMA IF NOT EXISTS {INSIGHTS_SCHEMA}")
        for sql in statements:
            conn.execute(sql)


def test_tables_and_columns_are_the_union_by_name_with_nulls_where_an_account_lacks_one(tmp_path: Path) -> None:
    first, second = tmp_path / "first.duckdb", tmp_path / "second.duckdb"
    write_warehouse(
        first,
        "CREATE TABLE insights.tariffs AS SELECT 1 AS id, 'Desk' AS tariff, 10::BIGINT AS members",
        "CREATE TABLE insights.only_first AS SELECT 7 AS id",
    )
    # A warehouse a version behind: one column fewer, one more, one of another type.
    write_warehouse(
        second, "CREATE TABLE insights.tariffs AS SELECT 2 AS id, 'Office' AS tariff, 'many' AS members, true AS old"
    )
    target = tmp_path / "across.duckdb"

    result = publish_across_accounts({"first": first, "second": second}, target)

    assert result.rows[f"{INSIGHTS_SCHEMA}.tariffs"] == {"first": 1, "second": 1}
    assert result.rows[f"{INSIGHTS_SCHEMA}.only_first"] == {"first": 1}
    with duckdb.connect(str(target), read_only=True) as across:
        assert across.execute("SELECT * FROM insights.tariffs ORDER BY account").fetchall() == [
            ("first", 1, "Desk", "10", None),
            ("second", 2, "Office", "many", True),
        ]
        assert across.execute("SELECT * FROM insights.only_first").fetchall() == [("first", 7)]
        assert across.execute("SELECT count(*) FROM raw.access_tokens").fetchall() == [(0,)]


def test_a_table_larger_than_one_batch_arrives_whole(tmp_path: Path) -> None:
    warehouse = tmp_path / "large.duckdb"
    write_warehouse(
        warehouse, "CREATE TABLE insights.large AS SELECT range AS id, range % 7 AS bucket FROM range(25000)"
    )
    target = tmp_path / "across.duckdb"

    result = publish_across_accounts({"large": warehouse}, target)

    assert result.rows["insights.large"] == {"large": 25000}
    with duckdb.connect(str(target), read_only=True) as across:
        assert across.execute(
            "SELECT count(DISTINCT id), sum(bucket), min(account) FROM insights.large"
        ).fetchall() == [(25000, sum(n % 7 for n in range(25000)), "large")]


def contents(path: Path) -> list[tuple[Any, ...]]:
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(f"SELECT account, included FROM {ACCOUNTS_TABLE} ORDER BY account").fetchall()


@pytest.fixture
def published_before(warehouses: dict[str, Path], tmp_path: Path) -> Path:
    target = tmp_path / "across_accounts.duckdb"
    publish_across_accounts({"brand_a": warehouses["brand_a"]}, target)
    return target


def test_an_account_that_cannot_be_read_leaves_the_previous_file_as_it_was(
    warehouses: dict[str, Path], published_before: Path, tmp_path: Path
) -> None:
    corrupt = tmp_path / "corrupt" / "brand_x.duckdb"
    corrupt.parent.mkdir()
    corrupt.write_bytes(b"not a database" * 1000)
    before = published_before.read_bytes()

    with pytest.raises(WarehouseUnreadableError, match=r"brand_x\.duckdb"):
        publish_across_accounts({"brand_b": warehouses["brand_b"], "brand_x": corrupt}, published_before)

    assert published_before.read_bytes() == before
    assert contents(published_before) == [("brand_a", True)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".across_accounts.duckdb.lock",
        "across_accounts.duckdb",
        "corrupt",
    ]


def test_a_warehouse_busy_for_every_attempt_fails_the_publish_and_keeps_the_previous_file(
    warehouses: dict[str, Path], published_before: Path
) -> None:
    files = WarehouseFiles(warehouses["brand_b"])
    before = published_before.read_bytes()
    # The DuckDB CLI holding the published file read-write while a run writes the working file.
    with held_open(files.published), held_open(files.working), pytest.raises(WarehouseBusyError):
        publish_across_accounts(warehouses, published_before, busy_attempts=2, busy_pause_seconds=0.01)

    assert published_before.read_bytes() == before


def test_a_warehouse_busy_for_a_moment_is_read_once_it_is_free(warehouses: dict[str, Path], tmp_path: Path) -> None:
    files = WarehouseFiles(warehouses["brand_b"])
    target = tmp_path / "across_accounts.duckdb"
    outcome: list[Any] = []
    with held_open(files.published), held_open(files.working):
        build = threading.Thread(
            target=lambda: outcome.append(
                publish_across_accounts({"brand_b": files.published}, target, busy_attempts=100, busy_pause_seconds=0.1)
            )
        )
        build.start()
        time.sleep(1)
        assert build.is_alive() and not target.exists()
    build.join(timeout=60)

    [result] = outcome
    assert result.included == ("brand_b",)
    assert contents(target) == [("brand_b", True)]


def test_a_sync_writing_one_account_neither_waits_nor_blocks_and_readers_keep_the_file_they_opened(
    warehouses: dict[str, Path], published_before: Path
) -> None:
    files = WarehouseFiles(warehouses["brand_a"])
    os.chmod(published_before, 0o640)
    # A run holds brand_a's working file for writing; an analyst has the file across accounts open.
    with held_open(files.working), held_open(published_before, read_only=True) as analyst:
        result = publish_across_accounts(warehouses, published_before)

        assert result.included == SYNCED
        assert analyst.query(f"SELECT account FROM {ACCOUNTS_TABLE}") == [("brand_a",)]
        assert contents(published_before) == [("brand_a", True), ("brand_b", True), ("brand_c", False)]
    # The operator's mode is kept, as for the warehouses.
    assert stat.S_IMODE(published_before.stat().st_mode) == 0o640


def readme_queries_across_accounts() -> list[str]:
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme[readme.index("## Several Nexudus accounts") :]
    [block] = re.findall(r"```sql\n(.*?)```", section[: section.index("\n## ", 10)], re.DOTALL)
    return [statement.strip() for statement in block.split(";") if statement.strip()]


def test_the_readme_s_queries_comparing_accounts_run_on_the_file(warehouses: dict[str, Path], tmp_path: Path) -> None:
    target = tmp_path / "across_accounts.duckdb"
    publish_across_accounts(warehouses, target)
    queries = readme_queries_across_accounts()

    with duckdb.connect(str(target), read_only=True) as across:
        answers = [across.execute(query).fetchall() for query in queries]

    assert len(answers) == 3
    metrics, tokens, accounts = answers
    assert metrics and {row[0] for row in metrics} == {"brand_a"}
    assert {row[0] for row in tokens} <= set(SYNCED)
    assert [(account, included) for account, included, *_ in accounts] == [
        ("brand_a", True),
        ("brand_b", True),
        ("brand_c", False),
    ]
