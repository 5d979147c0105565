"""Command rules, their sensors and the command job; the alert sensor. Simulator over HTTP, real files."""

import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import httpx
import pytest

from nexudus_assets.definitions import ACTIONABLE_ASSETS
from nexudus_assets.nexudus import ACCESS_TOKENS, CommandDescription, UncertainOutcomeError
from nexudus_assets.resources import CommandLedgerResource
from nexudus_assets.sensors import build_command_sensor
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME
from nexudus_assets.simulator.commands import ANSWER_STYLES
from nexudus_assets.warehouse import WarehouseFiles
from nexudus_assets.writeback.ledger import CommandLedger, default_ledger_path
from nexudus_assets.writeback.plan import check_rule, plan_calls
from nexudus_assets.writeback.rules import CommandRule, FromColumn, RuleError, load_rules
from nexudus_assets_tests.utils import Project, Webhook

TOP_UP = CommandRule(
    name="top_up",
    asset="low_minutes_access_tokens",
    command="ACCESSTOKEN_ADD_MINUTES",
    parameters={"Minutes": 120},
    batch_size=10,
    live=True,
)
EXTEND = CommandRule(
    name="extend",
    asset="low_minutes_access_tokens",
    command="ACCESSTOKEN_EXTEND_VALIDITY",
    parameters={"Days": 7},
    max_attempts=2,
    live=True,
)
MERGE = CommandRule(name="merge", asset="low_minutes_access_tokens", command="ACCESSTOKEN_MERGE", live=True)


# -- the rules file --------------------------------------------------------------------------


RULE = "rules:\n  - name: a\n    asset: low_minutes_access_tokens\n    command: K\n"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: [", "not valid YAML"),
        ("rules: 5", "a `rules:` list"),
        ("rules:\n  - {name: a, asset: nowhere, command: K}", "'a'.*asset 'nowhere' is not an insight"),
        ("rules:\n  - {name: Bad-Name, asset: low_minutes_access_tokens, command: K}", "lowercase"),
        ("rules:\n  - {name: a, asset: low_minutes_access_tokens}", "'a'.*either `command:` or `update:`"),
        ("rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, cooldown_hours: -1}", "cooldown_hours"),
        ("rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, colour: red}", "colour"),
        (
            "rules:\n  - {name: a, asset: monthly_recurring_revenue_by_tariff, command: K}",
            "not an insight of record ids",
        ),
        (
            "rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K}\n"
            "  - {name: a, asset: expiring_time_passes, command: K}",
            "used twice",
        ),
        ("rule:\n  - {name: a, asset: low_minutes_access_tokens, command: K}", "unknown top-level key\\(s\\) 'rule'"),
        (
            "rules: []\nrules:\n  - {name: a, asset: low_minutes_access_tokens, command: K}",
            "rules.yaml: key 'rules' is given twice \\(lines 1 and 2\\)",
        ),
        (
            "rules:\n  - name: a\n    asset: low_minutes_access_tokens\n    command: K\n"
            "  - name: b\n    asset: low_minutes_access_tokens\n    command: K\n    asset: expiring_time_passes",
            "rule 'b' in .*key 'asset' is given twice \\(lines 6 and 8\\)",
        ),
        (
            "rules:\n  - name: a\n    asset: low_minutes_access_tokens\n    command: K\n"
            "    parameters:\n      Minutes: 120\n      Minutes: 12000",
            "rule 'a' in .*key 'Minutes' is given twice",
        ),
        (
            "rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, cooldown_hours: .inf}",
            "'a'.*cooldown_hours.*a number of hours from 1/60 \\(one minute\\) to 8760 \\(365 days\\)",
        ),
        ("rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, cooldown_hours: .nan}", "cooldown_hours"),
        (
            "rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, cooldown_hours: 0.01}",
            "'a'.*from 1/60 \\(one minute\\) to 8760 \\(365 days\\), not 0.01",
        ),
        (
            "rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, parameters: {Minutes: .nan}}",
            "'a'.*'Minutes' is nan; a parameter must be a finite number",
        ),
        (
            "rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, parameters: {Minutes: -.inf}}",
            "'Minutes' is -inf",
        ),
        (
            "rules:\n  - {name: a, asset: low_minutes_access_tokens, command: K, "
            "parameters: {Minutes: 99999999999999999999999999999999}}",
            "'a'.*beyond what any .NET number can hold",
        ),
        (RULE + "    cooldown_hours: 1e8", "'a'.*cooldown_hours.*to 8760 \\(365 days\\), not 100000000.0"),
        (RULE + "    cooldown_hours: 8761", "'a'.*cooldown_hours"),
        (RULE + "    max_attempts: 1e20", "'a'.*max_attempts"),
        (RULE + "    max_attempts: 101", "'a'.*max_attempts: Input should be less than or equal to 100"),
        (RULE + "    batch_size: 1001", "'a'.*batch_size: Input should be less than or equal to 1000"),
        (RULE + "    parameters:\n      Minutes: 1:30", "rule 'a' in .*'1:30' is a sexagesimal number in YAML 1.1"),
        (RULE + "    parameters:\n      Days: 010", "rule 'a' in .*'010' is an octal number in YAML 1.1"),
        (RULE + "    parameters:\n      Urgent: yes", "rule 'a' in .*'yes' is a boolean in YAML 1.1"),
        (RULE + "    parameters:\n      Urgent: Off", "rule 'a' in .*'Off' is a boolean in YAML 1.1"),
        (RULE + "    parameters:\n      Minutes: 1_000", "rule 'a' in .*'1_000' is a number with underscores"),
        (RULE + "    parameters:\n      At: 2026-12-01", "rule 'a' in .*'2026-12-01' is a date in YAML 1.1"),
        (RULE + "    parameters: &p {Minutes: 1}", "rule 'a' in .*anchors and aliases"),
        (
            "bomb: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\n"
            "c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: [*c, *c, *c, *c, *c, *c, *c, *c, *c]\nrules: []",
            "rules.yaml: anchors and aliases \\(& and \\*\\) are not allowed; write each value out \\(line 1\\)",
        ),
        (RULE + "    update: {Description: x}", "'a'.*either `command:` or `update:`, not both"),
        (
            "rules:\n  - {name: a, asset: low_minutes_access_tokens, update: {Description: x}, batch_size: 5}",
            "'a'.*batch_size: only for `command:` rules",
        ),
        (RULE + "    unlisted: true\n    parameters: {Minutes: 5}", "'a'.*declares every parameter's type"),
        (
            RULE + "    parameter_types: {Minutes: Int32}",
            "'a'.*parameter_types names parameter\\(s\\) the rule does not",
        ),
    ],
)
def test_a_malformed_rules_file_fails_loudly_naming_the_rule(tmp_path, text, message):
    path = tmp_path / "rules.yaml"
    path.write_text(text)
    with pytest.raises(RuleError, match=message):
        load_rules(path, ACTIONABLE_ASSETS)


def test_quoted_values_and_yaml_12_forms_load_as_written(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        RULE + '    parameters: {Minutes: "1:30", Days: "010", Urgent: true, Note: "yes", Ratio: 1.5}\n'
        "    cooldown_hours: 8760\n    max_attempts: 100\n    batch_size: 1000"
    )
    [loaded] = load_rules(path, ACTIONABLE_ASSETS)
    assert loaded.parameters == {"Minutes": "1:30", "Days": "010", "Urgent": True, "Note": "yes", "Ratio": 1.5}
    assert (loaded.cooldown_hours, loaded.max_attempts, loaded.batch_size) == (8760, 100, 1000)


def test_the_shipped_example_loads(tmp_path):
    from nexudus_assets.writeback.rules import EXAMPLE_RULES

    rules = load_rules(EXAMPLE_RULES, ACTIONABLE_ASSETS)
    assert [rule.name for rule in rules] == ["top_up_low_minutes", "extend_expiring_passes"]
    assert rules[0].parameters == {"Minutes": 120}


# -- checking against the catalogue, cutting into calls --------------------------------------

CATALOGUE = [
    CommandDescription.model_validate(item)
    for item in (
        {"Key": "ADD", "RequiresParameters": [{"Name": "Minutes", "Type": "Int32"}]},
        {
            "Key": "NOTE",
            "RequiresParameters": [{"Name": "Note", "Type": "string"}, {"Name": "Urgent", "Type": "Boolean"}],
        },
        {"Key": "WHEN", "RequiresParameters": [{"Name": "At", "Type": "System.DateTime?"}]},
        {"Key": "ODD", "RequiresParameters": [{"Name": "X", "Type": "Nexudus.Enums.eSomething"}]},
        {"Key": "GLOBAL", "NeedsEntitiesToRun": False},
        {"Key": "SMALL", "RequiresParameters": [{"Name": "Count", "Type": "System.Byte"}]},
        {"Key": "BIG", "RequiresParameters": [{"Name": "Total", "Type": "Int64"}]},
        {"Key": "PRICE", "RequiresParameters": [{"Name": "Amount", "Type": "Decimal"}]},
        {"Key": "RATIO", "RequiresParameters": [{"Name": "Share", "Type": "Single"}]},
        {"Key": "UNTYPED", "RequiresParameters": [{"Name": "Count", "Type": None}]},
    )
]


def rule(command: str, **parameters) -> CommandRule:
    return CommandRule(name="r", asset="low_minutes_access_tokens", command=command, parameters=parameters)


def typed(command: str, parameters: dict, unlisted: bool = False, **types: str) -> CommandRule:
    return CommandRule(
        name="r",
        asset="low_minutes_access_tokens",
        command=command,
        parameters=parameters,
        parameter_types=types,
        unlisted=unlisted,
    )


def test_catalogue_gaps_are_filled_by_the_types_the_rule_declares():
    # `Type: null`: checked as the rule declares, sent as {Name, Value}.
    assert check_rule(typed("UNTYPED", {"Count": 3}, Count="Int32"), CATALOGUE)[1] == [{"Name": "Count", "Value": 3}]
    # A type name unknown here keeps its name on the wire; the value is checked as declared.
    assert check_rule(typed("ODD", {"X": "Red"}, X="String"), CATALOGUE)[1] == [
        {"Name": "X", "Type": "Nexudus.Enums.eSomething", "Value": "Red"}
    ]
    # A command missing from the catalogue, declared so: batches of any size, no Type on the wire.
    command, payload = check_rule(typed("HIDDEN", {"Days": 7}, unlisted=True, Days="Int32"), CATALOGUE)
    assert (command.key, payload) == ("HIDDEN", [{"Name": "Days", "Value": 7}])
    assert plan_calls(command, [3, 1, 2], 2).batches == [[1, 2], [3]]
    # Listed after all: the catalogue's description wins.
    assert check_rule(typed("ADD", {"Minutes": 5}, unlisted=True, Minutes="Int32"), CATALOGUE)[1] == [
        {"Name": "Minutes", "Type": "Int32", "Value": 5}
    ]


def test_a_valid_rule_gives_the_parameters_payload():
    command, payload = check_rule(rule("NOTE", Note="hello", Urgent=True), CATALOGUE)
    assert command.key == "NOTE"
    assert payload == [
        {"Name": "Note", "Type": "string", "Value": "hello"},
        {"Name": "Urgent", "Type": "Boolean", "Value": True},
    ]
    assert check_rule(rule("WHEN", At="2026-12-01T09:00:00"), CATALOGUE)[1][0]["Value"] == "2026-12-01T09:00:00"
    # Each number within its declared type's range passes, edges included.
    for command, name, value in [
        ("ADD", "Minutes", -(2**31)),
        ("SMALL", "Count", 255),
        ("BIG", "Total", 2**40),
        ("PRICE", "Amount", "12.50"),
        ("PRICE", "Amount", 2**96 - 1),
        ("RATIO", "Share", 0.5),
    ]:
        assert check_rule(rule(command, **{name: value}), CATALOGUE)[1][0]["Value"] == value


@pytest.mark.parametrize(
    ("candidate", "message"),
    [
        (
            rule("NOPE"),
            "'NOPE' is not in the catalogue \\(available: ADD, BIG, GLOBAL, NOTE, ODD, PRICE, RATIO, SMALL, UNTYPED, "
            "WHEN\\)",
        ),
        (rule("ADD"), "missing parameter\\(s\\) Minutes; ADD takes Minutes \\(Int32\\)"),
        (rule("ADD", Minutes=5, Hours=1), "unknown parameter\\(s\\) Hours"),
        (rule("ADD", Minutes="lots"), "'Minutes' must be a Int32 \\(.*\\), not str 'lots'"),
        (rule("ADD", Minutes=True), "must be a Int32 \\(.*\\), not bool"),
        (rule("ADD", Minutes=-99999999999), "must be a Int32 \\(a whole number from -2147483648 to 2147483647\\)"),
        (rule("ADD", Minutes=2**31), "must be a Int32"),
        (rule("ADD", Minutes=1.5), "must be a Int32"),
        (rule("SMALL", Count=256), "'Count' must be a System.Byte \\(a whole number from 0 to 255\\)"),
        (rule("SMALL", Count=-1), "must be a System.Byte"),
        (rule("BIG", Total=2**63), "must be a Int64"),
        (rule("PRICE", Amount="NaN"), "'Amount' must be a Decimal \\(a finite number"),
        (rule("PRICE", Amount="1e30"), "must be a Decimal"),
        (rule("RATIO", Share=1e39), "must be a Single"),
        (rule("WHEN", At="next tuesday"), "'At' must be a System.DateTime\\?"),
        (rule("ODD", X=1), "cannot be checked; declare its type in `parameter_types:`.*nothing is sent unchecked"),
        (rule("UNTYPED", Count=1), "has type None in the catalogue, which cannot be checked; declare its type"),
        (typed("UNTYPED", {"Count": "lots"}, Count="Int32"), "'Count' must be a Int32 \\(.*\\), not str 'lots'"),
        (typed("UNTYPED", {"Count": 1}, Count="Nexudus.Enums.eColour"), "declared 'Nexudus.Enums.eColour', a type"),
        (typed("ADD", {"Minutes": 1}, Minutes="String"), "declared 'String', but the catalogue types it 'Int32'"),
        (rule("HIDDEN"), "not in the catalogue .*say `unlisted: true` and declare `parameter_types:`"),
        (typed("HIDDEN", {"Days": 2**40}, unlisted=True, Days="Int32"), "'Days' must be a Int32"),
        (rule("GLOBAL"), "runs without records"),
    ],
)
def test_a_rule_that_does_not_fit_the_catalogue_says_why(candidate, message):
    with pytest.raises(RuleError, match=message):
        check_rule(candidate, CATALOGUE)


def describe(**flags) -> CommandDescription:
    return CommandDescription.model_validate({"Key": "K", **flags})


def test_calls_follow_the_command_metadata():
    ids = [5, 1, 4, 2, 3, 3]
    assert plan_calls(describe(AppliesOnlyToOneEntity=True), ids, 10).batches == [[1], [2], [3], [4], [5]]
    pairs = plan_calls(describe(AppliesOnlyToTwoEntities=True), ids, 10)
    assert (pairs.batches, pairs.left_over) == ([[1, 2], [3, 4]], [5])
    assert plan_calls(describe(), ids, 2).batches == [[1, 2], [3, 4], [5]]
    assert plan_calls(describe(AppliesOnlyToMultipleEntities=True), ids, 2).batches == [[1, 2], [3, 4, 5]]
    assert plan_calls(describe(AppliesOnlyToMultipleEntities=True), [7], 2).left_over == [7]


# -- sensors and the command job against the simulator ----------------------------------------


@pytest.fixture
def make_project(start_simulator, tmp_path):
    """Projects on one simulator, one warehouse file and one persistent Dagster instance (or the
    `instance` given): a later call is the same deployment with other settings (rules renamed, live
    switched)."""
    running = start_simulator(seed=21, tokens=400, contracts=10, passes=10)
    (tmp_path / "instance").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "instance")) as default_instance:

        def make(instance=default_instance, **kwargs) -> Project:
            project = Project(running, tmp_path / "nexudus.duckdb", **kwargs)
            project.instance = instance
            return project

        yield make


def tick(project, sensor_name: str, cursor=None, **resources):
    sensor = project.defs.resolve_sensor_def(sensor_name)
    # A context manager, as the daemon uses it: the warehouse resource has a teardown.
    with dg.build_sensor_context(
        instance=project.instance,
        cursor=cursor,
        resources={
            "warehouse": project.warehouse,
            "alerts": project.alerts,
            "ledger": CommandLedgerResource(),
            **resources,
        },
    ) as context:
        return sensor.evaluate_tick(context)


def run_requested(project, data, raise_on_error=True):
    [request] = data.run_requests
    return project.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config=request.run_config, instance=project.instance, raise_on_error=raise_on_error
    )


def run_command(project, rule_name: str, ids, raise_on_error=True):
    config = {"ops": {"run_nexudus_command": {"config": {"rule": rule_name, "record_ids": list(ids)}}}}
    return project.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config=config, instance=project.instance, raise_on_error=raise_on_error
    )


def ledger_path(project) -> Path:
    return default_ledger_path(project.database)


def ledger(project) -> list[tuple]:
    """(rule, record id, outcome, dry run, call id) of every ledger row, by record id."""
    rows = CommandLedger(ledger_path(project)).rows()
    return sorted((row.rule, row.record_id, row.outcome, row.dry_run, row.call_id) for row in rows)


def sent_ids(project) -> list[int]:
    return [record_id for call in project.sim.commands_run for record_id in call["ids"]]


def failure(result) -> str:
    return result.failure_data_for_node("run_nexudus_command").error.message


def summary(result) -> dict:
    """The command op's output metadata."""
    [event] = [event for event in result.all_node_events if event.is_successful_output]
    return {key: value.value for key, value in event.step_output_data.metadata.items()}


def test_a_dry_run_sends_nothing_and_records_what_it_would_send(make_project):
    project = make_project(rules=[TOP_UP])
    project.run()
    low = project.insight_ids("low_minutes_access_tokens")
    data = tick(project, "nexudus_rule_top_up")
    [request] = data.run_requests
    assert sorted(request.run_config["ops"]["run_nexudus_command"]["config"]["record_ids"]) == sorted(low)
    assert request.run_key.startswith("top_up:")
    result = run_requested(project, data)
    assert result.dagster_run.tags["nexudus/live"] == "false"
    assert project.sim.commands_run == []
    rows = ledger(project)
    assert {row[1] for row in rows} == low and {row[2] for row in rows} == {"dry_run"} and all(row[3] for row in rows)
    # Dry runs change nothing upstream, so the next materialization proposes the same records.
    project.run()
    again = tick(project, "nexudus_rule_top_up", cursor=data.cursor)
    assert len(again.run_requests) == 1


def test_a_live_batch_command_goes_out_once_per_record_in_bounded_batches(make_project):
    project = make_project(rules=[TOP_UP], live=True)
    project.run()
    low = project.insight_ids("low_minutes_access_tokens")
    before = {i: project.sim.get(ACCESS_TOKENS, i)["MinutesLeft"] for i in low}
    data = tick(project, "nexudus_rule_top_up")
    result = run_requested(project, data)
    assert result.dagster_run.tags["nexudus/live"] == "true"
    calls = project.sim.commands_run
    assert sorted(sent_ids(project)) == sorted(low), "every record exactly once"
    assert all(len(call["ids"]) <= 10 and call["was_successful"] for call in calls)
    assert len(calls) == -(-len(low) // 10)
    assert all(project.sim.get(ACCESS_TOKENS, i)["MinutesLeft"] == before[i] + 120 for i in low)
    assert {row[2] for row in ledger(project)} == {"succeeded"}
    # The job itself refuses to repeat within the cooldown, whatever it is asked.
    run_command(project, "top_up", low)
    assert len(project.sim.commands_run) == len(calls)


def test_a_second_tick_within_the_cooldown_sends_nothing(make_project):
    project = make_project(rules=[EXTEND], live=True)
    project.run()
    first = tick(project, "nexudus_rule_extend")
    run_requested(project, first)
    sent = len(project.sim.commands_run)
    assert sent == len(project.insight_ids("low_minutes_access_tokens"))  # one call per record
    assert all(len(call["ids"]) == 1 for call in project.sim.commands_run)
    project.run()  # a new materialization; the extended tokens are still low on minutes
    second = tick(project, "nexudus_rule_extend", cursor=first.cursor)
    assert second.run_requests == []
    assert "actioned within the cooldown" in second.skip_message
    assert len(project.sim.commands_run) == sent
    # A repeated tick of the same materialization is harmless too.
    assert tick(project, "nexudus_rule_extend", cursor=second.cursor).run_requests == []


def test_a_renamed_rule_sends_nothing_again(make_project):
    project = make_project(rules=[EXTEND], live=True)
    project.run()
    run_requested(project, tick(project, "nexudus_rule_extend"))
    sent = sorted(sent_ids(project))
    assert sent

    renamed = make_project(rules=[EXTEND.model_copy(update={"name": "extend_low_tokens"})], live=True)
    renamed.run()
    data = tick(renamed, "nexudus_rule_extend_low_tokens")
    assert data.run_requests == [] and "actioned within the cooldown" in data.skip_message
    result = run_command(renamed, "extend_low_tokens", sent)  # even when asked directly
    assert summary(result)["left_alone_within_cooldown"] == len(sent)
    assert sorted(sent_ids(project)) == sent
    assert {row[0] for row in ledger(project)} == {"extend"}


def test_two_rules_with_the_same_command_and_parameters_act_once(make_project):
    twin = EXTEND.model_copy(update={"name": "extend_twin", "cooldown_hours": 1})
    project = make_project(rules=[EXTEND, twin], live=True)
    project.run()
    low = sorted(project.insight_ids("low_minutes_access_tokens"))
    first, second = tick(project, "nexudus_rule_extend"), tick(project, "nexudus_rule_extend_twin")
    assert len(first.run_requests) == len(second.run_requests) == 1  # both see the records before either runs
    run_requested(project, first)
    run_requested(project, second)
    assert sorted(sent_ids(project)) == low
    # Other parameters are another action: the twin with 14 days acts on the same records.
    longer = make_project(
        rules=[EXTEND.model_copy(update={"name": "extend_more", "parameters": {"Days": 14}})], live=True
    )
    run_command(longer, "extend_more", low)
    assert sorted(sent_ids(project)) == sorted(low + low)


def test_a_lost_warehouse_does_not_reset_the_ledger(make_project):
    project = make_project(rules=[EXTEND], live=True)
    project.run()
    first = tick(project, "nexudus_rule_extend")
    run_requested(project, first)
    sent = sorted(sent_ids(project))
    warehouse = Path(project.database)
    for path in warehouse.parent.iterdir():  # the warehouse and every file runs keep beside it, but the ledger
        if warehouse.stem in path.name and path != ledger_path(project):
            shutil.rmtree(path) if path.is_dir() else path.unlink()
    assert not warehouse.exists() and ledger_path(project).exists()

    project.run()  # a new warehouse from scratch
    data = tick(project, "nexudus_rule_extend", cursor=first.cursor)
    assert data.run_requests == [] and "actioned within the cooldown" in data.skip_message
    run_command(project, "extend", sent)
    assert sorted(sent_ids(project)) == sent


def test_a_missing_ledger_after_a_live_run_stops_write_back_loudly(make_project, dagster_instance):
    project = make_project(rules=[EXTEND], live=True, instance=dagster_instance)
    project.run()
    low = sorted(project.insight_ids("low_minutes_access_tokens"))
    run_command(project, "extend", low[:2])
    assert sorted(sent_ids(project)) == low[:2]
    path = ledger_path(project)
    path.unlink()

    # Live, and a dry run too: either would make a new, empty ledger.
    for attempt in (project, make_project(rules=[EXTEND], instance=dagster_instance)):
        refused = run_command(attempt, "extend", low, raise_on_error=False)
        assert not refused.success
        message = failure(refused)
        assert "Nothing was sent" in message and f"expected at {path}" in message
        assert "NEXUDUS_LEDGER_PATH" in message and "python -m nexudus_assets.writeback.ledger init" in message
        assert not path.exists(), "no new, empty ledger"
    assert sorted(sent_ids(project)) == low[:2]

    # Starting afresh is a deliberate act.
    subprocess.run(
        [sys.executable, "-m", "nexudus_assets.writeback.ledger", "init", str(path)], check=True, capture_output=True
    )
    run_command(project, "extend", low[:3])
    assert sorted(sent_ids(project)) == sorted(low[:2] + low[:3])


def test_the_first_run_of_an_instance_makes_the_ledger(make_project):
    project = make_project(rules=[EXTEND], live=True)
    project.run()
    assert not ledger_path(project).exists()
    ids = sorted(project.insight_ids("low_minutes_access_tokens"))[:2]
    run_command(project, "extend", ids)
    assert sorted(sent_ids(project)) == ids and [row[1] for row in ledger(project)] == ids


def test_ids_outside_the_insight_are_refused_and_recorded(make_project):
    project = make_project(rules=[TOP_UP], live=True)
    project.run()
    low = sorted(project.insight_ids("low_minutes_access_tokens"))
    outside = [*sorted(set(project.live_rows(ACCESS_TOKENS)) - set(low))[:2], 999_999_999]
    result = run_command(project, "top_up", low[:3] + outside)
    assert sorted(sent_ids(project)) == low[:3]
    assert summary(result)["refused_not_in_insight"] == 3
    outcomes = {row[1]: row[2] for row in ledger(project)}
    assert {i: outcomes[i] for i in outside} == dict.fromkeys(outside, "refused")
    assert {outcomes[i] for i in low[:3]} == {"succeeded"}


def test_live_commands_switched_on_for_one_run_only_are_refused(make_project):
    project = make_project(rules=[EXTEND])  # the code location loaded as a dry run
    project.run()
    ids = sorted(project.insight_ids("low_minutes_access_tokens"))[:2]
    config = {
        "ops": {"run_nexudus_command": {"config": {"rule": "extend", "record_ids": ids}}},
        "resources": {
            "nexudus_api": {
                "config": {
                    "base_url": project.nexudus_api.base_url,
                    "username": DEFAULT_USERNAME,
                    "password": DEFAULT_PASSWORD,
                    "commands_live": True,
                }
            }
        },
    }
    result = project.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config=config, instance=project.instance, raise_on_error=False
    )
    assert not result.success and "NEXUDUS_COMMANDS_LIVE" in failure(result)
    assert project.sim.commands_run == []


def test_a_two_record_command_goes_out_in_pairs_and_the_odd_one_waits(make_project):
    project = make_project(rules=[MERGE], live=True)
    project.run()
    low = sorted(project.insight_ids("low_minutes_access_tokens"))
    ids = low[:5]
    run_command(project, "merge", ids)
    assert [call["ids"] for call in project.sim.commands_run] == [ids[0:2], ids[2:4]]
    outcomes = {row[1]: row[2] for row in ledger(project)}
    assert outcomes[ids[4]] == "skipped"


def test_a_failed_command_is_recorded_and_retried_on_later_ticks_up_to_the_limit(make_project):
    project = make_project(rules=[EXTEND], live=True)
    project.run()
    ids = sorted(project.insight_ids("low_minutes_access_tokens"))[:3]
    project.sim.faults.failing_command_ids = {ids[0]}
    first = run_command(project, "extend", ids, raise_on_error=False)
    assert not first.success
    assert "1 record(s) failed" in failure(first)
    outcomes = {(row[1], row[2]) for row in ledger(project)}
    assert outcomes == {(ids[0], "failed"), (ids[1], "succeeded"), (ids[2], "succeeded")}

    run_command(project, "extend", ids, raise_on_error=False)  # a later tick: only the failed one again
    run_command(project, "extend", ids, raise_on_error=False)  # out of attempts (max_attempts=2)
    attempts = [call["ids"] for call in project.sim.commands_run]
    assert attempts.count([ids[0]]) == 2
    assert attempts.count([ids[1]]) == 1 and attempts.count([ids[2]]) == 1


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        (
            CommandRule(name="broken", asset="low_minutes_access_tokens", command="ACCESSTOKEN_TELEPORT"),
            "not in the catalogue",
        ),
        (
            CommandRule(name="broken", asset="low_minutes_access_tokens", command="ACCESSTOKEN_ADD_MINUTES"),
            "missing parameter",
        ),
        (
            CommandRule(
                name="broken",
                asset="low_minutes_access_tokens",
                command="ACCESSTOKEN_ADD_MINUTES",
                parameters={"Minutes": "lots"},
            ),
            "must be a Int32",
        ),
        (
            CommandRule(
                name="broken",
                asset="low_minutes_access_tokens",
                command="ACCESSTOKEN_ADD_MINUTES",
                parameters={"Minutes": -99999999999},
            ),
            "a whole number from -2147483648 to 2147483647",
        ),
    ],
)
def test_an_invalid_rule_sends_nothing_and_explains(make_project, broken, message):
    project = make_project(rules=[broken], live=True)
    project.run("nexudus_full_refresh")  # also stores the command catalogue the sensor checks against
    data = tick(project, "nexudus_rule_broken")
    assert data.run_requests == [] and message in data.skip_message
    failed = run_command(
        project, "broken", sorted(project.insight_ids("low_minutes_access_tokens")), raise_on_error=False
    )
    assert not failed.success
    error = failure(failed)
    assert "Nothing was sent" in error and message in error
    assert project.sim.commands_run == []
    assert ledger(project) == []


def test_under_flaky_answers_every_record_is_actioned_at_most_once_per_cooldown(make_project):
    """Many ticks against a server that fails, drops and garbles answers to commands.

    A garbled answer comes after the command was applied: only the ledger's `uncertain`
    stops a resend. The simulator counts what it really applied.
    """
    project = make_project(rules=[EXTEND], live=True)
    sim = project.sim
    project.run()
    cursor = None
    sim.faults.error_rate, sim.faults.drop_rate, sim.faults.malformed_rate = 0.15, 0.1, 0.1
    for _ in range(4):
        sim.faults.error_rate, saved = 0.0, sim.faults.error_rate  # the sync itself is not under test here
        project.run()
        sim.faults.error_rate = saved
        data = tick(project, "nexudus_rule_extend", cursor=cursor)
        cursor = data.cursor
        if data.run_requests:
            run_requested(project, data, raise_on_error=False)
    sim.faults.error_rate = sim.faults.drop_rate = sim.faults.malformed_rate = 0.0
    applied = [call["ids"][0] for call in sim.commands_run if call["was_successful"]]
    assert applied, "no command got through: the test proves nothing"
    assert len(applied) == len(set(applied)), "a record was actioned twice within its cooldown"
    outcomes = {row[2] for row in ledger(project)}
    assert {"succeeded"} <= outcomes and outcomes <= {"succeeded", "failed", "uncertain"}


# -- write-back that cannot run is loud --------------------------------------------------------


@pytest.fixture
def webhook():
    receiver = Webhook()
    yield receiver
    receiver.close()


def test_a_broken_ledger_or_warehouse_alerts_once_and_once_more_when_it_recovers(
    make_project, dagster_instance, webhook
):
    project = make_project(rules=[EXTEND], live=True, webhook=webhook.url, instance=dagster_instance)
    project.run()
    ids = sorted(project.insight_ids("low_minutes_access_tokens"))[:2]
    run_command(project, "extend", ids)  # a live run: from now on a ledger is expected
    path = ledger_path(project)
    saved = path.read_bytes()
    path.write_bytes(b"this is not a ledger" * 100)
    project.run()

    corrupt = tick(project, "nexudus_rule_extend")
    assert corrupt.run_requests == [] and "cannot be read" in corrupt.skip_message
    again = tick(project, "nexudus_rule_extend", cursor=corrupt.cursor)
    assert again.run_requests == []
    [alert] = webhook.texts()
    assert "rule extend cannot run" in alert and str(path) in alert
    path.unlink()  # gone after a live run: still no ledger to trust, and no second alert
    missing = tick(project, "nexudus_rule_extend", cursor=again.cursor)
    assert "the command ledger is missing" in missing.skip_message and len(webhook.texts()) == 1

    path.write_bytes(saved)
    recovered = tick(project, "nexudus_rule_extend", cursor=missing.cursor)
    assert len(recovered.run_requests) == 1
    assert "rule extend runs again" in webhook.texts()[-1] and len(webhook.texts()) == 2

    project.run()
    # Readers fall back to the working file when the published one will not open: break both.
    files = WarehouseFiles(Path(project.database))
    saved_files = {path: path.read_bytes() for path in (files.published, files.working)}
    for path in saved_files:
        path.write_bytes(b"this is not a warehouse" * 1000)
    unreadable = tick(project, "nexudus_rule_extend", cursor=recovered.cursor)
    assert unreadable.run_requests == [] and "the warehouse cannot be read" in unreadable.skip_message
    tick(project, "nexudus_rule_extend", cursor=unreadable.cursor)
    assert len(webhook.texts()) == 3 and "cannot run: the warehouse cannot be read" in webhook.texts()[-1]
    for path, content in saved_files.items():
        path.write_bytes(content)
    tick(project, "nexudus_rule_extend", cursor=unreadable.cursor)
    assert len(webhook.texts()) == 4 and "runs again" in webhook.texts()[-1]
    # Plain text, as every alert: any incoming-webhook receiver shows it as it is.
    assert not any(re.search(r":[a-z_]+:", text) for text in webhook.texts())


def test_a_rule_the_catalogue_refuses_alerts_once_and_its_recovery(make_project, webhook):
    project = make_project(rules=[TOP_UP], live=True, webhook=webhook.url)
    project.sim.command_quirks.unlisted = frozenset({"ACCESSTOKEN_ADD_MINUTES"})
    project.run("nexudus_full_refresh")
    first = tick(project, "nexudus_rule_top_up")
    project.run()
    second = tick(project, "nexudus_rule_top_up", cursor=first.cursor)
    assert first.run_requests == second.run_requests == []
    [alert] = webhook.texts()
    assert "rule top_up cannot run" in alert and "not in the catalogue" in alert
    assert project.sim.commands_run == []
    # The command is listed again; the nightly refresh stores it, and the rule runs again.
    project.sim.command_quirks.unlisted = frozenset()
    project.run("nexudus_full_refresh")
    third = tick(project, "nexudus_rule_top_up", cursor=second.cursor)
    assert len(third.run_requests) == 1
    assert len(webhook.texts()) == 2 and "rule top_up runs again" in webhook.texts()[-1]


# -- what live commands do, taught to the simulator ------------------------------------------


@pytest.mark.parametrize("style", [style for style in ANSWER_STYLES if style != "documented"])
def test_a_command_answer_that_does_not_say_is_unconfirmed_never_a_failure(running, style):
    sim = running.sim
    ids = [record["Id"] for record in sim.records(ACCESS_TOKENS)[:2]]
    sim.command_quirks.answer = style
    parameters = [{"Name": "Minutes", "Value": 5}]
    with running.client() as client:
        applied = client.run_command(ACCESS_TOKENS, "ACCESSTOKEN_ADD_MINUTES", ids, parameters)
        sim.faults.failing_command_ids = {ids[0]}
        refused = client.run_command(ACCESS_TOKENS, "ACCESSTOKEN_ADD_MINUTES", ids, parameters)
    assert [call["was_successful"] for call in sim.commands_run] == [True, False]
    # Neither says anything usable: the first is not taken for a failure, the second not for a success.
    assert applied.confirmed is refused.confirmed is False
    assert "may or may not have been applied" in applied.message


def test_the_documented_answer_confirms(running):
    token = running.sim.records(ACCESS_TOKENS)[0]["Id"]
    with running.client() as client:
        answer = client.run_command(
            ACCESS_TOKENS, "ACCESSTOKEN_ADD_MINUTES", [token], [{"Name": "Minutes", "Value": 5}]
        )
    assert answer.confirmed and "5 minutes were added" in answer.message


def test_a_slow_command_has_the_write_deadline_not_the_request_deadline(running):
    sim = running.sim
    ids = [record["Id"] for record in sim.records(ACCESS_TOKENS)[:3]]
    sim.command_quirks.seconds_per_id = 0.4  # 1.2 s for the call
    parameters = [{"Name": "Minutes", "Value": 5}]
    with running.client(timeout=0.5, request_deadline=0.5, write_deadline=30) as client:
        assert client.run_command(ACCESS_TOKENS, "ACCESSTOKEN_ADD_MINUTES", ids, parameters).confirmed
    with running.client(write_deadline=0.5) as client, pytest.raises(UncertainOutcomeError):
        client.run_command(ACCESS_TOKENS, "ACCESSTOKEN_ADD_MINUTES", ids, parameters)
    for _ in range(50):  # the server is still working on the call the client gave up on
        if len(sim.commands_run) == 2:
            break
        time.sleep(0.1)
    assert len(sim.commands_run) == 2, "the call cut short by the deadline was not sent again"


def test_a_batch_failing_for_some_ids_is_uncertain_for_all_and_not_sent_again(make_project):
    project = make_project(rules=[TOP_UP], live=True)
    project.run()
    ids = sorted(project.insight_ids("low_minutes_access_tokens"))[:3]
    before = {i: project.sim.get(ACCESS_TOKENS, i)["MinutesLeft"] for i in ids}
    project.sim.command_quirks.partial_failure = True
    project.sim.faults.failing_command_ids = {ids[1]}
    first = run_command(project, "top_up", ids, raise_on_error=False)
    assert not first.success and "3 may or may not have been changed" in failure(first)
    run_command(project, "top_up", ids, raise_on_error=False)
    [call] = project.sim.commands_run
    assert call["ids"] == ids and not call["was_successful"]
    added = {i: project.sim.get(ACCESS_TOKENS, i)["MinutesLeft"] - before[i] for i in ids}
    assert added == {ids[0]: 120, ids[1]: 0, ids[2]: 120}, "the others were acted on, once"
    assert {row[2] for row in ledger(project)} == {"uncertain"}


def test_an_unlisted_command_runs_only_when_the_rule_declares_it(make_project):
    project = make_project(rules=[TOP_UP], live=True)
    project.sim.command_quirks.unlisted = frozenset({"ACCESSTOKEN_ADD_MINUTES"})
    project.run()
    ids = sorted(project.insight_ids("low_minutes_access_tokens"))[:2]
    refused = run_command(project, "top_up", ids, raise_on_error=False)
    assert "not in the catalogue" in failure(refused) and "unlisted: true" in failure(refused)
    declared = TOP_UP.model_copy(update={"unlisted": True, "parameter_types": {"Minutes": "Int32"}})
    run_command(make_project(rules=[declared], live=True), "top_up", ids)
    [call] = project.sim.commands_run
    assert call["ids"] == ids and call["parameters"] == [{"Name": "Minutes", "Value": 120}]


def test_a_parameter_of_type_null_is_checked_by_the_declared_type_and_sent_without_one(make_project):
    project = make_project(rules=[TOP_UP], live=True)
    project.sim.command_quirks.untyped_parameters = True
    project.run("nexudus_full_refresh")  # stores the catalogue with `Type: null`
    refused = tick(project, "nexudus_rule_top_up")
    assert refused.run_requests == [] and "has type None in the catalogue" in refused.skip_message
    declared = make_project(rules=[TOP_UP.model_copy(update={"parameter_types": {"Minutes": "Int32"}})], live=True)
    run_requested(declared, tick(declared, "nexudus_rule_top_up"))
    calls = project.sim.commands_run
    assert calls and all(call["parameters"] == [{"Name": "Minutes", "Value": 120}] for call in calls)


def test_the_command_quirks_are_switched_over_http_too(running):
    admin = f"{running.base_url.removesuffix('/api')}/_simulator/command-quirks"
    assert httpx.get(admin).json()["answer"] == "documented"
    changed = httpx.post(admin, json={"answer": "empty", "unlisted": ["ACCESSTOKEN_MERGE"], "seconds_per_id": 0.1})
    assert changed.json()["unlisted"] == ["ACCESSTOKEN_MERGE"] and running.sim.command_quirks.answer == "empty"
    assert httpx.post(admin, json={"answer": "sometimes", "seconds_per_id": 0}).status_code == 400
    assert running.sim.command_quirks.answer == "empty" and running.sim.command_quirks.seconds_per_id == 0.1
    with running.client() as client:
        assert "ACCESSTOKEN_MERGE" not in {command.key for command in client.commands(ACCESS_TOKENS)}


def test_the_commented_update_example_is_a_valid_rule(tmp_path):
    from nexudus_assets.writeback.rules import EXAMPLE_RULES

    text = EXAMPLE_RULES.read_text()
    example = text[text.index("  # - name: mark_low_tokens") :]
    path = tmp_path / "rules.yaml"
    path.write_text("rules:\n" + "\n".join(line.replace("  # ", "  ", 1) for line in example.splitlines()))
    [update] = load_rules(path, ACTIONABLE_ASSETS)
    assert update.command is None and update.update is not None and set(update.update) == {"Description", "ValidTo"}
    # Its fields and their values fit the entity: the definitions load with it.
    assert sensor_for(update).name == "nexudus_rule_mark_low_tokens"


def sensor_for(candidate: CommandRule) -> dg.SensorDefinition:
    """The rule's sensor, built as the definitions build it: RuleError when the rule does not fit."""
    return build_command_sensor(candidate, commands_live=False)


def test_an_update_rule_with_a_field_nexudus_does_not_take_fails_the_definitions():
    for update, message in [
        ({"MinutesLeft": 5}, "has no writable field\\(s\\) MinutesLeft"),
        ({"UserLimit": "many"}, "field 'UserLimit' cannot be 'many'"),
        (
            {"Description": FromColumn(column="nowhere")},
            "takes column 'nowhere', which low_minutes_access_tokens lacks",
        ),
    ]:
        rule = CommandRule(name="u", asset="low_minutes_access_tokens", update=update)
        with pytest.raises(RuleError, match=message):
            sensor_for(rule)
    pinned = TOP_UP.model_copy(update={"insight_config": {"minimum": 5}})
    with pytest.raises(RuleError, match="insight_config names minimum, which low_minutes_access_tokens does not take"):
        sensor_for(pinned)
