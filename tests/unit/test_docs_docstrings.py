"""The Python API reference documents every parameter and return value of the public surface.

The reference (docs/api.rst) is generated from these docstrings; a parameter a docstring forgets is
a parameter the reference never mentions. Covered: every public class and function that the
stable public modules define themselves (those their ``__all__`` lists, when it has one), the
public methods the reference lists, and the documented public methods of the classes an
``automodule`` shows. Every module with an ``__all__`` is in the reference or left out with a reason.
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path

import pytest
from reve_test_helpers import REAL_SETTLE_TIME

API_RST = Path(__file__).resolve().parents[2] / "docs" / "api.rst"

PUBLIC_MODULES = [
    "airflow_provider_reve.hooks.reve",
    "airflow_provider_reve.client.base",
    "airflow_provider_reve.client.sync_client",
    "airflow_provider_reve.client.async_client",
    "airflow_provider_reve.operators.reve",
    "airflow_provider_reve.operators.download",
    "airflow_provider_reve.sensors.reve",
    "airflow_provider_reve.triggers.reve",
    "airflow_provider_reve.decorators.reve",
    "airflow_provider_reve.links",
    "airflow_provider_reve.models",
    "airflow_provider_reve.exceptions",
    "airflow_provider_reve.client.settings",
    "airflow_provider_reve.client.transport",
    "airflow_provider_reve.client.envelope",
    "airflow_provider_reve.client.retry",
    "airflow_provider_reve.client.ratelimit",
    "airflow_provider_reve.client.redact",
    "airflow_provider_reve.client.catalog",
    "airflow_provider_reve.client.polling",
    "airflow_provider_reve.results.destination",
    "airflow_provider_reve.results.download",
    "airflow_provider_reve.results.naming",
    "airflow_provider_reve.results.manifest",
    "airflow_provider_reve.results.supersede",
    "airflow_provider_reve.results.task_list",
    "airflow_provider_reve.results.lineage",
    "airflow_provider_reve.results.lineage_facets",
    "airflow_provider_reve.mixins.request",
    "airflow_provider_reve.mixins.rendered",
    "airflow_provider_reve.mixins.deadline",
    "airflow_provider_reve.mixins.reattach",
    "airflow_provider_reve.mixins.backoff",
    "airflow_provider_reve.mixins.outcomes",
    "airflow_provider_reve.mixins.finish",
    "airflow_provider_reve.budgets.model",
    "airflow_provider_reve.budgets.windows",
    "airflow_provider_reve.budgets.ledger",
    "airflow_provider_reve.budgets.schema",
    "airflow_provider_reve.budgets.mixin",
    "airflow_provider_reve.budgets.approval",
    "airflow_provider_reve.budgets.estimate",
    "airflow_provider_reve.budgets.cli",
    "airflow_provider_reve.budgets.shared_pauses",
    "airflow_provider_reve.config",
    "airflow_provider_reve.defaults",
    "airflow_provider_reve.plugins.gallery",
    "airflow_provider_reve.testing.fake_server",
    "airflow_provider_reve.testing.cluster",
    "airflow_provider_reve.testing.production",
]
#: Modules with an ``__all__`` that the reference leaves out, and why. ``__all__`` there says what
#: other modules of the package may import; it is not a promise to users.
NOT_IN_THE_REFERENCE = {
    # A package's __init__ re-exports names the reference documents in their home modules.
    "airflow_provider_reve": "re-exports",
    "airflow_provider_reve.client": "re-exports",
    "airflow_provider_reve.budgets": "re-exports",
    "airflow_provider_reve.testing": "re-exports",
    "airflow_provider_reve.example_dags": "the example DAGs, shown by the how-to pages",
    # The gallery's web app: served by the plugin, not imported by users.
    **{
        f"airflow_provider_reve.plugins.app{suffix}": "the gallery's web app"
        for suffix in [
            "", ".budget_reads", ".budgets_panel", ".cards", ".credits", ".locations", ".media",
            ".params", ".queries", ".ranges", ".reading", ".rendering", ".routes.budgets",
            ".routes.media", ".routes.pages", ".security",
        ]
    },
    # The package's own PEP 562 loader, for its __init__ modules: not for users.
    "airflow_provider_reve._lazy": "private",
}  # fmt: skip
# Parameters that are Airflow's protocol, not ours to explain on every method.
_NOT_DOCUMENTED_HERE = {"self", "cls", "context", "kwargs", "args", "settings"}


def _documented_objects() -> list[tuple[str, object]]:
    """(qualified name, object) for what the reference shows: directives in docs/api.rst."""
    found: list[tuple[str, object]] = []
    text = API_RST.read_text(encoding="utf-8")
    for directive, target, options in re.findall(
        r"^\.\. auto(class|function|exception|module):: (\S+)\n((?:   .*\n?)*)", text, flags=re.M
    ):
        module_name, _, attr = target.rpartition(".")
        if directive == "module":
            module = importlib.import_module(target)
            if ":members:" not in options or ":no-members:" in options:
                continue
            excluded = re.search(r":exclude-members:(.*)", options)
            skipped = set(re.split(r"[,\s]+", excluded.group(1).strip())) if excluded else set()
            # autodoc documents what __all__ lists (re-exports are documented at home, so skipped).
            names = getattr(module, "__all__", None) or [n for n in vars(module) if not n.startswith("_")]
            for name in names:
                obj = getattr(module, name)
                ours = name not in skipped and getattr(obj, "__module__", None) == target
                if ours and (inspect.isclass(obj) or inspect.isfunction(obj)):
                    found.append((f"{target}.{name}", obj))
                    found.extend(_shown_methods(f"{target}.{name}", obj))
            continue
        obj = getattr(importlib.import_module(module_name), attr)
        found.append((target, obj))
        members = re.search(r":members:((?:.*\n?)(?:      .*\n?)*)", options)
        if members:
            for member in re.split(r"[,\s]+", members.group(1).strip()):
                value = inspect.getattr_static(obj, member)
                if isinstance(value, (staticmethod, classmethod)):
                    value = value.__func__
                # Methods a public class inherits from a private module are that module's to document.
                if inspect.isfunction(value) and value.__module__ in PUBLIC_MODULES:
                    found.append((f"{target}.{member}", value))
    return found


def _shown_methods(name: str, cls: object) -> list[tuple[str, object]]:
    """The methods ``automodule :members:`` shows of a class: its own public ones with a docstring."""
    if not inspect.isclass(cls):
        return []
    shown = []
    for member, value in vars(cls).items():
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if not member.startswith("_") and inspect.isfunction(value) and value.__doc__:
            shown.append((f"{name}.{member}", value))
    return shown


def _modules_with_all() -> list[str]:
    """Every module of the package that declares ``__all__``, read from the source (not imported)."""
    package = API_RST.parents[1] / "airflow_provider_reve"
    found = []
    for path in sorted(package.rglob("*.py")):
        if re.search(r"^__all__\b", path.read_text(encoding="utf-8"), flags=re.M):
            parts = path.relative_to(package.parent).with_suffix("").parts
            found.append(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
    return found


def _missing(name: str, obj: object) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    function = obj.__init__ if inspect.isclass(obj) else obj  # type: ignore[misc]
    if inspect.isclass(obj) and "__init__" not in vars(obj):
        parameters: list[str] = []  # documented where the constructor is defined
    else:
        parameters = [
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.name not in _NOT_DOCUMENTED_HERE and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
        ]
    missing = [f"{name}: no ':param {p}:'" for p in parameters if not re.search(rf":param {p}:", doc)]
    if not inspect.isclass(obj):
        returns = inspect.signature(obj).return_annotation  # type: ignore[arg-type]
        gives_something = returns not in (None, "None", inspect.Signature.empty, "NoReturn")
        if gives_something and not re.search(r":returns?:", doc):
            missing.append(f"{name}: no ':return:'")
    if not doc:
        missing.append(f"{name}: no docstring")
    return missing


def test_the_api_reference_covers_every_stable_public_module():
    text = API_RST.read_text(encoding="utf-8")
    for module in PUBLIC_MODULES:
        assert module in text, f"docs/api.rst does not document {module}"


def test_every_module_with_an_all_is_in_the_api_reference_or_left_out_with_a_reason():
    text = API_RST.read_text(encoding="utf-8")
    undecided = [
        module
        for module in _modules_with_all()
        # documented as a module, or by a directive naming one of its classes or functions
        if module not in NOT_IN_THE_REFERENCE
        and not re.search(rf"auto\w+:: {re.escape(module)}(\.\w+)?\n", text)
    ]
    assert undecided == []
    assert set(PUBLIC_MODULES).isdisjoint(NOT_IN_THE_REFERENCE)


@pytest.mark.parametrize("module", PUBLIC_MODULES)
def test_every_parameter_and_return_value_in_the_api_reference_is_documented(module, monkeypatch):
    # conftest swaps settle_time for time.time in every test; the reference documents the real one.
    monkeypatch.setattr("airflow_provider_reve.triggers.reve.settle_time", REAL_SETTLE_TIME)
    missing = [
        problem
        for name, obj in _documented_objects()
        if name.startswith(module + ".")
        for problem in _missing(name, obj)
    ]
    assert missing == []
