"""Running one rule's command on a set of records: validated, claimed in the ledger, never twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

from nexudus_assets.nexudus import (
    AuthenticationError,
    CommandDescription,
    Entity,
    NexudusClient,
    NexudusError,
    NotFoundError,
    RequestRefusedError,
    ThrottledError,
    TransportError,
    UncertainOutcomeError,
)
from nexudus_assets.writeback.ledger import CommandLedger, CooldownKey, Outcome
from nexudus_assets.writeback.plan import check_rule, plan_calls
from nexudus_assets.writeback.rules import CommandRule


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(tzinfo=None)


@dataclass
class CommandReport:
    rule: str
    command_key: str
    dry_run: bool
    #: Asked for, but not in the rule's insight: never sent, recorded as `refused`.
    refused: list[int] = field(default_factory=list)
    #: Asked for, but actioned within the cooldown or out of attempts: left alone.
    blocked: list[int] = field(default_factory=list)
    #: No call could take them (the odd one out of a two-record command), recorded as `skipped`.
    left_over: list[int] = field(default_factory=list)
    calls: int = 0
    succeeded: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    uncertain: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)


def cooldown_key(rule: CommandRule, entity: Entity) -> CooldownKey:
    """What the rule does, as the ledger's cooldown compares it."""
    return CooldownKey.of(entity.name, rule.command, rule.parameters)


def _outcome_of(error: NexudusError) -> Outcome:
    # Refused by the server, or never sent: nothing happened, so a later tick may retry.
    if isinstance(error, RequestRefusedError | AuthenticationError | NotFoundError | ThrottledError):
        return "failed"
    if isinstance(error, TransportError) and not isinstance(error, UncertainOutcomeError):
        return "failed"
    # An answer that says nothing reliable (5xx, lost, unreadable): it may have been applied.
    return "uncertain"


def _min_records(command: CommandDescription) -> int:
    return 2 if command.applies_only_to_two_entities or command.applies_only_to_multiple_entities else 1


def run_rule(
    client: NexudusClient,
    ledger: CommandLedger,
    rule: CommandRule,
    entity: Entity,
    record_ids: Sequence[int],
    *,
    insight_ids: Collection[int],
    live: bool,
    run_id: str,
    clock: Callable[[], dt.datetime] = _now,
) -> CommandReport:
    """Check the rule against the live catalogue, then send (or, dry, record) one call per batch.

    `insight_ids`: the records the rule's insight lists now; any other id asked for is refused.
    Each live call is claimed in the ledger first, so another run at the same time, or a record
    actioned meanwhile, is never sent twice. Raises RuleError before anything is sent or
    recorded when the rule does not fit the catalogue.
    """
    command, parameters = check_rule(rule, client.commands(entity))
    key = cooldown_key(rule, entity)
    cooldown = dt.timedelta(hours=rule.cooldown_hours)
    report = CommandReport(rule=rule.name, command_key=command.key, dry_run=not live)

    def record(calls: Sequence[Sequence[int]], outcome: Outcome, message: str) -> None:
        ledger.record(
            key, calls, rule=rule.name, run_id=run_id, dry_run=not live, outcome=outcome, message=message, now=clock()
        )

    requested = list(dict.fromkeys(record_ids))
    report.refused = sorted(i for i in requested if i not in insight_ids)
    if report.refused:
        record([report.refused], "refused", f"not in {rule.asset} at its latest materialization")

    # A snapshot to plan the calls with; the claim of each call decides.
    blocked = ledger.blocked_ids(key, cooldown=cooldown, max_attempts=rule.max_attempts, now=clock())
    wanted = [i for i in requested if i in insight_ids]
    report.blocked = sorted(set(wanted) & blocked)
    calls = plan_calls(command, [i for i in wanted if i not in blocked], rule.batch_size)
    report.left_over = calls.left_over
    if calls.left_over:
        record([calls.left_over], "skipped", f"{command.key} takes records in pairs; no partner left")
    if not live:
        record(calls.batches, "dry_run", f"dry run: would send {command.key} with {parameters}")
        report.calls = len(calls.batches)
        return report

    for batch in calls.batches:
        claim = ledger.claim(
            key,
            batch,
            rule=rule.name,
            run_id=run_id,
            cooldown=cooldown,
            max_attempts=rule.max_attempts,
            min_records=_min_records(command),
            now=clock(),
        )
        report.blocked.extend(claim.blocked)
        report.left_over.extend(claim.skipped)
        if claim.call_id is None:
            continue
        outcome: Outcome
        try:
            result = client.run_command(entity, command.key, claim.claimed, parameters)
            outcome, message = "succeeded", result.message or "done"
        except NexudusError as error:
            outcome, message = _outcome_of(error), str(error)
        ledger.finish(claim.call_id, outcome, message, clock())
        report.calls += 1
        {"succeeded": report.succeeded, "failed": report.failed, "uncertain": report.uncertain}[outcome].extend(
            claim.claimed
        )
        if outcome != "succeeded":
            report.messages.append(f"{claim.claimed}: {outcome}: {message}")
    report.blocked.sort()
    return report
