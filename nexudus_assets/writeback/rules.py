"""Command rules: which Nexudus command runs on the records an insight singles out.

Rules live in a YAML file (`NEXUDUS_COMMAND_RULES`, default: the commented example shipped
with the package). A file that could be read two ways is refused whole: an unknown top-level
key, a key given twice, a value out of range. The error names the file, the rule and the problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "command_rules.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TOP_LEVEL_KEYS = {"rules"}
#: One minute: a shorter window would let a tick that runs twice act twice.
MIN_COOLDOWN_HOURS = 1 / 60
#: The largest whole number any .NET numeric type holds exactly (Decimal.MaxValue). The declared
#: type is only known against the catalogue, where the narrower bound is checked.
LARGEST_NUMBER = 2**96 - 1

Scalar = str | bool | int | float


class RuleError(ValueError):
    """A rule that cannot be run as written. The message says which rule and why."""


class CommandRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique; names the sensor (lowercase letters, digits, underscores).")
    asset: str = Field(description="The insight whose ids the command acts on.")
    command: str = Field(min_length=1, description="A Key from GET <entity>/commands.")
    parameters: dict[str, Scalar] = Field(default_factory=dict, description="By the Name the command requires.")
    cooldown_hours: float = Field(
        default=24,
        description=(
            "A record is not actioned again with the same command and parameters within this window, "
            "whichever rule asks. At least one minute."
        ),
    )
    max_attempts: int = Field(default=3, ge=1, description="Failed attempts per record within the cooldown.")
    batch_size: int = Field(default=25, ge=1, le=500, description="Ids per call for commands that take many.")

    @field_validator("cooldown_hours")
    @classmethod
    def _at_least_a_minute(cls, hours: float) -> float:
        if not math.isfinite(hours) or hours < MIN_COOLDOWN_HOURS:
            raise ValueError(f"must be a finite number of hours, at least 1/60 (one minute), not {hours!r}")
        return hours

    @field_validator("parameters")
    @classmethod
    def _numbers_any_dotnet_type_can_take(cls, parameters: dict[str, Scalar]) -> dict[str, Scalar]:
        for name, value in parameters.items():
            if isinstance(value, bool):
                continue
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"{name!r} is {value!r}; a parameter must be a finite number")
            if isinstance(value, int) and abs(value) > LARGEST_NUMBER:
                raise ValueError(f"{name!r} is {value}, beyond what any .NET number can hold (2**96 - 1)")
        return parameters


class DuplicateKeyError(yaml.YAMLError):
    def __init__(self, key: Any, first_line: int, line: int) -> None:
        super().__init__(f"key {key!r} is given twice (lines {first_line} and {line})")
        self.line = line


class UniqueKeyLoader(yaml.SafeLoader):
    """A SafeLoader that refuses a key given twice in one mapping (PyYAML would keep the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            # A `<<` merge may override keys on purpose; plain keys may not repeat.
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            line = key_node.start_mark.line + 1
            if key in seen:
                raise DuplicateKeyError(key, seen[key], line)
            seen[key] = line
        return super().construct_mapping(node, deep=deep)


def _rule_at_line(text: str, line: int) -> str | None:
    """The name (or `#position`) of the rule whose text spans `line` (1-based)."""
    root = yaml.compose(text, Loader=yaml.SafeLoader)
    if not isinstance(root, yaml.MappingNode):
        return None
    for key_node, value_node in root.value:
        if key_node.value != "rules" or not isinstance(value_node, yaml.SequenceNode):
            continue
        for position, item in enumerate(value_node.value, start=1):
            if item.start_mark.line < line <= item.end_mark.line + 1 and isinstance(item, yaml.MappingNode):
                names = [v.value for k, v in item.value if k.value == "name" and isinstance(v, yaml.ScalarNode)]
                return names[0] if names else f"#{position}"
    return None


def load_rules(path: Path, actionable_assets: Collection[str]) -> tuple[CommandRule, ...]:
    """Parse and check the rules file. `actionable_assets`: insights whose `id` is a record id."""
    try:
        text = path.read_text()
    except OSError as exc:
        raise RuleError(f"command rules file {path}: cannot be read ({exc.strerror})") from None
    try:
        document = yaml.load(text, Loader=UniqueKeyLoader)
    except DuplicateKeyError as exc:
        rule_name = _rule_at_line(text, exc.line)
        where = f"command rule {rule_name!r} in {path}" if rule_name else f"command rules file {path}"
        raise RuleError(f"{where}: {exc}; remove one") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"command rules file {path}: not valid YAML ({exc})") from None
    if document is None:
        return ()
    if not isinstance(document, dict) or not isinstance(document.get("rules", []), list):
        raise RuleError(f"command rules file {path}: expected a mapping with a `rules:` list")
    unknown = sorted(str(key) for key in document if key not in _TOP_LEVEL_KEYS)
    if unknown:
        raise RuleError(
            f"command rules file {path}: unknown top-level key(s) {', '.join(map(repr, unknown))}; "
            "the file holds one key, `rules:`"
        )
    rules: list[CommandRule] = []
    for position, raw in enumerate(document.get("rules") or [], start=1):
        label = raw.get("name") if isinstance(raw, dict) and raw.get("name") else f"#{position}"
        try:
            rule = CommandRule.model_validate(raw)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'rule'}: {e['msg']}" for e in exc.errors())
            raise RuleError(f"command rule {label!r} in {path}: {problems}") from None
        if not _NAME.match(rule.name):
            raise RuleError(f"command rule {label!r} in {path}: name must be lowercase letters, digits and underscores")
        if any(existing.name == rule.name for existing in rules):
            raise RuleError(f"command rule {label!r} in {path}: the name is used twice")
        if rule.asset not in actionable_assets:
            raise RuleError(
                f"command rule {label!r} in {path}: asset {rule.asset!r} is not an insight of record ids; "
                f"choose one of {', '.join(sorted(actionable_assets))}"
            )
        rules.append(rule)
    return tuple(rules)
