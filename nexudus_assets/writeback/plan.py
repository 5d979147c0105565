"""Checking a rule against the live command catalogue and cutting ids into calls; checking an
update rule against the entity's writable fields."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any

from pydantic import TypeAdapter
from pydantic import ValidationError as PydanticValidationError

from nexudus_assets.nexudus import CommandDescription, CommandParameter, Entity
from nexudus_assets.writeback.rules import LARGEST_NUMBER, CommandRule, FromColumn, RuleError, Scalar


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _as_decimal(value: Any) -> Decimal | None:
    """A number given as int, float or numeric text, exactly; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        return Decimal(value)
    except InvalidOperation:
        return None


def _whole(low: int, high: int) -> Callable[[Any], bool]:
    return lambda value: _is_int(value) and low <= value <= high


def _real(largest: float | int) -> Callable[[Any], bool]:
    def accepts(value: Any) -> bool:
        number = _as_decimal(value)
        return number is not None and number.is_finite() and number.copy_abs() <= largest

    return accepts


def _is_datetime(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        dt.datetime.fromisoformat(value)
    except ValueError:
        return False
    return True


def _is_guid(value: Any) -> bool:
    try:
        uuid.UUID(str(value))
    except ValueError:
        return False
    return isinstance(value, str)


def _signed(bits: int) -> tuple[int, int]:
    return -(2 ** (bits - 1)), 2 ** (bits - 1) - 1


#: .NET numeric types: the values each holds, and how an error message describes them.
_RANGES: dict[tuple[str, ...], tuple[Callable[[Any], bool], str]] = {
    ("byte",): (_whole(0, 2**8 - 1), "a whole number from 0 to 255"),
    ("sbyte",): (_whole(*_signed(8)), "a whole number from -128 to 127"),
    ("int16", "short"): (_whole(*_signed(16)), "a whole number from -32768 to 32767"),
    ("uint16", "ushort"): (_whole(0, 2**16 - 1), "a whole number from 0 to 65535"),
    ("int32", "int", "integer"): (_whole(*_signed(32)), "a whole number from -2147483648 to 2147483647"),
    ("uint32", "uint"): (_whole(0, 2**32 - 1), "a whole number from 0 to 4294967295"),
    ("int64", "long"): (_whole(*_signed(64)), "a whole number from -2**63 to 2**63 - 1"),
    ("uint64", "ulong"): (_whole(0, 2**64 - 1), "a whole number from 0 to 2**64 - 1"),
    ("decimal",): (_real(LARGEST_NUMBER), "a finite number of magnitude at most 2**96 - 1"),
    ("single", "float"): (_real(3.4028234663852886e38), "a finite number of magnitude at most 3.4e38"),
    ("double", "number"): (_real(sys.float_info.max), "a finite number of magnitude at most 1.8e308"),
}

#: .NET type names the catalogue uses (lower-cased, without `System.` and `?`) -> a value test, and
#: what it takes when that is more than the type's name says.
_TYPES: dict[str, tuple[Callable[[Any], bool], str | None]] = {
    **dict.fromkeys(("string", "str", "text"), (lambda v: isinstance(v, str), None)),
    **dict.fromkeys(("boolean", "bool"), (lambda v: isinstance(v, bool), None)),
    **{name: test for names, test in _RANGES.items() for name in names},
    **dict.fromkeys(("datetime", "date", "datetimeoffset"), (_is_datetime, "an ISO 8601 date and time")),
    **dict.fromkeys(("guid", "uuid"), (_is_guid, None)),
}


def _type_key(name: str) -> str:
    key = name.strip().lower().rstrip("?")
    return key.removeprefix("system.")


def _parameter_entry(rule: CommandRule, name: str, catalogue_type: str | None) -> dict[str, Any]:
    """`{Name, Value}` checked by the catalogue's type, or by the rule's where the catalogue gives none known here.

    `Type` is added only when the catalogue gave one: a live server needs none, and would be told
    nothing true by a guess.
    """
    value = rule.parameters[name]
    declared = rule.parameter_types.get(name)
    known = _TYPES.get(_type_key(catalogue_type)) if catalogue_type else None
    if known is not None and declared is not None and _TYPES.get(_type_key(declared)) is not known:
        raise RuleError(
            f"rule {rule.name!r}: parameter {name!r} is declared {declared!r}, "
            f"but the catalogue types it {catalogue_type!r}"
        )
    checked_as = catalogue_type if known is not None else declared
    if known is None and declared is not None:
        known = _TYPES.get(_type_key(declared))
        if known is None:
            raise RuleError(
                f"rule {rule.name!r}: parameter {name!r} is declared {declared!r}, a type that cannot be checked; "
                f"declare one of {', '.join(sorted(_TYPES))}"
            )
    if known is None:
        raise RuleError(
            f"rule {rule.name!r}: parameter {name!r} has type {catalogue_type!r} in the catalogue, which cannot be "
            f"checked; declare its type in `parameter_types:` (e.g. {name}: Int32); nothing is sent unchecked"
        )
    accepts, value_range = known
    if not accepts(value):
        raise RuleError(
            f"rule {rule.name!r}: parameter {name!r} must be a {checked_as}"
            f"{f' ({value_range})' if value_range else ''}, not {type(value).__name__} {value!r}"
        )
    entry: dict[str, Any] = {"Name": name, "Value": value}
    if catalogue_type is not None:
        entry["Type"] = catalogue_type
    return entry


def check_rule(
    rule: CommandRule, catalogue: Sequence[CommandDescription]
) -> tuple[CommandDescription, list[dict[str, Any]]]:
    """The command and its `Parameters` payload, or RuleError saying what does not fit.

    A command the catalogue does not list is run only when the rule says `unlisted: true` and
    declares its parameters' types; it is then sent in batches of `batch_size`, as nothing
    says it takes fewer.
    """
    if rule.command is None:
        raise RuleError(f"rule {rule.name!r} updates records; it runs no command")
    by_key = {command.key: command for command in catalogue}
    command = by_key.get(rule.command)
    if command is None and rule.unlisted:
        command = CommandDescription(
            key=rule.command,
            requires_parameters=[CommandParameter(name=name, type=None) for name in rule.parameters],
        )
    if command is None:
        available = ", ".join(sorted(by_key)) or "none"
        raise RuleError(
            f"rule {rule.name!r}: command {rule.command!r} is not in the catalogue (available: {available}); "
            "if the server accepts it anyway, say `unlisted: true` and declare `parameter_types:`"
        )
    if not command.needs_entities_to_run:
        raise RuleError(f"rule {rule.name!r}: command {rule.command!r} runs without records; rules act on records")
    required = {parameter.name: parameter for parameter in command.requires_parameters}
    missing = [name for name in required if name not in rule.parameters]
    unknown = [name for name in rule.parameters if name not in required]
    if missing or unknown:
        problems = [f"missing parameter(s) {', '.join(missing)}"] if missing else []
        problems += [f"unknown parameter(s) {', '.join(unknown)}"] if unknown else []
        takes = ", ".join(f"{p.name} ({p.type})" for p in command.requires_parameters) or "no parameters"
        raise RuleError(f"rule {rule.name!r}: {'; '.join(problems)}; {rule.command} takes {takes}")
    return command, [_parameter_entry(rule, name, parameter.type) for name, parameter in required.items()]


@dataclass(frozen=True)
class Calls:
    """Ids grouped as the command's metadata demands, and the ones no call can take."""

    batches: list[list[int]]
    left_over: list[int]


def plan_calls(command: CommandDescription, ids: Sequence[int], batch_size: int) -> Calls:
    ordered = sorted(set(ids))
    if command.applies_only_to_one_entity:
        return Calls([[record_id] for record_id in ordered], [])
    if command.applies_only_to_two_entities:
        cut = len(ordered) - len(ordered) % 2
        return Calls([ordered[i : i + 2] for i in range(0, cut, 2)], ordered[cut:])
    batches = [ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)]
    if command.applies_only_to_multiple_entities and batches and len(batches[-1]) == 1:
        if len(batches) == 1:
            return Calls([], batches[0])
        batches[-2].extend(batches.pop())  # a lone id joins the call before it
    return Calls(batches, [])


# -- record updates by PUT ---------------------------------------------------------------------


@dataclass(frozen=True)
class FieldUpdate:
    """One field an update rule sets: its wire name, how its values are checked, and where they come from."""

    wire: str
    check: TypeAdapter[Any]
    constant: Scalar | None
    column: str | None


def _wire_value(value: Any) -> Any:
    """A warehouse value as JSON carries it: dates and times ISO 8601, decimals as numbers."""
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _field_checks(entity: Entity) -> dict[str, TypeAdapter[Any]]:
    """Each writable wire name -> its model field's type, with the model's own validators."""
    field_names = {wire: name for name, wire in entity.model.wire_names().items()}
    checks: dict[str, TypeAdapter[Any]] = {}
    for wire in entity.put_fields:
        if wire in field_names:
            # The field's annotation with its validators, as the model applies them.
            info = entity.model.model_fields[field_names[wire]]
            form: Any = Annotated[(info.annotation, *info.metadata)] if info.metadata else info.annotation
            checks[wire] = TypeAdapter(form)
    return checks


def check_update(rule: CommandRule, entity: Entity, columns: Collection[str]) -> list[FieldUpdate]:
    """The fields an update rule sets, checked against the entity's writable fields and the insight's columns.

    Constants are checked against the field's type here; column values record by record in `changes_for`.
    """
    if rule.update is None:
        raise RuleError(f"rule {rule.name!r} runs a command; it updates no record")
    checks = _field_checks(entity)
    unknown = sorted(set(rule.update) - set(checks))
    if unknown:
        raise RuleError(
            f"rule {rule.name!r}: {entity.name} has no writable field(s) {', '.join(unknown)}; "
            f"writable: {', '.join(sorted(checks))}"
        )
    fields = []
    for wire, source in rule.update.items():
        if isinstance(source, FromColumn):
            if source.column not in columns or source.column == "id":
                raise RuleError(
                    f"rule {rule.name!r}: field {wire!r} takes column {source.column!r}, which {rule.asset} lacks; "
                    f"its columns: {', '.join(c for c in columns if c != 'id')}"
                )
            fields.append(FieldUpdate(wire, checks[wire], None, source.column))
            continue
        try:
            checks[wire].validate_python(source)
        except PydanticValidationError as exc:
            raise RuleError(
                f"rule {rule.name!r}: field {wire!r} cannot be {source!r}: {exc.errors()[0]['msg']}"
            ) from None
        fields.append(FieldUpdate(wire, checks[wire], source, None))
    return fields


def changes_for(
    rule: CommandRule, entity: Entity, fields: Sequence[FieldUpdate], record_id: int, row: Mapping[str, Any]
) -> dict[str, Any]:
    """The wire values one record gets; RuleError naming the record and the field when a column's value does not fit."""
    changes = {}
    for update in fields:
        value = _wire_value(row[update.column]) if update.column is not None else update.constant
        try:
            update.check.validate_python(value)
        except PydanticValidationError as exc:
            raise RuleError(
                f"rule {rule.name!r}: {entity.name} {record_id}: field {update.wire!r} cannot be {value!r} "
                f"(column {update.column!r}): {exc.errors()[0]['msg']}"
            ) from None
        changes[update.wire] = value
    return changes


def differing_fields(fields: Sequence[FieldUpdate], changes: Mapping[str, Any], record: Mapping[str, Any]) -> list[str]:
    """The fields whose value in `record` (raw, as read back) is not the one sent, each compared as its type."""
    differing = []
    for update in fields:
        try:
            matches = update.check.validate_python(record.get(update.wire)) == update.check.validate_python(
                changes[update.wire]
            )
        except PydanticValidationError:
            matches = False
        if not matches:
            differing.append(update.wire)
    return differing
