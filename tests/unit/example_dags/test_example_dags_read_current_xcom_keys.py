"""The shipped example DAGs are what users copy: they must not read the deprecated XCom key.

``task_id`` in a Reve XCom is deprecated (README, "XCom") and goes away in the next release; an
example that reads it would break for everyone who copied it.
"""

from __future__ import annotations

import ast
from pathlib import Path

import airflow_provider_reve.example_dags as example_dags

EXAMPLES = sorted(Path(example_dags.__file__).parent.glob("example_*.py"))


def _deprecated_key_reads(source: str) -> list[int]:
    return [
        node.lineno
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Subscript)
        and isinstance(node.slice, ast.Constant)
        and node.slice.value == "task_id"
    ]


def test_example_dags_read_reve_task_id_not_the_deprecated_task_id_key() -> None:
    assert EXAMPLES
    found = {path.name: lines for path in EXAMPLES if (lines := _deprecated_key_reads(path.read_text()))}
    assert found == {}
