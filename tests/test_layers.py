"""The layers stay as drawn (DESIGN.md, "Layout"): arrows run down only. Every import of
every module is read (those inside functions too) and checked against the rules."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dacwatch"


def module_name(path: Path, root: Path = PACKAGE.parent) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module ``path`` imports, as absolute dotted names."""
    tree = ast.parse(path.read_text())
    here = module_name(path, root)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            found.add(target)
            found |= {f"{target}.{alias.name}" for alias in node.names}  # from pkg import module
    return found


MODULES = {module_name(p): imports_of(p) for p in sorted(PACKAGE.rglob("*.py"))}


def ours(name: str) -> bool:
    return name == "dacwatch" or name.startswith("dacwatch.")


def exists(name: str) -> bool:
    return name in MODULES


def violations(rule: str) -> list[str]:
    bad = []
    for module, imported in MODULES.items():
        for name in sorted(imported):
            if RULES[rule](module, name):
                bad.append(f"{module} imports {name}")
    return bad


def _in(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


STDLIB = set(sys.stdlib_module_names)
RULES = {
    # The mathematics and the file format never reach up into the service or the queue.
    "codec and formats never import daemon or queue": lambda m, n: (
        (_in(m, "dacwatch.codec") or _in(m, "dacwatch.formats"))
        and (_in(n, "dacwatch.daemon") or _in(n, "dacwatch.queue") or n == "dacwatch.cli")
    ),
    # The container knows numpy and the standard library (and dacwatch's error tree) only.
    "formats knows numpy and the standard library only": lambda m, n: (
        _in(m, "dacwatch.formats")
        and not (
            n.split(".")[0] in STDLIB
            or n.split(".")[0] == "numpy"
            or _in(n, "dacwatch.formats")
            or n in ("dacwatch", "dacwatch.__version__", "dacwatch.errors", "dacwatch.faults")
            or n.startswith(("dacwatch.errors.", "dacwatch.faults."))
            or n == "__future__"
        )
    ),
    # The codec never reads or writes files: formats and the daemon are above it.
    "codec never imports formats": lambda m, n: _in(m, "dacwatch.codec") and _in(n, "dacwatch.formats"),
    # The protocol does not know its PostgreSQL backend (open_queue in queue/__init__ picks one).
    "queue.base never imports its backends": lambda m, n: (
        m == "dacwatch.queue.base" and (_in(n, "dacwatch.queue.postgres") or _in(n, "dacwatch.queue.sqlite"))
    ),
    # The command line uses the queue's front door, never its internals.
    "cli never reaches into queue internals": lambda m, n: (
        m == "dacwatch.cli" and _in(n, "dacwatch.queue") and n not in ("dacwatch.queue", "dacwatch.queue.open_queue")
    ),
}


@pytest.mark.parametrize("rule", RULES)
def test_the_layers_hold(rule: str) -> None:
    assert violations(rule) == []


def test_the_packages_are_as_drawn() -> None:
    for package in ("dacwatch.codec", "dacwatch.formats", "dacwatch.daemon", "dacwatch.queue"):
        assert exists(package), package
    assert exists("dacwatch.queue.postgres") and exists("dacwatch.queue.sqlite") and exists("dacwatch.queue.base")


def test_a_planted_upward_import_is_caught(tmp_path: Path) -> None:
    """The check is not vacuous: a line `from dacwatch.daemon import service` in a module of
    codec/ is a violation it reports."""
    planted = tmp_path / "dacwatch" / "codec" / "planted.py"
    planted.parent.mkdir(parents=True)
    planted.write_text("from dacwatch.daemon import service\n\ndef late():\n    from ..queue import base\n")
    name, imported = "dacwatch.codec.planted", imports_of(planted, tmp_path)
    assert {"dacwatch.daemon", "dacwatch.queue"} <= imported  # relative and function-level imports too
    rule = RULES["codec and formats never import daemon or queue"]
    assert rule(name, "dacwatch.daemon") and rule(name, "dacwatch.queue")
