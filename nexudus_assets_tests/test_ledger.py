"""The command ledger: a SQLite file of its own, claims that hold across processes. Real files, real HTTP."""

import datetime as dt
import json
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nexudus_assets.nexudus import ACCESS_TOKENS
from nexudus_assets.resources import CommandLedgerResource
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets.writeback.ledger import (
    ACTIONED,
    CommandLedger,
    CooldownKey,
    LedgerError,
    LedgerMissingError,
    default_ledger_path,
    existing_ledger,
    open_ledger,
)
from nexudus_assets.writeback.rules import CommandRule

NOW = dt.datetime(2026, 11, 26, 12, 0)
KEY = CooldownKey.of("AccessToken", "ACCESSTOKEN_ADD_MINUTES", {"Minutes": 120})
COOLDOWN = dt.timedelta(hours=24)


@pytest.fixture
def ledger(tmp_path) -> CommandLedger:
    return CommandLedger.create(tmp_path / "w.ledger.sqlite")


def claim(ledger: CommandLedger, ids, *, key=KEY, now=NOW, max_attempts=3, min_records=1, run_id="run"):
    return ledger.claim(
        key,
        ids,
        rule="top_up",
        run_id=run_id,
        cooldown=COOLDOWN,
        max_attempts=max_attempts,
        min_records=min_records,
        now=now,
    )


def test_the_default_ledger_sits_beside_the_warehouse_and_the_setting_overrides_it(tmp_path):
    assert default_ledger_path("data/nexudus.duckdb") == Path("data/nexudus.ledger.sqlite")
    assert CommandLedgerResource().location(str(tmp_path / "w.duckdb")) == tmp_path / "w.ledger.sqlite"
    assert CommandLedgerResource(path="/backups/ledger.sqlite").location("data/nexudus.duckdb") == Path(
        "/backups/ledger.sqlite"
    )


def test_the_cooldown_key_is_what_is_done_whichever_rule_asks(ledger):
    assert CooldownKey.of("AccessToken", "K", {"b": 1, "a": 2}) == CooldownKey.of("AccessToken", "K", {"a": 2, "b": 1})
    first = claim(ledger, [1, 2])
    ledger.finish(first.call_id, "succeeded", "done", NOW)
    renamed = ledger.claim(
        KEY,
        [1, 2, 3],
        rule="renamed_top_up",
        run_id="other",
        cooldown=dt.timedelta(hours=1),
        max_attempts=3,
        min_records=1,
        now=NOW + dt.timedelta(minutes=30),
    )
    assert (renamed.claimed, renamed.blocked) == ([3], [1, 2])
    # Another command, or other parameters, is another key.
    assert claim(
        ledger, [1], key=CooldownKey.of("AccessToken", "ACCESSTOKEN_ADD_MINUTES", {"Minutes": 60})
    ).claimed == [1]
    assert claim(ledger, [1], key=CooldownKey.of("AccessToken", "OTHER", {"Minutes": 120})).claimed == [1]
    # The rule being run decides the window: 1 h is over, 24 h is not.
    later = NOW + dt.timedelta(hours=2)
    assert ledger.blocked_ids(KEY, cooldown=dt.timedelta(hours=1), max_attempts=3, now=later) == set()
    assert ledger.blocked_ids(KEY, cooldown=COOLDOWN, max_attempts=3, now=later) == {1, 2, 3}


@pytest.mark.parametrize("outcome", ["pending", "uncertain", "succeeded"])
def test_a_record_that_may_have_changed_rests_for_the_cooldown(ledger, outcome):
    first = claim(ledger, [1])
    if outcome != "pending":  # a run killed mid-call leaves `pending`
        ledger.finish(first.call_id, outcome, outcome, NOW)
    assert claim(ledger, [1], now=NOW + COOLDOWN - dt.timedelta(seconds=1)).blocked == [1]
    assert claim(ledger, [1], now=NOW + COOLDOWN + dt.timedelta(seconds=1)).claimed == [1]


def test_failures_are_retried_up_to_max_attempts_and_other_rows_never_block(ledger):
    for attempt in range(2):
        made = claim(ledger, [1], now=NOW + dt.timedelta(minutes=attempt), max_attempts=2)
        assert made.claimed == [1], attempt
        ledger.finish(made.call_id, "failed", "refused by Nexudus", NOW)
    assert claim(ledger, [1], now=NOW + dt.timedelta(minutes=5), max_attempts=2).blocked == [1]
    for outcome in ("skipped", "refused"):
        ledger.record(KEY, [[2]], rule="top_up", run_id="run", dry_run=False, outcome=outcome, message="", now=NOW)
    ledger.record(KEY, [[2], [3]], rule="top_up", run_id="run", dry_run=True, outcome="dry_run", message="", now=NOW)
    assert claim(ledger, [2, 3]).claimed == [2, 3]
    with pytest.raises(ValueError, match="claim"):
        ledger.record(KEY, [[4]], rule="top_up", run_id="run", dry_run=False, outcome="succeeded", message="", now=NOW)


def test_a_call_left_with_too_few_records_claims_nothing_and_says_so(ledger):
    claim(ledger, [2])
    pair = claim(ledger, [1, 2], min_records=2)
    assert (pair.call_id, pair.claimed, pair.blocked, pair.skipped) == (None, [], [2], [1])
    [skipped] = [row for row in ledger.rows() if row.record_id == 1]
    assert skipped.outcome == "skipped" and "needs 2 records" in skipped.message
    assert claim(ledger, [1]).claimed == [1], "a skipped record is not actioned"


def test_every_row_says_what_was_done_to_which_record_by_whom(ledger):
    made = claim(ledger, [7, 8], run_id="run-1")
    ledger.finish(made.call_id, "succeeded", "120 minutes were added", NOW + dt.timedelta(seconds=2))
    rows = ledger.rows()
    assert [(row.record_id, row.outcome, row.dry_run) for row in rows] == [
        (7, "succeeded", False),
        (8, "succeeded", False),
    ]
    row = rows[0]
    assert (row.rule, row.entity, row.command_key, row.run_id) == (
        "top_up",
        "AccessToken",
        "ACCESSTOKEN_ADD_MINUTES",
        "run-1",
    )
    assert json.loads(row.parameters) == {"Minutes": 120}
    assert (row.created_at, row.finished_at) == (NOW, NOW + dt.timedelta(seconds=2))
    assert rows[0].call_id == rows[1].call_id


def test_a_claim_waits_for_another_process_holding_the_ledger_then_gives_up_loudly(tmp_path):
    path = tmp_path / "w.ledger.sqlite"
    CommandLedger.create(path)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(LedgerError, match=f"{path} stayed locked by another process"):
            claim(CommandLedger(path, busy_timeout=0.2), [1])
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert claim(CommandLedger(path), [1]).claimed == [1]


def test_only_a_command_ledger_is_taken_for_one(tmp_path):
    with pytest.raises(LedgerMissingError, match="no command ledger at"):
        CommandLedger(tmp_path / "missing.sqlite")
    empty = tmp_path / "empty.sqlite"
    empty.touch()
    other = tmp_path / "other.sqlite"
    with sqlite3.connect(other) as conn:
        conn.execute("CREATE TABLE t (x)")
    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database at all" * 100)
    for path in (empty, other, garbage):
        with pytest.raises(LedgerError, match=str(path)):
            CommandLedger(path)
    with pytest.raises(LedgerError, match="is not a command ledger"):
        CommandLedger.create(other)


def test_a_missing_ledger_is_made_only_when_none_was_used_before(tmp_path):
    path = tmp_path / "state" / "w.ledger.sqlite"
    with pytest.raises(LedgerMissingError) as refused:
        open_ledger(path, used_before_by="live command run abc")
    message = str(refused.value)
    assert str(path) in message and "live command run abc" in message
    assert "NEXUDUS_LEDGER_PATH" in message and f"python -m nexudus_assets.writeback.ledger init {path}" in message
    assert not path.exists()
    assert open_ledger(path, used_before_by=None).rows() == []
    assert path.exists()


def test_init_makes_an_empty_ledger_and_never_replaces_one(tmp_path):
    path = tmp_path / "w.ledger.sqlite"

    def init() -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "nexudus_assets.writeback.ledger", "init", str(path)],
            capture_output=True,
            text=True,
            timeout=60,
        )

    created = init()
    assert created.returncode == 0 and "created an empty command ledger" in created.stdout
    claim(CommandLedger(path), [1])
    again = init()
    assert again.returncode == 1 and "already exists" in again.stderr
    assert [row.record_id for row in CommandLedger(path).rows()] == [1]


#: One process of the race: runs the rule on the ids when told to go, prints what it sent.
RACER = """
import json, sys
from nexudus_assets.nexudus import ACCESS_TOKENS, NexudusClient, RateLimits
from nexudus_assets.writeback.execute import run_rule
from nexudus_assets.writeback.ledger import CommandLedger
from nexudus_assets.writeback.rules import CommandRule

task = json.loads(sys.argv[1])
ledger = CommandLedger(task["ledger"])
with NexudusClient(task["base_url"], task["username"], task["password"], limits=RateLimits.unlimited()) as client:
    print("ready", flush=True)
    sys.stdin.readline()
    report = run_rule(
        client, ledger, CommandRule.model_validate(task["rule"]), ACCESS_TOKENS, task["ids"],
        insight_ids=set(task["ids"]), live=True, run_id=task["run_id"],
    )
print(json.dumps(report.succeeded), flush=True)
"""


def test_two_processes_claiming_the_same_records_send_each_command_once(start_simulator, tmp_path):
    running = start_simulator(seed=5, tokens=40, contracts=2, passes=2)
    running.sim.faults.latency_ms = 50  # every call is slow, so the two runs overlap throughout
    ids = sorted(record["Id"] for record in running.sim.records(ACCESS_TOKENS))[:20]
    path = tmp_path / "w.ledger.sqlite"
    CommandLedger.create(path)
    rule = CommandRule(
        name="extend", asset="low_minutes_access_tokens", command="ACCESSTOKEN_EXTEND_VALIDITY", parameters={"Days": 7}
    )
    spellings = [running.base_url, running.base_url.replace("127.0.0.1", "localhost")]
    racers = []
    for number, base_url in enumerate(spellings):
        task = {
            "ledger": str(path),
            "base_url": base_url,
            "username": DEFAULT_USERNAME,
            "password": DEFAULT_PASSWORD,
            "rule": rule.model_dump(),
            "ids": ids,
            "run_id": f"racer-{number}",
        }
        racers.append(
            subprocess.Popen(
                [sys.executable, "-c", RACER, json.dumps(task)],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
        )
    try:
        for racer in racers:
            assert racer.stdout.readline().strip() == "ready"
        for racer in racers:
            racer.stdin.write("go\n")
            racer.stdin.flush()
        sent_by = [json.loads(racer.communicate(timeout=120)[0]) for racer in racers]
    finally:
        for racer in racers:
            racer.kill()
    assert all(racer.returncode == 0 for racer in racers)

    applied = Counter(record_id for call in running.sim.commands_run for record_id in call["ids"])
    assert applied == Counter(ids), "each record's command reached Nexudus exactly once"
    assert sorted(sent_by[0] + sent_by[1]) == ids
    assert sent_by[0] and sent_by[1], "one process sent everything: the runs did not race"
    actioned = Counter(row.record_id for row in CommandLedger(path).rows() if row.outcome in ACTIONED)
    assert actioned == Counter(ids), "one actioned row per record"


def test_one_call_finishes_record_by_record(ledger):
    taken = claim(ledger, [1, 2, 3])
    assert taken.call_id is not None
    ledger.finish_each(taken.call_id, {1: "failed", 2: "succeeded", 3: "uncertain"}, "partly", NOW)
    assert {row.record_id: row.outcome for row in ledger.rows()} == {1: "failed", 2: "succeeded", 3: "uncertain"}
    # The failed one may be tried again; the others rest for the cooldown.
    assert ledger.blocked_ids(KEY, cooldown=COOLDOWN, max_attempts=3, now=NOW) == {2, 3}
    # Finishing again changes nothing: only pending rows are finished.
    ledger.finish_each(taken.call_id, {1: "succeeded"}, "again", NOW)
    assert {row.record_id: row.outcome for row in ledger.rows()}[1] == "failed"


def test_updates_are_blocked_by_their_own_fields_and_values(ledger):
    first, other = (CooldownKey.of("AccessToken", "PUT", {"UserLimit": limit}) for limit in (3, 4))
    taken = claim(ledger, [7], key=first)
    assert taken.call_id is not None
    ledger.finish(taken.call_id, "succeeded", "updated", NOW)
    blocked = ledger.blocked_each({7: first, 8: first}, cooldown=COOLDOWN, max_attempts=3, now=NOW)
    assert blocked == {7}
    assert ledger.blocked_each({7: other}, cooldown=COOLDOWN, max_attempts=3, now=NOW) == set()


def test_an_existing_ledger_is_none_only_when_none_is_expected(tmp_path):
    path = tmp_path / "w.ledger.sqlite"
    assert existing_ledger(path, used_before_by=None) is None and not path.exists()
    with pytest.raises(LedgerMissingError, match="live command run 1234"):
        existing_ledger(path, used_before_by="live command run 1234")
    CommandLedger.create(path)
    assert existing_ledger(path, used_before_by="live command run 1234") is not None
