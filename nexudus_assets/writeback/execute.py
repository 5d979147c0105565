"""Running one rule on a set of records, a command or a PUT per record: validated, claimed in the
ledger, never twice."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from nexudus_assets.nexudus import (
    ActionResult,
    CommandDescription,
    Entity,
    NexudusClient,
    NexudusError,
    RequestRefusedError,
    StaleRecordError,
)
from nexudus_assets.nexudus.models import valid_id
from nexudus_assets.writeback.ledger import CommandLedger, CooldownKey, Outcome
from nexudus_assets.writeback.plan import (
    FieldUpdate,
    changes_for,
    check_rule,
    check_update,
    differing_fields,
    plan_calls,
)
from nexudus_assets.writeback.rules import UPDATE_ACTION, CommandRule, RuleError


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
    #: May or may not have been changed: an error after sending, or a call failed for only some.
    uncertain: list[int] = field(default_factory=list)
    #: Answered 2xx without saying whether it worked (recorded `uncertain`): normal for some live commands.
    unconfirmed: list[int] = field(default_factory=list)
    #: Update rules: changed in Nexudus since the insight saw them, so left alone (recorded `skipped`).
    stale: list[int] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)

    def add(self, outcomes: Mapping[int, Outcome], *, unconfirmed: bool = False) -> None:
        for record_id, outcome in outcomes.items():
            if unconfirmed:
                self.unconfirmed.append(record_id)
            elif outcome in ("succeeded", "failed", "uncertain"):
                {"succeeded": self.succeeded, "failed": self.failed, "uncertain": self.uncertain}[outcome].append(
                    record_id
                )


def cooldown_key(rule: CommandRule, entity: Entity) -> CooldownKey:
    """What a command rule does, as the ledger's cooldown compares it."""
    return CooldownKey.of(entity.name, rule.action, rule.parameters)


def update_key(entity: Entity, changes: Mapping[str, Any]) -> CooldownKey:
    """What an update does to one record: the fields and the values it sets."""
    return CooldownKey.of(entity.name, UPDATE_ACTION, changes)


def _failure_outcomes(error: NexudusError, ids: Sequence[int]) -> dict[int, Outcome]:
    """Each record's outcome after the client raised, read from the error's `may_have_been_applied`.

    A `WasSuccessful: false` over several Ids may have acted on some: all are uncertain unless
    the answer names the failed ones (its `Errors` whose `AttemptedValue` is an Id sent).
    Otherwise a call that cannot have been applied failed, and a later tick may retry it; one
    that may have been applied is uncertain, and never sent again.
    """
    if isinstance(error, RequestRefusedError) and isinstance(error.answer, ActionResult) and len(ids) > 1:
        named = {valid_id(problem.attempted_value) for problem in error.errors} & set(ids)
        if not named:
            return dict.fromkeys(ids, "uncertain")
        return {record_id: "failed" if record_id in named else "succeeded" for record_id in ids}
    return dict.fromkeys(ids, "uncertain" if error.may_have_been_applied else "failed")


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
        outcomes: dict[int, Outcome]
        try:
            answer = client.run_command(entity, command.key, claim.claimed, parameters)
        except NexudusError as error:
            outcomes, message, unconfirmed = _failure_outcomes(error, claim.claimed), str(error), False
        else:
            outcome: Outcome = "succeeded" if answer.confirmed else "uncertain"
            outcomes, message, unconfirmed = dict.fromkeys(claim.claimed, outcome), answer.message, not answer.confirmed
        ledger.finish_each(claim.call_id, outcomes, message, clock())
        report.calls += 1
        report.add(outcomes, unconfirmed=unconfirmed)
        if set(outcomes.values()) != {"succeeded"}:
            report.messages.append(f"{claim.claimed}: {', '.join(sorted(set(outcomes.values())))}: {message}")
    report.blocked.sort()
    return report


@dataclass(frozen=True)
class SeenRecord:
    """A record as the rule's insight lists it: its columns, and its `UpdatedOn` as the warehouse holds it."""

    columns: Mapping[str, Any]
    updated_on: dt.datetime | None


def run_update(
    client: NexudusClient,
    ledger: CommandLedger,
    rule: CommandRule,
    entity: Entity,
    record_ids: Sequence[int],
    *,
    seen: Mapping[int, SeenRecord],
    columns: Collection[str],
    live: bool,
    run_id: str,
    clock: Callable[[], dt.datetime] = _now,
) -> CommandReport:
    """Set the rule's fields on each record by PUT, one claimed call per record.

    `seen`: the records the rule's insight lists now (`columns`: its columns); any other id asked for is refused. Each
    record is read first and left alone (`skipped`) when its `UpdatedOn` is not the one the
    warehouse holds; otherwise merged, PUT whole, and read back: `succeeded` only when every
    field reads as sent.
    """
    fields = check_update(rule, entity, columns)
    cooldown = dt.timedelta(hours=rule.cooldown_hours)
    report = CommandReport(rule=rule.name, command_key=UPDATE_ACTION, dry_run=not live)
    requested = list(dict.fromkeys(record_ids))
    report.refused = sorted(i for i in requested if i not in seen)
    changes: dict[int, dict[str, Any]] = {}
    for record_id in requested:
        if record_id in seen:
            try:
                changes[record_id] = changes_for(rule, entity, fields, record_id, seen[record_id].columns)
            except RuleError as bad:
                report.refused.append(record_id)
                report.messages.append(str(bad))
    refused_key = update_key(entity, {})
    if report.refused:
        ledger.record(
            refused_key,
            [sorted(report.refused)],
            rule=rule.name,
            run_id=run_id,
            dry_run=not live,
            outcome="refused",
            message=f"not in {rule.asset} at its latest materialization, or a value that does not fit",
            now=clock(),
        )
    keys = {record_id: update_key(entity, values) for record_id, values in changes.items()}
    blocked = ledger.blocked_each(keys, cooldown=cooldown, max_attempts=rule.max_attempts, now=clock())
    report.blocked = sorted(blocked)
    for record_id, values in changes.items():
        if record_id in blocked:
            continue
        if not live:
            ledger.record(
                keys[record_id],
                [[record_id]],
                rule=rule.name,
                run_id=run_id,
                dry_run=True,
                outcome="dry_run",
                message=f"dry run: would PUT {values}",
                now=clock(),
            )
            report.calls += 1
            continue
        claim = ledger.claim(
            keys[record_id],
            [record_id],
            rule=rule.name,
            run_id=run_id,
            cooldown=cooldown,
            max_attempts=rule.max_attempts,
            min_records=1,
            now=clock(),
        )
        if claim.call_id is None:
            report.blocked.extend(claim.blocked)
            continue
        outcome, message = _put_and_verify(client, entity, record_id, values, fields, seen[record_id].updated_on)
        ledger.finish(claim.call_id, outcome, message, clock())
        report.calls += 1
        if outcome == "skipped":
            report.stale.append(record_id)
        else:
            report.add({record_id: outcome})
        if outcome != "succeeded":
            report.messages.append(f"{entity.name} {record_id}: {outcome}: {message}")
    report.refused.sort()
    report.blocked.sort()
    return report


def _put_and_verify(
    client: NexudusClient,
    entity: Entity,
    record_id: int,
    values: Mapping[str, Any],
    fields: Sequence[FieldUpdate],
    updated_on: dt.datetime | None,
) -> tuple[Outcome, str]:
    try:
        answer = client.update(entity, record_id, values, unchanged_since=updated_on)
    except StaleRecordError as stale:
        return "skipped", f"{stale}; the next materialization of the insight decides again"
    except NexudusError as error:
        return _failure_outcomes(error, [record_id])[record_id], str(error)
    try:
        differing = differing_fields(fields, values, client.get(entity, record_id).model_dump(by_alias=True))
    except NexudusError as error:
        return "uncertain", f"{answer.message}; reading it back failed: {error}"
    if differing:
        return "uncertain", f"{answer.message}; read back, {', '.join(differing)} differ from what was sent"
    return "succeeded", answer.message
