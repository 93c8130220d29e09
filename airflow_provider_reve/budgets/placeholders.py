"""Placeholders for another task's XCom, so ``airflow reve estimate`` can call a ``@task.reve``
function before the run: the function writes its prompt from them as it would from the real
value, and what a priced field took from them is found afterwards
(:func:`~airflow_provider_reve.budgets.placeholders.holds_placeholder`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

__all__ = ["FROM_XCOM_TEXT", "XComPlaceholder", "holds_placeholder", "with_placeholders"]

#: What a placeholder reads as, and the prompt a template read from XCom is priced with.
FROM_XCOM_TEXT = "<from XCom>"


class XComPlaceholder(str):
    """Stands in for another task's XCom value in a ``@task.reve`` function's arguments.

    It reads as the text ``<from XCom>`` (so it joins, formats and concatenates into a prompt) and
    answers the idioms the docs show for XCom with more placeholders: a slice (``results[:]``) is
    a list of ``length`` of them, an index or key (``results[0]``, ``result["files"]``,
    ``.get(...)``) is one, iteration, ``keys()``, ``values()`` and ``items()`` give ``length`` and
    ``len()`` is ``length``.
    """

    length: int

    def __new__(cls, length: int = 1) -> XComPlaceholder:
        placeholder = super().__new__(cls, FROM_XCOM_TEXT)
        placeholder.length = length
        return placeholder

    def _many(self) -> list[XComPlaceholder]:
        return [XComPlaceholder(self.length) for _ in range(self.length)]

    def __getitem__(self, key: Any) -> Any:  # type: ignore[override]
        return self._many()[key] if isinstance(key, slice) else XComPlaceholder(self.length)

    def __iter__(self) -> Iterator[XComPlaceholder]:  # type: ignore[override]
        return iter(self._many())

    def __len__(self) -> int:
        return self.length

    def __contains__(self, key: object) -> bool:  # type: ignore[override]
        return True  # ``if "files" in result``: what the run's XCom would hold

    def get(self, key: Any, default: Any = None) -> XComPlaceholder:
        return XComPlaceholder(self.length)

    def keys(self) -> list[XComPlaceholder]:
        return self._many()

    def values(self) -> list[XComPlaceholder]:
        return self._many()

    def items(self) -> list[tuple[XComPlaceholder, XComPlaceholder]]:
        return list(zip(self._many(), self._many(), strict=True))


def with_placeholders(value: Any, items: int) -> Any:
    """``value`` with every XCom argument (``task.output``, ``results``...) a placeholder.

    :param value: a ``@task.reve`` task's ``op_args`` or ``op_kwargs``.
    :param items: how many items each placeholder holds.
    :return: a copy; ``value`` itself is left as it is.
    """
    from airflow.sdk.definitions.xcom_arg import XComArg

    if isinstance(value, XComArg):
        return XComPlaceholder(items)
    if isinstance(value, dict):
        return {key: with_placeholders(entry, items) for key, entry in value.items()}
    if isinstance(value, list):
        return [with_placeholders(entry, items) for entry in value]
    if type(value) is tuple:  # op_args; a named tuple is a value of the user's, left as it is
        return tuple(with_placeholders(entry, items) for entry in value)
    return value


def holds_placeholder(value: Any) -> bool:
    """Whether ``value`` is, or holds (in a list, tuple or dict), a placeholder.

    :param value: a request field as the function set it.
    :return: ``True`` when part of it came from another task's XCom.
    """
    if isinstance(value, XComPlaceholder):
        return True
    if isinstance(value, dict):
        return any(holds_placeholder(entry) for entry in value.values())
    if isinstance(value, (list, tuple)):
        return any(holds_placeholder(entry) for entry in value)
    return False
