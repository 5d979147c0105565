"""YAML as the project's files take it: no key twice, no anchors or aliases, no value YAML versions read differently.

The command rules and the accounts file are written by hand and read by PyYAML (YAML 1.1); an
editor or a linter may read them as YAML 1.2. A value that means one thing to one and another to
the other, or a key given twice (PyYAML keeps the last silently), is refused with its line.
"""

import re
from typing import Any

import yaml


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


#: Plain scalars that YAML 1.1 (PyYAML) and YAML 1.2 read differently, and what each is in 1.1.
_YAML_11_FORMS: tuple[tuple[re.Pattern[str], str], ...] = (
    (re.compile(r"[-+]?[0-9][0-9_]*(:[0-5]?[0-9])+(\.[0-9_]*)?"), "a sexagesimal number in YAML 1.1 (1:30 is 90)"),
    (re.compile(r"[-+]?0[0-9_]+(\.[0-9_]*)?"), "an octal number in YAML 1.1 (010 is 8)"),
    (re.compile(r"[-+]?0b[01_]+"), "a binary number in YAML 1.1"),
    (re.compile(r"[-+]?[0-9][0-9_]*_[0-9_]*(\.[0-9_]*)?"), "a number with underscores in YAML 1.1 (1_0 is 10)"),
    (re.compile(r"yes|no|on|off", re.IGNORECASE), "a boolean in YAML 1.1, text in YAML 1.2"),
    (re.compile(r"[0-9]{4}-[0-9]{1,2}-[0-9]{1,2}([Tt ].*)?"), "a date in YAML 1.1, text in YAML 1.2"),
)


class AmbiguousYamlError(yaml.YAMLError):
    def __init__(self, problem: str, line: int) -> None:
        super().__init__(f"{problem} (line {line})")
        self.line = line


def refuse_ambiguous(text: str) -> None:
    """Anchors and aliases (an alias bomb expands to any size), and plain values YAML versions read differently.

    Scans the parse events, which hold an alias as a reference: nothing is expanded.
    """
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        line = event.start_mark.line + 1 if event.start_mark else 0
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise AmbiguousYamlError("anchors and aliases (& and *) are not allowed; write each value out", line)
        if isinstance(event, yaml.ScalarEvent) and event.style is None and event.tag is None:
            for pattern, meaning in _YAML_11_FORMS:
                if pattern.fullmatch(event.value):
                    raise AmbiguousYamlError(
                        f"{event.value!r} is {meaning}; quote it for text, or write the number plainly", line
                    )


def load(text: str) -> Any:
    """The document; DuplicateKeyError or AmbiguousYamlError (each with its `line`), or another yaml.YAMLError."""
    refuse_ambiguous(text)
    return yaml.load(text, Loader=UniqueKeyLoader)
