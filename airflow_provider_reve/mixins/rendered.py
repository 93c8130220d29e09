"""Turns what a Jinja template renders into the types the Reve API expects.

Unless a DAG sets ``render_template_as_native_obj=True``, every templated field renders to a
string: ``num_images="{{ params.n }}"`` arrives as ``"2"``, a list of URLs as ``"['https://…']"``.
Each request field accepts that string form when it means one clear value; anything else is
refused with a message that names the field and ``render_template_as_native_obj``.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping
from typing import Any

from airflow_provider_reve.exceptions import ReveValidationError

__all__ = [
    "coerce_extra_params",
    "coerce_rendered",
    "parse_rendered_literal",
]

_INTEGER = re.compile(r"[+-]?\d+")
_NUMBER = re.compile(r"[+-]?(\d+(\.\d*)?|\.\d+)")
_TRUE, _FALSE = frozenset({"true", "yes", "1"}), frozenset({"false", "no", "0"})
_HINT = "(or set render_template_as_native_obj=True on the DAG so templates render native values)"


def coerce_rendered(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with string renderings of numbers, booleans and lists turned into values.

    :param params: the rendered request fields.
    :return: the fields with typed values.
    """
    converters = {
        "num_images": _whole_number,
        "duration": _number,
        "generate_audio": _boolean,
        "image_urls": _list_of_urls,
    }
    return {
        name: converters[name](name, value) if name in converters and isinstance(value, str) else value
        for name, value in params.items()
    }


def coerce_extra_params(value: Any) -> Any:
    """``extra_params`` rendered to a string (JSON or a Python dict's repr) becomes the dict.

    :param value: the rendered ``extra_params``.
    :return: the dict, or ``value`` unchanged.
    """
    if not isinstance(value, str):
        return value
    parsed = parse_rendered_literal(value)
    if not isinstance(parsed, dict):
        raise ReveValidationError(
            f"extra_params must be a dict; the template rendered {_shown(value)} {_HINT}"
        )
    return parsed


def _whole_number(name: str, text: str) -> int:
    if _INTEGER.fullmatch(text.strip()):
        return int(text.strip())
    raise ReveValidationError(f"{name} must be a whole number, got the string {_shown(text)} {_HINT}")


def _number(name: str, text: str) -> int | float:
    stripped = text.strip()
    if _INTEGER.fullmatch(stripped):
        return int(stripped)
    if _NUMBER.fullmatch(stripped):
        return float(stripped)
    raise ReveValidationError(f"{name} must be a number, got the string {_shown(text)} {_HINT}")


def _boolean(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ReveValidationError(f"{name} must be true or false, got the string {_shown(text)} {_HINT}")


def _list_of_urls(name: str, text: str) -> list[Any]:
    stripped = text.strip()
    if not stripped.startswith("["):
        # One URL rendered on its own (``image_urls="{{ params.image }}"``) means a list of one.
        return [stripped]
    parsed = parse_rendered_literal(stripped)
    if not isinstance(parsed, list):
        raise ReveValidationError(f"{name} must be a list of URLs, got the string {_shown(text)} {_HINT}")
    return parsed


def parse_rendered_literal(text: str) -> Any:
    """JSON first, then a Python literal (how a dict or list renders without native objects);
    the text itself when it is neither.

    :param text: a rendered value.
    :return: the value.
    """
    try:
        return json.loads(text)
    except (ValueError, RecursionError):  # deeply nested JSON overflows the parser's stack
        pass
    try:
        return ast.literal_eval(text.strip())
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return text


def _shown(text: str) -> str:
    return repr(text if len(text) <= 80 else text[:77] + "...")
