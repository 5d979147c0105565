"""How the package's modules import each other: one way only, and Dagster through its public API."""

import ast
import subprocess
import sys
from collections.abc import Collection, Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "nexudus_assets"


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_names(path: Path, modules: Collection[str], root: Path = PACKAGE.parent) -> Iterator[str]:
    """The modules `path` imports, at the top, inside functions and under TYPE_CHECKING alike.

    `from package import module` imports the module; the package counts only for the names
    that are not modules of `modules`.
    """
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
            named = [f"{base}.{alias.name}" for alias in node.names]
            yield from (module for module in named if module in modules)
            if any(module not in modules for module in named):
                yield base


def import_graph() -> dict[str, set[str]]:
    paths = {module_name(path): path for path in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in paths.items():
        found = set(imported_names(path, paths.keys())) & paths.keys()
        # A package's __init__ gathers its own modules; that is no loop back into it.
        graph[name] = {target for target in found if target != name and not target.startswith(name + ".")}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each import loop once, as the modules along it."""
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def walk(path: list[str]) -> None:
        for target in sorted(graph[path[-1]]):
            if target == path[0] and frozenset(path) not in seen:
                seen.add(frozenset(path))
                found.append([*path, target])
            elif target not in path and target > path[0]:
                walk([*path, target])

    for start in sorted(graph):
        walk([start])
    return found


def test_the_graph_sees_imports_inside_functions_and_under_type_checking(tmp_path):
    module = tmp_path / "nexudus_assets" / "late.py"
    module.parent.mkdir()
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from nexudus_assets.early import A\n"
        "def f():\n    from . import other\n"
    )
    modules = {"nexudus_assets.early", "nexudus_assets.other", "nexudus_assets.late"}
    assert set(imported_names(module, modules, root=tmp_path)) == {
        "typing",
        "nexudus_assets.early",
        "nexudus_assets.other",
    }
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]


def test_no_module_of_the_package_imports_itself_back():
    graph = import_graph()
    assert len(graph) > 40 and any(graph.values())
    assert cycles(graph) == []


def test_dagster_is_used_through_its_public_api_only():
    private = [
        f"{path.relative_to(PACKAGE.parent)}: {name}"
        for path in PACKAGE.rglob("*.py")
        for name in imported_names(path, ())
        if name.startswith("dagster") and any(part.startswith("_") for part in name.split("."))
    ]
    assert private == []


def test_every_script_imports_what_it_names():
    # `make demo`, `make dev` and `make account` run these; a name the package dropped must fail here, not there.
    scripts = PACKAGE.parent / "scripts"
    for script in sorted(scripts.glob("*.py")):
        done = subprocess.run(
            [sys.executable, "-c", f"import {script.stem}"], cwd=scripts, capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, f"scripts/{script.name} does not import:\n{done.stderr[-2000:]}"
