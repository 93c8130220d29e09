"""The package keeps its shape: no import cycle, and no module reaching into another module's
private names (``from airflow_provider_reve.mixins.reattach import _run_of_tries``).

Read with ``ast`` from the source, so a lazy import inside a function counts for the privacy rule
too; only module-level imports (outside ``if TYPE_CHECKING:``) count for cycles, since only they
run when the module is imported. A private module inside a package (``plugins/_cards.py``,
``testing/_fake/``) may be imported by the modules of that same package, nobody else.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = "airflow_provider_reve"
ROOT = Path(__file__).resolve().parents[2] / PACKAGE


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(ROOT.rglob("*.py"))}
PACKAGES = {name for name, path in MODULES.items() if path.name == "__init__.py"}


def package_of(module: str) -> str:
    return module if module in PACKAGES else module.rpartition(".")[0]


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name | ast.Attribute) and "TYPE_CHECKING" in ast.unparse(node.test)


def imports(module: str, *, top_level_only: bool) -> Iterator[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every import of our own package."""
    tree = ast.parse(MODULES[module].read_text(), filename=str(MODULES[module]))

    def walk(nodes: list[ast.stmt]) -> Iterator[ast.stmt]:
        for node in nodes:
            if isinstance(node, ast.Import | ast.ImportFrom):
                yield node
            elif top_level_only:
                if isinstance(node, ast.If) and not _is_type_checking(node):
                    yield from walk(node.body + node.orelse)
                elif isinstance(node, ast.Try):
                    yield from walk(node.body + node.orelse + node.finalbody)
            else:
                yield from (
                    child for child in ast.walk(node) if isinstance(child, ast.Import | ast.ImportFrom)
                )

    for node in walk(tree.body):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == PACKAGE:
                    yield alias.name, None, node.lineno
            continue
        base = node.module or ""
        if node.level:
            anchor = package_of(module).split(".")
            base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
        if base.split(".")[0] != PACKAGE:
            continue
        for alias in node.names:
            as_module = f"{base}.{alias.name}"
            if as_module in MODULES:
                yield as_module, None, node.lineno
            else:
                yield base, alias.name, node.lineno


def private_reach(importer: str, target: str, name: str | None) -> str | None:
    """The private name ``importer`` has no right to, or None."""
    parts = target.split(".") + ([name] if name else [])
    for index, part in enumerate(parts):
        if part.startswith("_") and not (part.startswith("__") and part.endswith("__")):
            owner = ".".join(parts[:index])
            if owner in PACKAGES and (importer == owner or importer.startswith(owner + ".")):
                continue  # a package's private module, used inside that package
            return ".".join(parts[: index + 1])
    return None


def test_no_module_imports_another_modules_underscored_name():
    reaches = [
        f"{MODULES[module].relative_to(ROOT.parent)}:{line} imports {reached}"
        for module in MODULES
        for target, name, line in imports(module, top_level_only=False)
        if (reached := private_reach(module, target, name))
    ]
    assert reaches == []


def test_the_package_has_no_import_cycle():
    edges: dict[str, set[str]] = {module: set() for module in MODULES}
    for module in MODULES:
        for target, _name, _line in imports(module, top_level_only=True):
            parts = target.split(".")
            # importing a.b.c runs a and a.b first
            edges[module].update(".".join(parts[:n]) for n in range(1, len(parts) + 1))
        # ... except the importer's own packages: they began running before it could (a package
        # that imports its submodules in __init__ is not a cycle with a submodule importing a sibling).
        edges[module] -= {module, *(".".join(module.split(".")[:n]) for n in range(1, module.count(".") + 1))}

    def find_cycle() -> list[str] | None:
        state: dict[str, int] = {}
        stack: list[str] = []

        def visit(node: str) -> list[str] | None:
            state[node] = 1
            stack.append(node)
            for nxt in sorted(edges.get(node, ())):
                if state.get(nxt) == 1:
                    return [*stack[stack.index(nxt) :], nxt]
                if nxt not in state and (found := visit(nxt)):
                    return found
            stack.pop()
            state[node] = 2
            return None

        for node in sorted(edges):
            if node not in state and (found := visit(node)):
                return found
        return None

    assert find_cycle() is None


@pytest.mark.parametrize(
    ("importer", "target", "name", "reached"),
    [
        (
            "airflow_provider_reve.decorators.reve",
            "airflow_provider_reve.mixins.reattach",
            "_run_of_tries",
            "airflow_provider_reve.mixins.reattach._run_of_tries",
        ),
        (
            "airflow_provider_reve.hooks.reve",
            "airflow_provider_reve.plugins._cards",
            None,
            "airflow_provider_reve.plugins._cards",
        ),
        ("airflow_provider_reve.plugins._routes", "airflow_provider_reve.plugins._cards", None, None),
    ],
)
def test_the_privacy_rule_tells_a_packages_own_modules_from_strangers(importer, target, name, reached):
    # The counterpart of the walk above: the rule sees a reach when there is one.
    assert private_reach(importer, target, name) == reached


def test_the_client_room_imports_nothing_of_airflow_itself():
    # client/ is usable without an Airflow connection or task (docs/client.md); the hooks adapt
    # Airflow to it. Lazy imports inside functions count too.
    reaches = [
        f"{path.relative_to(ROOT.parent)}:{node.lineno}"
        for module, path in MODULES.items()
        if module.startswith(f"{PACKAGE}.client")
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path)))
        if (isinstance(node, ast.Import) and any(a.name.split(".")[0] == "airflow" for a in node.names))
        or (
            isinstance(node, ast.ImportFrom)
            and not node.level
            and (node.module or "").split(".")[0] == "airflow"
        )
    ]
    assert reaches == []
