"""Checking a rule against the live command catalogue, and cutting ids into calls."""

from __future__ import annotations

import datetime as dt
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from nexudus_assets.nexudus import CommandDescription
from nexudus_assets.writeback.rules import LARGEST_NUMBER, CommandRule, RuleError


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


def check_rule(
    rule: CommandRule, catalogue: Sequence[CommandDescription]
) -> tuple[CommandDescription, list[dict[str, Any]]]:
    """The command and its `Parameters` payload, or RuleError saying what does not fit."""
    by_key = {command.key: command for command in catalogue}
    command = by_key.get(rule.command)
    if command is None:
        available = ", ".join(sorted(by_key)) or "none"
        raise RuleError(
            f"rule {rule.name!r}: command {rule.command!r} is not in the catalogue (available: {available})"
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
    payload = []
    for name, parameter in required.items():
        value = rule.parameters[name]
        known = _TYPES.get(_type_key(parameter.type))
        if known is None:
            raise RuleError(
                f"rule {rule.name!r}: parameter {name!r} has type {parameter.type!r}, which cannot be checked; "
                "nothing is sent unchecked"
            )
        accepts, value_range = known
        if not accepts(value):
            raise RuleError(
                f"rule {rule.name!r}: parameter {name!r} must be a {parameter.type}"
                f"{f' ({value_range})' if value_range else ''}, not {type(value).__name__} {value!r}"
            )
        payload.append({"Name": name, "Type": parameter.type, "Value": value})
    return command, payload


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
