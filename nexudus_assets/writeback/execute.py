"""Running one rule's command on a set of records: validated, recorded, never twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from nexudus_assets.nexudus import (
    AuthenticationError,
    Entity,
    NexudusClient,
    NexudusError,
    NotFoundError,
    ThrottledError,
    TransportError,
    UncertainOutcomeError,
    ValidationError,
)
from nexudus_assets.warehouse import ensure_schema
from nexudus_assets.warehouse.ledger import Outcome, blocked_ids, finish_call, record_calls
from nexudus_assets.warehouse.load import Connect
from nexudus_assets.writeback.plan import check_rule, plan_calls
from nexudus_assets.writeback.rules import CommandRule


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class CommandReport:
    rule: str
    command_key: str
    dry_run: bool
    #: Asked for, but actioned within the cooldown or out of attempts: left alone.
    blocked: list[int] = field(default_factory=list)
    #: No call could take them (the odd one out of a two-record command).
    left_over: list[int] = field(default_factory=list)
    calls: int = 0
    succeeded: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def _outcome_of(error: NexudusError) -> Outcome:
    # Refused by the server, or never sent: nothing happened, so a later tick may retry.
    if isinstance(error, ValidationError | AuthenticationError | NotFoundError | ThrottledError):
        return "failed"
    if isinstance(error, TransportError) and not isinstance(error, UncertainOutcomeError):
        return "failed"
    # An answer that says nothing reliable (5xx, lost, unreadable): it may have been applied.
    return "uncertain"


def run_rule(
    client: NexudusClient,
    connect: Connect,
    rule: CommandRule,
    entity: Entity,
    record_ids: Sequence[int],
    *,
    live: bool,
    run_id: str,
    clock: Callable[[], dt.datetime] = _now,
) -> CommandReport:
    """Check the rule against the live catalogue, then send (or, dry, record) one call per batch.

    Raises RuleError before anything is sent or recorded when the rule does not fit the catalogue.
    """
    command, parameters = check_rule(rule, client.commands(entity))
    with connect() as conn:
        ensure_schema(conn)
        blocked = blocked_ids(
            conn, rule.name, cooldown=dt.timedelta(hours=rule.cooldown_hours), max_attempts=rule.max_attempts,
            now=clock(),
        )
    report = CommandReport(rule=rule.name, command_key=command.key, dry_run=not live)
    report.blocked = sorted(set(record_ids) & blocked)
    calls = plan_calls(command, [i for i in record_ids if i not in blocked], rule.batch_size)
    report.left_over = calls.left_over
    common = {
        "rule": rule.name, "entity": entity.name, "command_key": command.key, "parameters": parameters,
        "run_id": run_id,
    }
    with connect() as conn:
        if calls.left_over:
            record_calls(conn, **common, calls=[calls.left_over], dry_run=not live, outcome="skipped",
                         message=f"{command.key} takes records in pairs; no partner left", now=clock())
        if not live:
            record_calls(conn, **common, calls=calls.batches, dry_run=True, outcome="dry_run",
                         message=f"dry run: would send {command.key} with {parameters}", now=clock())
            report.calls = len(calls.batches)
            return report

    for batch in calls.batches:
        with connect() as conn:
            # Committed before sending: a run killed mid-call leaves `pending`, which blocks a resend.
            [call_id] = record_calls(conn, **common, calls=[batch], dry_run=False, outcome="pending",
                                     message="sending", now=clock())
        outcome: Outcome
        try:
            result = client.run_command(entity, command.key, batch, parameters)
            outcome, message = "succeeded", result.message or "done"
        except NexudusError as error:
            outcome, message = _outcome_of(error), str(error)
        with connect() as conn:
            finish_call(conn, call_id, outcome, message, clock())
        report.calls += 1
        {"succeeded": report.succeeded, "failed": report.failed, "uncertain": report.uncertain}[outcome].extend(batch)
        if outcome != "succeeded":
            report.messages.append(f"{batch}: {outcome}: {message}")
    return report
