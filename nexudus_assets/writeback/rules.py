"""Command rules: which Nexudus command runs on the records an insight singles out.

Rules live in a YAML file (`NEXUDUS_COMMAND_RULES`, default: the commented example shipped
with the package). A malformed file or rule fails loudly, naming the rule and the problem.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Mapping
from pathlib import Path
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

EXAMPLE_RULES = Path(__file__).resolve().parent.parent / "command_rules.yaml"
_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")

Scalar = str | bool | int | float


class RuleError(ValueError):
    """A rule that cannot be run as written. The message says which rule and why."""


class CommandRule(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="Unique; names the sensor (lowercase letters, digits, underscores).")
    asset: str = Field(description="The insight whose ids the command acts on.")
    command: str = Field(min_length=1, description="A Key from GET <entity>/commands.")
    parameters: dict[str, Scalar] = Field(default_factory=dict, description="By the Name the command requires.")
    cooldown_hours: float = Field(default=24, gt=0, description="A record is not actioned again within this window.")
    max_attempts: int = Field(default=3, ge=1, description="Failed attempts per record within the cooldown.")
    batch_size: int = Field(default=25, ge=1, le=500, description="Ids per call for commands that take many.")


def rules_path(environ: Mapping[str, str] = os.environ) -> Path:
    return Path(environ.get("NEXUDUS_COMMAND_RULES") or EXAMPLE_RULES)


def load_rules(path: Path, actionable_assets: Collection[str]) -> tuple[CommandRule, ...]:
    """Parse and check the rules file. `actionable_assets`: insights whose `id` is a record id."""
    try:
        document = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise RuleError(f"command rules file {path}: cannot be read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise RuleError(f"command rules file {path}: not valid YAML ({exc})") from None
    if document is None:
        return ()
    if not isinstance(document, dict) or not isinstance(document.get("rules", []), list):
        raise RuleError(f"command rules file {path}: expected a mapping with a `rules:` list")
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

