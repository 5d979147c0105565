"""Going live takes two decisions: NEXUDUS_COMMANDS_LIVE=true for the code location, and `live: true`
on the rule. Rule sensors and the command job on persistent instances, the simulator over HTTP."""

import dagster as dg
import pytest

from nexudus_assets.definitions import ACTIONABLE_ASSETS
from nexudus_assets.jobs import DRY_RUN_REASON_TAG
from nexudus_assets.resources import CommandLedgerResource
from nexudus_assets.writeback.ledger import CommandLedger, default_ledger_path
from nexudus_assets.writeback.rules import EXAMPLE_RULES, CommandRule, load_rules
from nexudus_assets_tests.test_writeback import TOP_UP, summary
from nexudus_assets_tests.utils import Project

#: A rule as the shipped examples are: it does not say `live: true`.
NOT_LIVE = TOP_UP.model_copy(update={"live": False})
RUN_COMMAND = "/api/spaces/accesstokens/runcommand"


@pytest.fixture
def project_for(start_simulator, tmp_path, dagster_instance):
    """A project on one simulator and the persistent instance, with the variable true and the rules given."""
    running = start_simulator(seed=21, tokens=200, contracts=5, passes=5)

    def make(rule: CommandRule) -> Project:
        return Project(running, tmp_path / "nexudus.duckdb", rules=[rule], live=True, instance=dagster_instance)

    return make


def tick_and_run(project: Project, rule: CommandRule) -> tuple[dg.RunRequest, dg.ExecuteInProcessResult]:
    sensor = project.defs.resolve_sensor_def(f"nexudus_rule_{rule.name}")
    with dg.build_sensor_context(
        instance=project.instance,
        resources={"warehouse": project.warehouse, "alerts": project.alerts, "ledger": CommandLedgerResource()},
    ) as context:
        [request] = sensor.evaluate_tick(context).run_requests
    result = project.defs.resolve_job_def("nexudus_command").execute_in_process(
        run_config=request.run_config, instance=project.instance, tags=request.tags
    )
    return request, result


def commands_sent(project: Project) -> list[tuple]:
    """Every request the simulator got for the entity's command endpoint."""
    return [entry for entry in project.sim.request_log if entry[1] == RUN_COMMAND]


def test_the_variable_alone_sends_nothing_and_says_why(project_for):
    project = project_for(NOT_LIVE)
    project.run()
    low = project.insight_ids("low_minutes_access_tokens")
    assert low
    before = len(project.sim.request_log)
    request, result = tick_and_run(project, NOT_LIVE)

    assert result.dagster_run.tags["nexudus/live"] == "true"  # the code location is live ...
    reason = "rule 'top_up' does not say `live: true`"  # ... the rule is not
    assert request.tags[DRY_RUN_REASON_TAG] == reason
    assert summary(result)["dry_run"] is True and summary(result)["dry_run_reason"] == reason
    logged = [event.message for event in project.instance.all_logs(result.run_id)]
    assert any(reason in message and "DRY RUN" in message for message in logged)
    assert commands_sent(project) == [] and project.sim.commands_run == []
    # Only reads went out for it (the catalogue), no write of any kind.
    assert {method for method, *_ in project.sim.request_log[before:]} <= {"GET"}
    rows = CommandLedger(default_ledger_path(project.database)).rows()
    assert {row.record_id for row in rows} == low
    assert {(row.outcome, row.dry_run) for row in rows} == {("dry_run", True)}


def test_the_variable_and_live_true_send_each_command_once(project_for):
    rule = TOP_UP
    assert rule.live
    project = project_for(rule)
    project.run()
    low = project.insight_ids("low_minutes_access_tokens")
    request, result = tick_and_run(project, rule)

    assert DRY_RUN_REASON_TAG not in request.tags
    assert summary(result)["dry_run"] is False and "dry_run_reason" not in summary(result)
    calls = project.sim.commands_run
    assert sorted(i for call in calls for i in call["ids"]) == sorted(low), "each record once"
    assert len(commands_sent(project)) == len(calls) == -(-len(low) // rule.batch_size)
    rows = CommandLedger(default_ledger_path(project.database)).rows()
    assert {(row.outcome, row.dry_run) for row in rows} == {("succeeded", False)}

    # The next materialization and tick within the cooldown send nothing more.
    project.run()
    sensor = project.defs.resolve_sensor_def("nexudus_rule_top_up")
    with dg.build_sensor_context(
        instance=project.instance,
        resources={"warehouse": project.warehouse, "alerts": project.alerts, "ledger": CommandLedgerResource()},
    ) as context:
        again = sensor.evaluate_tick(context)
    assert again.run_requests == []
    assert len(commands_sent(project)) == len(calls)


def test_the_shipped_examples_stay_dry_whatever_the_variable():
    rules = load_rules(EXAMPLE_RULES, ACTIONABLE_ASSETS)
    assert rules and not any(rule.live for rule in rules)
    assert all(rule.dry_run_reason(True) == f"rule {rule.name!r} does not say `live: true`" for rule in rules)
    assert "live: false" in EXAMPLE_RULES.read_text()


def test_live_true_is_read_from_the_rules_file(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text(
        "rules:\n"
        "  - name: top_up\n"
        "    asset: low_minutes_access_tokens\n"
        "    command: ACCESSTOKEN_ADD_MINUTES\n"
        "    parameters: {Minutes: 120}\n"
        "    live: true\n"
    )
    [rule] = load_rules(path, ACTIONABLE_ASSETS)
    assert rule.live and rule.dry_run_reason(True) is None
    assert rule.dry_run_reason(False) == "NEXUDUS_COMMANDS_LIVE is not true"
