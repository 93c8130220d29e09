"""The Python API reference documents every parameter and return value of the public surface.

The reference (docs/api.rst) is generated from these docstrings; a parameter a docstring forgets is
a parameter the reference never mentions. Covered: every public class and function that the
stable public modules define themselves, and the public methods the reference lists.
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
    "airflow_provider_reve.operators.reve",
    "airflow_provider_reve.operators.download",
    "airflow_provider_reve.sensors.reve",
    "airflow_provider_reve.triggers.reve",
    "airflow_provider_reve.decorators.reve",
    "airflow_provider_reve.links",
    "airflow_provider_reve.models",
    "airflow_provider_reve.exceptions",
    "airflow_provider_reve.testing.fake_server",
    "airflow_provider_reve.testing.cluster",
    "airflow_provider_reve.testing.production",
]
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
            for name, obj in vars(module).items():
                ours = not name.startswith("_") and getattr(obj, "__module__", None) == target
                if ours and (inspect.isclass(obj) or inspect.isfunction(obj)):
                    found.append((f"{target}.{name}", obj))
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
