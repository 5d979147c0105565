"""Command rules: which Nexudus command runs on the records an insight singles out, or which
fields of those records are set by PUT.

Rules live in a YAML file (`NEXUDUS_COMMAND_RULES`, default: the commented example shipped
with the package). A file that could be read two ways is refused whole: an unknown top-level
key, a key given twice, a value out of range, an anchor or alias, a plain value that YAML 1.1
(which PyYAML reads) and YAML 1.2 read differently. The error names the file, the rule and the problem.
"""

from __future__ import annotations

import math
import re
from collections.abc import Collection
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from nexudus_assets import strict_yaml

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "command_rules.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_TOP_LEVEL_KEYS = {"rules"}
#: One minute: a shorter window would let a tick that runs twice act twice.
MIN_COOLDOWN_HOURS = 1 / 60
#: A year: beyond it a date overflows long before a record could be actioned again.
MAX_COOLDOWN_HOURS = 365 * 24
MAX_ATTEMPTS = 100
MAX_BATCH_SIZE = 1000
#: Live commands took about 0.7 s per Id (42 Ids in 29 s). 25 Ids take some 17 s, a seventh of
#: the default write deadline (120 s): room for a slower account or a busy hour.
DEFAULT_BATCH_SIZE = 25
#: The ledger's command key for record updates by PUT.
UPDATE_ACTION = "PUT"
#: The largest whole number any .NET numeric type holds exactly (Decimal.MaxValue). The declared
#: type is only known against the catalogue, where the narrower bound is checked.
LARGEST_NUMBER = 2**96 - 1

Scalar = str | bool | int | float


class RuleError(ValueError):
    """A rule that cannot be run as written. The message says which rule and why."""


class FromColumn(BaseModel):
    """A field's new value taken from a column of the rule's insight, record by record."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    column: str = Field(min_length=1, description="A column of the insight.")


class CommandRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique; names the sensor (lowercase letters, digits, underscores).")
    asset: str = Field(description="The insight whose ids the rule acts on.")
    command: str | None = Field(default=None, min_length=1, description="A Key from GET <entity>/commands.")
    update: dict[str, Scalar | FromColumn] | None = Field(
        default=None,
        description="Instead of `command`: fields (wire names) to set by PUT, to a constant or `{column: name}`.",
    )
    parameters: dict[str, Scalar] = Field(default_factory=dict, description="By the Name the command requires.")
    unlisted: bool = Field(
        default=False,
        description="The command is missing from GET <entity>/commands; `parameter_types` then declares every type.",
    )
    parameter_types: dict[str, str] = Field(
        default_factory=dict,
        description="A .NET type per parameter, checked where the catalogue gives none (or one unknown here).",
    )
    insight_config: dict[str, Scalar] = Field(
        default_factory=dict,
        description="The insight config the rule approves; otherwise only the insight's defaults.",
    )
    cooldown_hours: float = Field(
        default=24,
        description=(
            "A record is not actioned again with the same command and parameters within this window, "
            "whichever rule asks. At least one minute, at most 365 days."
        ),
    )
    max_attempts: int = Field(
        default=3, ge=1, le=MAX_ATTEMPTS, description="Failed attempts per record within the cooldown."
    )
    batch_size: int = Field(
        default=DEFAULT_BATCH_SIZE, ge=1, le=MAX_BATCH_SIZE, description="Ids per call for commands that take many."
    )
    live: bool = Field(
        default=False,
        description=(
            "Send for real when NEXUDUS_COMMANDS_LIVE=true as well; without it the rule's runs stay dry runs. "
            "Both are needed, so switching the variable on acts only on the rules chosen for it."
        ),
    )

    def dry_run_reason(self, commands_live: bool) -> str | None:
        """Why the rule's runs record instead of sending; None when they send."""
        if not commands_live:
            return "NEXUDUS_COMMANDS_LIVE is not true"
        if not self.live:
            return f"rule {self.name!r} does not say `live: true`"
        return None

    @property
    def action(self) -> str:
        """What the ledger keys the rule's calls by: the command key, or PUT."""
        return self.command if self.command is not None else UPDATE_ACTION

    @model_validator(mode="after")
    def _a_command_or_an_update(self) -> CommandRule:
        if (self.command is None) == (self.update is None):
            raise ValueError("give either `command:` or `update:`, not both or neither")
        if self.update is not None:
            if not self.update:
                raise ValueError("`update:` names no field")
            extra = [
                name
                for name in ("parameters", "unlisted", "parameter_types", "batch_size")
                if name in self.model_fields_set
            ]
            if extra:
                raise ValueError(f"{', '.join(extra)}: only for `command:` rules; an update is one PUT per record")
        if self.unlisted:
            undeclared = sorted(set(self.parameters) - set(self.parameter_types))
            if undeclared:
                raise ValueError(
                    f"an `unlisted: true` command declares every parameter's type in `parameter_types:`; "
                    f"missing for {', '.join(undeclared)}"
                )
        stray = sorted(set(self.parameter_types) - set(self.parameters))
        if stray:
            raise ValueError(f"parameter_types names parameter(s) the rule does not give: {', '.join(stray)}")
        return self

    @field_validator("cooldown_hours")
    @classmethod
    def _at_least_a_minute(cls, hours: float) -> float:
        if not math.isfinite(hours) or not MIN_COOLDOWN_HOURS <= hours <= MAX_COOLDOWN_HOURS:
            raise ValueError(
                f"must be a number of hours from 1/60 (one minute) to {MAX_COOLDOWN_HOURS} (365 days), not {hours!r}"
            )
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
        document = strict_yaml.load(text)
    except (strict_yaml.DuplicateKeyError, strict_yaml.AmbiguousYamlError) as exc:
        rule_name = _rule_at_line(text, exc.line)
        where = f"command rule {rule_name!r} in {path}" if rule_name else f"command rules file {path}"
        remedy = "; remove one" if isinstance(exc, strict_yaml.DuplicateKeyError) else ""
        raise RuleError(f"{where}: {exc}{remedy}") from None
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
