"""The commands each entity offers (`GET <entity>/commands`) and what running them does.

The real command keys are not published, so these are invented but shaped like the
documented catalogue. Each entity has one command per cardinality: any number of records
(with a parameter), exactly one record, exactly two records.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, fields
from typing import Any, Literal

from nexudus_assets.simulator.data import add_months, local_stamp, midnight, parse_local
from nexudus_assets.simulator.store import Kind, Table, coerce

#: .NET type names the catalogue uses -> how parameter values are read.
PARAMETER_KINDS: dict[str, Kind] = {"Int32": "int", "String": "str", "Boolean": "bool", "DateTime": "date"}


#: How `runcommand` answers when it answers as some live commands do: nothing usable.
ANSWER_STYLES = ("documented", "empty", "no_content", "null", "empty_object", "ok_text", "true", "camel_case")


@dataclass
class CommandQuirks:
    """What live accounts' commands do that the reference does not say; all off by default."""

    #: How every `runcommand` answers: `documented` (the full answer), or one of the other ANSWER_STYLES.
    answer: str = "documented"
    #: A call over several Ids naming a failing one acts on the others and answers
    #: `WasSuccessful: false` for the call, without saying which failed.
    partial_failure: bool = False
    #: Seconds each Id of a call takes before the answer comes (live: about 0.7).
    seconds_per_id: float = 0.0
    #: Keys `runcommand` runs but `GET <entity>/commands` leaves out.
    unlisted: frozenset[str] = frozenset()
    #: The catalogue gives `Type: null` for every parameter.
    untyped_parameters: bool = False

    def __post_init__(self) -> None:
        if self.answer not in ANSWER_STYLES:
            raise ValueError(f"answer must be one of {', '.join(ANSWER_STYLES)}, not {self.answer!r}")

    def update(self, changes: Mapping[str, Any]) -> None:
        """Merge settings by name (the admin endpoint's JSON). Unknown names raise KeyError."""
        names = {f.name for f in fields(self)}
        unknown = set(changes) - names
        if unknown:
            raise KeyError(", ".join(sorted(unknown)))
        if changes.get("answer", self.answer) not in ANSWER_STYLES:
            raise ValueError(f"answer must be one of {', '.join(ANSWER_STYLES)}, not {changes['answer']!r}")
        for name, value in changes.items():
            setattr(self, name, frozenset(map(str, value)) if name == "unlisted" else type(getattr(self, name))(value))

    def to_dict(self) -> dict[str, Any]:
        settings = {f.name: getattr(self, f.name) for f in fields(self)}
        settings["unlisted"] = sorted(self.unlisted)
        return settings


class CommandError(Exception):
    """Why a command run failed; it is answered with HTTP 200 and `WasSuccessful: false`."""


class PartialFailure(CommandError):
    """The command ran on some of the records only; the others were changed all the same."""

    def __init__(self, message: str, touched: list[int]) -> None:
        super().__init__(message)
        self.touched = touched


@dataclass(frozen=True)
class CommandRun:
    table: Table
    keys: list[int]
    records: list[dict[str, Any]]
    params: dict[str, Any]
    now: dt.datetime


@dataclass(frozen=True)
class Command:
    key: str
    name: str
    cardinality: Literal["any", "one", "two"]
    parameters: tuple[tuple[str, str], ...]
    order: int
    #: Applies the effect to the records in place and returns the answer message.
    effect: Callable[[CommandRun], str]

    def describe(self, untyped: bool = False) -> dict[str, Any]:
        return {
            "Key": self.key,
            "Name": self.name,
            "AppliesOnlyToMultipleEntities": False,
            "DisplayInDropdown": True,
            "DisplayInDropdownV2": True,
            "AppliesOnlyToOneEntity": self.cardinality == "one",
            "AppliesOnlyToTwoEntities": self.cardinality == "two",
            "DisplayInGrid": self.cardinality != "any",
            "NeedsEntitiesToRun": True,
            "Order": self.order,
            "RequiresParameters": [
                {"Name": name, "Type": None if untyped else type_} for name, type_ in self.parameters
            ],
        }


def _positive(run: CommandRun, name: str) -> int:
    value = run.params[name]
    if value <= 0:
        raise CommandError(f"{name} must be greater than zero.")
    return int(value)


def _shift_date(record: dict[str, Any], field: str, delta: dt.timedelta, now: dt.datetime) -> None:
    record[field] = local_stamp((parse_local(record.get(field)) or midnight(now)) + delta)


def _add_minutes(run: CommandRun) -> str:
    minutes = _positive(run, "Minutes")
    for record in run.records:
        record["MinutesIncluded"] = (record.get("MinutesIncluded") or 0) + minutes
        record["MinutesLeft"] = (record.get("MinutesLeft") or 0) + minutes
    return f"{minutes} minutes were added to {len(run.records)} access token(s)."


def _extend_validity(run: CommandRun) -> str:
    days = _positive(run, "Days")
    _shift_date(run.records[0], "ValidTo", dt.timedelta(days=days), run.now)
    return f"The access token is now valid until {run.records[0]['ValidTo']}."


def _merge_tokens(run: CommandRun) -> str:
    kept, merged = run.records
    # Both counters grow so that MinutesLeft stays within MinutesIncluded.
    extra = merged.get("MinutesLeft") or 0
    kept["MinutesLeft"] = (kept.get("MinutesLeft") or 0) + extra
    kept["MinutesIncluded"] = (kept.get("MinutesIncluded") or 0) + extra
    run.table.remove(run.keys[1])
    return f"{extra} minutes were moved into {kept.get('AccessCode')} and the second token was deleted."


def _renew_contract(run: CommandRun) -> str:
    record = run.records[0]
    renewal = add_months(parse_local(record.get("RenewalDate")) or midnight(run.now), 1)
    record["RenewalDate"] = local_stamp(renewal)
    return f"The contract now renews on {record['RenewalDate']}."


def _add_note(run: CommandRun) -> str:
    note = run.params["Note"]
    if not note:
        raise CommandError("Note may not be empty.")
    for record in run.records:
        record["Notes"] = f"{record['Notes']}\n{note}" if record.get("Notes") else note
    return f"The note was added to {len(run.records)} contract(s)."


def _swap_desks(run: CommandRun) -> str:
    first, second = run.records
    for field in ("FloorPlanDeskIds", "FloorPlanDeskNames"):
        first[field], second[field] = second.get(field), first.get(field)
    return "The two contracts swapped desks."


def _extend_expiry(run: CommandRun) -> str:
    days = _positive(run, "Days")
    for record in run.records:
        _shift_date(record, "ExpireDate", dt.timedelta(days=days), run.now)
    return f"{len(run.records)} time pass(es) now expire {days} day(s) later."


def _mark_used(run: CommandRun) -> str:
    record = run.records[0]
    record.update(Used=True, RemainingUses=0, UsedDate=local_stamp(run.now))
    return "The time pass was marked as used."


def _transfer_uses(run: CommandRun) -> str:
    kept, emptied = run.records
    uses = emptied.get("RemainingUses") or 0
    kept["RemainingUses"] = (kept.get("RemainingUses") or 0) + uses
    kept["TotalUses"] = (kept.get("TotalUses") or 0) + uses
    kept["Used"] = False
    emptied.update(RemainingUses=0, Used=True, UsedDate=local_stamp(run.now))
    return f"{uses} use(s) were moved to the first time pass."


CATALOGUE: dict[str, tuple[Command, ...]] = {
    "AccessToken": (
        Command("ACCESSTOKEN_ADD_MINUTES", "Add minutes", "any", (("Minutes", "Int32"),), 1, _add_minutes),
        Command("ACCESSTOKEN_EXTEND_VALIDITY", "Extend validity", "one", (("Days", "Int32"),), 2, _extend_validity),
        Command("ACCESSTOKEN_MERGE", "Merge two access tokens", "two", (), 3, _merge_tokens),
    ),
    "CoworkerContract": (
        Command("COWORKERCONTRACT_ADD_NOTE", "Add a note", "any", (("Note", "String"),), 1, _add_note),
        Command("COWORKERCONTRACT_RENEW", "Renew for one more month", "one", (), 2, _renew_contract),
        Command("COWORKERCONTRACT_SWAP_DESKS", "Swap desks", "two", (), 3, _swap_desks),
    ),
    "CoworkerTimePass": (
        Command("COWORKERTIMEPASS_EXTEND_EXPIRY", "Extend expiry", "any", (("Days", "Int32"),), 1, _extend_expiry),
        Command("COWORKERTIMEPASS_MARK_USED", "Mark as used", "one", (), 2, _mark_used),
        Command("COWORKERTIMEPASS_TRANSFER_USES", "Transfer remaining uses", "two", (), 3, _transfer_uses),
    ),
}


def execute(
    table: Table, body: Any, failing_ids: Collection[int], now: dt.datetime, *, partial: bool = False
) -> tuple[str, list[int]]:
    """Validate a `runcommand` body and apply it; returns the message and the Ids still present.

    Everything is checked before anything changes, so a failed run leaves the data alone; with
    `partial`, a command over any number of records acts on all but the failing ones and raises
    PartialFailure.
    """
    if not isinstance(body, dict):
        raise CommandError("The request body must be a JSON object.")
    commands = {command.key: command for command in CATALOGUE[table.entity.name]}
    command = commands.get(str(body.get("Key")))
    if command is None:
        raise CommandError(f"Command '{body.get('Key')}' does not exist.")
    ids = body.get("Ids")
    if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
        raise CommandError("This command needs the Ids of the records to run on.")
    needed = {"one": 1, "two": 2}.get(command.cardinality)
    if needed is not None and len(ids) != needed:
        raise CommandError(f"This command runs on exactly {needed} record(s); {len(ids)} given.")
    if len(set(ids)) != len(ids):
        raise CommandError("The same record was given twice.")
    for record_id in ids:
        if record_id not in table or record_id in table.raw:
            raise CommandError(f"Record {record_id} was not found.")
    failing = [record_id for record_id in ids if record_id in failing_ids]
    if failing and not (partial and command.cardinality == "any" and len(ids) > len(failing)):
        raise CommandError(f"The command could not be run for record {failing[0]}.")
    params = _parameters(command, body.get("Parameters"))
    if failing:
        ids = [record_id for record_id in ids if record_id not in failing]
    records = [table[record_id] for record_id in ids]
    try:
        message = command.effect(CommandRun(table, ids, records, params, now))
    except (TypeError, ValueError) as error:
        # A record a test filled with odd values; commands still answer HTTP 200.
        raise CommandError(f"The command failed: {error}") from None
    touched = [record_id for record_id in ids if record_id in table]
    if failing:
        raise PartialFailure("The command could not be run for some of the records.", touched)
    return message, touched


def _parameters(command: Command, given: Any) -> dict[str, Any]:
    """Match parameters by Name, or by position when they come without names (as in the docs)."""
    given = given if isinstance(given, list) else []
    by_name = {str(p.get("Name")).lower(): p for p in given if isinstance(p, dict) and p.get("Name")}
    values = {}
    for position, (name, type_) in enumerate(command.parameters):
        parameter = by_name.get(name.lower())
        if parameter is None and not by_name and position < len(given) and isinstance(given[position], dict):
            parameter = given[position]
        value = parameter.get("Value") if parameter else None
        if value is None:
            raise CommandError(f"The parameter '{name}' is missing.")
        try:
            values[name] = coerce(PARAMETER_KINDS[type_], value)
        except ValueError:
            raise CommandError(f"The parameter '{name}' must be a {type_}.") from None
    return values
