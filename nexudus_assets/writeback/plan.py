"""Checking a rule against the live command catalogue, and cutting ids into calls."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from nexudus_assets.nexudus import CommandDescription
from nexudus_assets.writeback.rules import CommandRule, RuleError


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if _is_int(value) or isinstance(value, float):
        return True
    if isinstance(value, str):
        try:
            Decimal(value)
        except InvalidOperation:
            return False
        return True
    return False


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


#: .NET type names the catalogue uses (lower-cased, without `System.` and `?`) -> a value test.
_TYPES = {
    **dict.fromkeys(("string", "str", "text"), lambda v: isinstance(v, str)),
    **dict.fromkeys(("boolean", "bool"), lambda v: isinstance(v, bool)),
    **dict.fromkeys(("int", "int16", "int32", "int64", "integer", "long", "short", "byte"), _is_int),
    **dict.fromkeys(("decimal", "double", "float", "single", "number"), _is_number),
    **dict.fromkeys(("datetime", "date", "datetimeoffset"), _is_datetime),
    **dict.fromkeys(("guid", "uuid"), _is_guid),
}


def _type_key(name: str) -> str:
    key = name.strip().lower().rstrip("?")
    return key.removeprefix("system.")


def check_rule(rule: CommandRule, catalogue: Sequence[CommandDescription]) -> tuple[CommandDescription, list[dict[str, Any]]]:
    """The command and its `Parameters` payload, or RuleError saying what does not fit."""
    by_key = {command.key: command for command in catalogue}
    command = by_key.get(rule.command)
    if command is None:
        known = ", ".join(sorted(by_key)) or "none"
        raise RuleError(f"rule {rule.name!r}: command {rule.command!r} is not in the catalogue (available: {known})")
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
        accepts = _TYPES.get(_type_key(parameter.type))
        if accepts is None:
            raise RuleError(
                f"rule {rule.name!r}: parameter {name!r} has type {parameter.type!r}, which cannot be checked; "
                "nothing is sent unchecked"
            )
        if not accepts(value):
            raise RuleError(
                f"rule {rule.name!r}: parameter {name!r} must be a {parameter.type}, not {type(value).__name__} {value!r}"
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
