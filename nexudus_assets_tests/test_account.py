"""A real account's own place and its check, and warehouses and ledgers that belong to one account.
Two simulators with two users stand for two accounts; all over HTTP on 127.0.0.1, real files."""

import datetime as dt
import hashlib
import stat
from pathlib import Path

import pytest

from nexudus_assets.account import main
from nexudus_assets.nexudus.account import Account
from nexudus_assets.resources import CommandLedgerResource
from nexudus_assets.simulator import DEFAULT_PASSWORD
from nexudus_assets.simulator.faults import Faults
from nexudus_assets.warehouse import WarehouseFiles
from nexudus_assets.warehouse.bookkeeping import warehouse_account
from nexudus_assets.writeback.ledger import CommandLedger, CooldownKey, LedgerAccountError, default_ledger_path
from nexudus_assets.writeback.rules import CommandRule
from nexudus_assets_tests.utils import Project

PROJECT = Path(__file__).resolve().parent.parent
FIRST_USER = "ops@first.example"
SECOND_USER = "ops@second.example"
NOW = dt.datetime(2026, 1, 1)
TOP_UP = CommandRule(
    name="top_up",
    asset="low_minutes_access_tokens",
    command="ACCESSTOKEN_ADD_MINUTES",
    parameters={"Minutes": 120},
    live=True,
)


def environment(base_url: str, username: str, password: str = DEFAULT_PASSWORD) -> dict[str, str]:
    return {
        "NEXUDUS_BASE_URL": base_url,
        "NEXUDUS_USERNAME": username,
        "NEXUDUS_PASSWORD": password,
        "NEXUDUS_PACING": "off",
    }


def run_check(tmp_path: Path, environ: dict[str, str], name: str = "first") -> tuple[int, str]:
    lines: list[str] = []
    code = main(["check", "--name", name, "--accounts", str(tmp_path / "accounts")], environ, lines.append)
    return code, "\n".join(lines)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_account_check_reports_each_role_and_makes_a_private_place(start_simulator, tmp_path):
    faults = Faults(denied_entities=("CoworkerContract",), forbidden_endpoints=("CoworkerTimePass/commands",))
    running = start_simulator(seed=5, tokens=12, contracts=4, passes=4, username=FIRST_USER, faults=faults)
    code, printed = run_check(tmp_path, environment(running.base_url, FIRST_USER))

    assert code == 1, printed  # some jobs cannot run in full
    lines = printed.splitlines()

    def line(*words: str) -> str:
        [found] = [text for text in lines if all(word in text for word in words)]
        return found

    assert line("OK", "list one page of AccessToken", "AccessToken-List", "12 record(s)")
    assert line("OK", "read one record of AccessToken", "AccessToken-Read")
    assert line("OK", "read the commands of AccessToken", "AccessToken-List")
    assert line("REFUSED", "list one page of CoworkerContract", "CoworkerContract-List", "HTTP 401")
    assert line("NOT TRIED", "read one record of CoworkerContract")
    assert line("OK", "list one page of CoworkerTimePass", "CoworkerTimePass-List")
    assert line("REFUSED", "read the commands of CoworkerTimePass", "HTTP 403")
    assert "lacks that role" in printed
    assert "fails without CoworkerContract-List" in line("nexudus_sync ")
    assert "CoworkerContract-List, CoworkerTimePass-List" in line("nexudus_full_refresh (")
    assert "cannot check rules for CoworkerContract-List, CoworkerTimePass-List" in line("nexudus_command")
    assert "not shown for CoworkerContract-Read" in line("nexudus_command")
    assert DEFAULT_PASSWORD not in printed
    # Read-only: not one write went out.
    assert {method for method, *_ in running.sim.request_log} == {"GET"}

    place = tmp_path / "accounts" / "first"
    assert stat.S_IMODE(place.stat().st_mode) == 0o700
    assert (place / "dagster_home" / "dagster.yaml").resolve() == (PROJECT / "dagster.yaml").resolve()
    env_file = (place / "env.sh").read_text()
    assert DEFAULT_PASSWORD not in env_file
    for expected in (
        f"export DAGSTER_HOME={place / 'dagster_home'}",
        f"export NEXUDUS_DUCKDB_PATH={place / 'warehouse.duckdb'}",
        f"export NEXUDUS_LEDGER_PATH={place / 'warehouse.ledger.sqlite'}",
        f"export NEXUDUS_BASE_URL={running.base_url}",
        f"export NEXUDUS_USERNAME={FIRST_USER}",
    ):
        assert expected in env_file and expected in printed


def test_every_role_there_checks_clean(start_simulator, tmp_path):
    running = start_simulator(seed=5, tokens=3, contracts=3, passes=3, username=FIRST_USER)
    code, printed = run_check(tmp_path, environment(running.base_url, FIRST_USER))
    assert code == 0, printed
    assert "REFUSED" not in printed and printed.count("OK ") == 9


def test_refused_credentials_make_nothing(start_simulator, tmp_path):
    running = start_simulator(seed=5, tokens=3, contracts=3, passes=3, username=FIRST_USER)
    code, printed = run_check(tmp_path, environment(running.base_url, FIRST_USER, password="not-the-password"))
    assert code == 2
    assert "Every request was refused" in printed or "credentials were refused" in printed
    assert "not-the-password" not in printed
    assert not (tmp_path / "accounts" / "first" / "env.sh").exists()


def test_a_sync_into_another_accounts_warehouse_fails_naming_both_and_changes_nothing(start_simulator, tmp_path):
    first = start_simulator(seed=5, tokens=20, contracts=5, passes=5, username=FIRST_USER)
    second = start_simulator(seed=6, tokens=20, contracts=5, passes=5, username=SECOND_USER)
    database = tmp_path / "warehouse.duckdb"
    Project(first, database, username=FIRST_USER).run()
    with WarehouseFiles(database).read_published() as conn:
        assert warehouse_account(conn) == Account.of(first.base_url, FIRST_USER)
    published, working = digest(database), digest(WarehouseFiles(database).working)

    result = Project(second, database, username=SECOND_USER).run(raise_on_error=False)
    assert not result.success
    failures = [event.step_failure_data.error for event in result.all_events if event.is_step_failure]
    assert len(failures) == 3  # each entity's sync refused
    for error in failures:
        message = error.cause.message if error.cause is not None else error.message
        assert f"{FIRST_USER} at http://127.0.0.1/api" in message
        assert f"{SECOND_USER} at http://127.0.0.1/api" in message and "nothing was written" in message
    assert digest(database) == published and digest(WarehouseFiles(database).working) == working
    assert second.sim.commands_run == []


def test_a_command_run_with_another_accounts_ledger_sends_nothing_and_changes_nothing(start_simulator, tmp_path):
    first = start_simulator(seed=5, tokens=60, contracts=5, passes=5, username=FIRST_USER)
    second = start_simulator(seed=5, tokens=60, contracts=5, passes=5, username=SECOND_USER)
    (tmp_path / "first").mkdir()
    (tmp_path / "second").mkdir()
    mine = Project(first, tmp_path / "first" / "warehouse.duckdb", rules=[TOP_UP], username=FIRST_USER)
    mine.run()
    low = sorted(mine.insight_ids("low_minutes_access_tokens"))
    assert low
    mine.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config={"ops": {"run_nexudus_command": {"config": {"rule": "top_up", "record_ids": low}}}},
        instance=mine.instance,
    )
    ledger = default_ledger_path(mine.database)
    assert CommandLedger(ledger).account_recorded() == Account.of(first.base_url, FIRST_USER)

    other = Project(second, tmp_path / "second" / "warehouse.duckdb", rules=[TOP_UP], live=True, username=SECOND_USER)
    other.run()
    before = digest(ledger)
    pointed = other.defs.resolve_job_def("nexudus_command")
    result = pointed.execute_in_process(
        run_config={"ops": {"run_nexudus_command": {"config": {"rule": "top_up", "record_ids": low}}}},
        instance=other.instance,
        resources={"ledger": CommandLedgerResource(path=str(ledger))},
        raise_on_error=False,
    )
    assert not result.success
    message = result.failure_data_for_node("run_nexudus_command").error.message
    assert "Nothing was sent" in message
    assert f"{FIRST_USER} at http://127.0.0.1/api" in message and f"{SECOND_USER} at http://127.0.0.1/api" in message
    assert digest(ledger) == before
    assert second.sim.commands_run == []
    assert not [entry for entry in second.sim.request_log if entry[1].endswith("/runcommand")]


def test_moving_a_warehouse_and_its_ledger_on_purpose(start_simulator, tmp_path):
    first = start_simulator(seed=5, tokens=20, contracts=5, passes=5, username=FIRST_USER)
    second = start_simulator(seed=5, tokens=20, contracts=5, passes=5, username=SECOND_USER)
    database = tmp_path / "warehouse.duckdb"
    Project(first, database, username=FIRST_USER).run()
    ledger = CommandLedger.create(default_ledger_path(database), account=Account.of(first.base_url, FIRST_USER))
    key = CooldownKey.of("AccessToken", "ACCESSTOKEN_ADD_MINUTES", {"Minutes": 1})
    ledger.record(key, [[1]], rule="r", run_id="run", dry_run=True, outcome="dry_run", message="dry", now=NOW)
    lines: list[str] = []
    code = main(["move", "--warehouse", str(database)], environment(second.base_url, SECOND_USER), lines.append)
    assert code == 0, lines
    assert any(f"before: {FIRST_USER} at http://127.0.0.1/api" in line for line in lines)
    assert CommandLedger(ledger.path).account_recorded() == Account.of(second.base_url, SECOND_USER)
    assert Project(second, database, username=SECOND_USER).run().success
    with WarehouseFiles(database).read_published() as conn:
        assert warehouse_account(conn) == Account.of(second.base_url, SECOND_USER)


@pytest.mark.parametrize(
    ("one", "other", "same"),
    [
        (("https://spaces.nexudus.com/api", "Ops@X.com"), ("HTTPS://Spaces.Nexudus.com/api/", "ops@x.com "), True),
        (("http://127.0.0.1:4001/api", "ops@x.com"), ("http://127.0.0.1:4999/api", "ops@x.com"), True),
        (("https://spaces.nexudus.com/api", "ops@x.com"), ("https://spaces.nexudus.com:8443/api", "ops@x.com"), False),
        (("https://spaces.nexudus.com/api", "ops@x.com"), ("https://eu.nexudus.com/api", "ops@x.com"), False),
        (("https://spaces.nexudus.com/api", "ops@x.com"), ("https://spaces.nexudus.com/api", "ops@y.com"), False),
    ],
)
def test_an_account_is_its_base_url_and_user_as_nexudus_reads_them(one, other, same):
    assert (Account.of(*one) == Account.of(*other)) is same


def test_a_ledger_records_its_account_at_the_first_write_and_refuses_another(tmp_path):
    first = Account.of("https://spaces.nexudus.com/api", FIRST_USER)
    second = Account.of("https://spaces.nexudus.com/api", SECOND_USER)
    path = tmp_path / "warehouse.ledger.sqlite"
    key = CooldownKey.of("AccessToken", "ACCESSTOKEN_ADD_MINUTES", {"Minutes": 1})
    CommandLedger.create(path)
    assert CommandLedger(path).account_recorded() is None  # made, nothing written yet
    CommandLedger(path, account=first).record(
        key, [[1]], rule="r", run_id="a", dry_run=True, outcome="dry_run", message="dry", now=NOW
    )
    assert CommandLedger(path).account_recorded() == first
    before = digest(path)
    other = CommandLedger(path, account=second)
    with pytest.raises(LedgerAccountError) as refused:
        other.claim(
            key, [2], rule="r", run_id="b", cooldown=dt.timedelta(hours=1), max_attempts=1, min_records=1, now=NOW
        )
    assert str(first) in str(refused.value) and str(second) in str(refused.value)
    assert "nothing was written" in str(refused.value)
    assert digest(path) == before and [row.run_id for row in CommandLedger(path).rows()] == ["a"]
