"""Public names that load on first use (PEP 562), for modules a DAG file imports at parse time.

A package re-exports names from its submodules without importing them: its ``__getattr__``
imports the submodule when a name is first read, and keeps the value, so the next read is a
plain attribute read. Used by the package root, ``client``, ``budgets`` and ``operators.reve``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    namespace: dict[str, Any], homes: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The ``__getattr__`` and ``__dir__`` of a module that re-exports ``homes`` on first use.

    :param namespace: the module's ``globals()``: its ``__name__``, ``__package__`` and
        ``__all__``; a name, once loaded, is kept there.
    :param homes: each public name -> the module that defines it, relative to ``__package__``
        (``"client.retry"`` from the package root, ``"download"`` from ``operators.reve``).
    :return: ``(__getattr__, __dir__)``, to assign at the module's top level.
    """
    module, package = namespace["__name__"], namespace["__package__"]

    def __getattr__(name: str) -> Any:
        home = homes.get(name)
        if home is None:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(f".{home}", package), name)
        namespace[name] = value  # the next lookup is a plain attribute read
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(namespace.get("__all__", ())))

    return __getattr__, __dir__
