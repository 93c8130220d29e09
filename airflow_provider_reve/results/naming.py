"""The caller's names and data for stored results: ``file_name`` templates and ``metadata``.

Both are checked *before anything is paid for* (the generate operator calls
:func:`check_file_name` and :func:`check_metadata` before it submits), and again where the files
are stored, with the same functions. The invariants:

* **A name never leaves its folder.** A rendered name is ASCII ``[A-Za-z0-9._-]`` only: no ``/``
  or ``\\``, no ``..``, no control character, no leading ``.`` or ``-`` (hidden spools and
  options), at most :data:`MAX_NAME_CHARS`; it never starts like a file the provider writes
  itself (``reve-manifest-``, ``reve-owner-``) and is never the ``superseded`` folder.
* **A name never collides within a store.** A template without ``{index}`` gets ``_<index>``
  appended for a task with more than one result; two results of one store that still end up
  with the same name refuse the store before any file is written.
* **Placeholders are few and explicit:** ``{index}``, ``{reve_task_id}`` (reduced like the
  default name) and ``{metadata[key]}``. Anything else in braces is refused, naming them.
* **Metadata is plain JSON**, a dict with string keys, at most :data:`MAX_METADATA_BYTES` as
  compact JSON: it travels in XCom, the manifest, Asset event ``extra`` and the gallery.
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_reve.exceptions import ReveValidationError
from airflow_provider_reve.mixins.rendered import parse_rendered_literal

if TYPE_CHECKING:
    from airflow_provider_reve.models import ReveTask

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_NAME_CHARS",
    "RESERVED_PREFIXES",
    "SUPERSEDED_FOLDER",
    "check_file_name",
    "check_metadata",
    "is_result_stem",
    "render_file_stem",
    "result_stems",
]

#: The longest file name a ``file_name`` template may render, in characters.
MAX_NAME_CHARS = 120
#: The largest ``metadata``, as JSON, in bytes.
MAX_METADATA_BYTES = 16 * 1024
#: Files the provider writes itself into a destination: a result must never take their names.
RESERVED_PREFIXES = ("reve-manifest-", "reve-owner-")
#: Where a cleared task instance's earlier files are moved (see ``results.supersede``).
SUPERSEDED_FOLDER = "superseded"
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_PLACEHOLDERS = ("index", "reve_task_id", "metadata")
# Stands in for the Reve task id before it exists: checks run before anything is submitted.
_SAMPLE_ID = "reve-task-id"


def check_metadata(value: Any) -> dict[str, Any] | None:
    """``metadata`` as a JSON-ready dict (a template may render it as a JSON/Python string).

    :param value: the ``metadata`` value, rendered.
    :return: the dict, or ``None`` when none was given.
    :raises ReveValidationError: for a value that is not a JSON-ready mapping.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        if not text:
            return None
        value = parse_rendered_literal(text) if text[:1] == "{" else value
    if not isinstance(value, Mapping):
        raise ReveValidationError(
            f"metadata must be a dict (JSON object), got {type(value).__name__}; a template renders a "
            "string: write a JSON object, or set render_template_as_native_obj=True"
        )
    odd = sorted(repr(key) for key in value if not isinstance(key, str))
    if odd:
        raise ReveValidationError(f"metadata keys must be strings, got {', '.join(odd)}")
    try:
        text = json.dumps(dict(value), allow_nan=False, separators=(",", ":"), sort_keys=True)
    except (TypeError, ValueError) as error:
        raise ReveValidationError(
            f"metadata must be JSON (str, number, bool, null, list, dict): {error}"
        ) from None
    if len(text.encode()) > MAX_METADATA_BYTES:
        raise ReveValidationError(
            f"metadata is {len(text.encode())} bytes as JSON, more than {MAX_METADATA_BYTES}: it is "
            "copied into XCom, every manifest entry and Asset events; keep references, not content"
        )
    result: dict[str, Any] = json.loads(text)  # a plain copy: no tuples, no subclasses
    return result


def check_file_name(
    template: Any, metadata: Mapping[str, Any] | None = None, *, metadata_per_task: bool = False
) -> str | None:
    """Refuse a ``file_name`` template that could escape, collide or not render; return it.

    Rendered here with a stand-in Reve task id, so every mistake shows before paying.
    ``metadata_per_task``: each task brings its own metadata (the download operator), so a
    ``{metadata[key]}`` is checked per task at store time, before any file is fetched.

    :param template: the ``file_name`` value, rendered by Jinja.
    :param metadata: the ``metadata`` its ``{metadata[key]}`` fields read.
    :param metadata_per_task: see above.
    :return: the template, or ``None`` when none was given.
    :raises ReveValidationError: naming what is wrong with it.
    """
    if template is None:
        return None
    if not isinstance(template, str) or not template.strip():
        raise ReveValidationError(f"file_name must be a non-empty string template, got {template!r:.80}")
    template = template.strip()
    for _, field, spec, conversion in _parse(template):
        if field is None:
            continue
        if spec or conversion:
            raise ReveValidationError(f"file_name: {{{field}}} takes no format spec or conversion")
    for index in (0, 1):
        render_file_stem(
            template,
            reve_task_id=_SAMPLE_ID,
            index=index,
            count=2,
            metadata=_AnyKey() if metadata_per_task else metadata,
        )
    return template


def render_file_stem(
    template: str,
    *,
    reve_task_id: str,
    index: int,
    count: int,
    metadata: Mapping[str, Any] | None,
) -> str:
    """The stem (name without extension) of result ``index`` of ``count``; refused if unsafe.

    :param template: the ``file_name`` template.
    :param reve_task_id: the Reve task id (``{task_id}``).
    :param index: the result's index in its task (``{index}``).
    :param count: the task's number of results.
    :param metadata: what ``{metadata[key]}`` reads.
    :return: the stem.
    :raises ReveValidationError: for a stem that is unsafe as a file name.
    """
    from airflow_provider_reve.results.storage import safe_stem  # _storage imports this module

    fields = [field for _, field, _, _ in _parse(template) if field is not None]
    values: dict[str, Any] = {
        "index": index,
        "reve_task_id": safe_stem(reve_task_id),
        "metadata": _MetadataView(metadata if metadata is not None else {}),
    }
    for field in fields:
        root = re.split(r"[.\[]", field, maxsplit=1)[0]
        if root not in _PLACEHOLDERS or (root != "metadata" and root != field):
            raise ReveValidationError(
                f"file_name: unknown placeholder {{{field}}}; use {{index}}, {{reve_task_id}} or "
                "{metadata[key]} (Jinja's {{ ... }} is rendered before)"
            )
        if "." in field:
            raise ReveValidationError(f"file_name: write {{metadata[key]}}, not {{{field}}}")
    try:
        stem = template.format(**values)
    except (KeyError, IndexError, ValueError) as error:
        raise ReveValidationError(f"file_name {template!r:.120} does not render: {error}") from None
    if "index" not in fields and count > 1:
        stem = f"{stem}_{index}"  # several results need several names
    _check_stem(stem, template)
    return stem


def is_result_stem(stem: str) -> bool:
    """Whether ``stem`` is a name :func:`render_file_stem` could have produced.

    :param stem: a file name without its extension.
    :return: ``True`` when it could be a result's.
    """
    return _stem_problem(stem) is None


def _check_stem(stem: str, template: str) -> None:
    problem = _stem_problem(stem)
    if problem is not None:
        raise ReveValidationError(
            f"file_name {template!r:.120} renders {stem!r:.160}, which {problem}; nothing was stored "
            "outside the destination"
        )


def _stem_problem(stem: str) -> str | None:
    if not stem:
        return "is empty"
    if len(stem) > MAX_NAME_CHARS:
        return f"is longer than {MAX_NAME_CHARS} characters"
    if "/" in stem or "\\" in stem:
        return "holds a path separator (a name may not leave its folder)"
    if ".." in stem:
        return "holds '..'"
    if not _NAME.fullmatch(stem):
        return "holds characters other than A-Z a-z 0-9 . _ - (control characters, spaces, ':' ...)"
    if stem[0] in ".-":
        return "starts with '.' or '-'"
    if stem.startswith(RESERVED_PREFIXES) or stem == SUPERSEDED_FOLDER:
        return "is reserved for the provider's own files (manifests, the superseded folder)"
    return None


def _parse(template: str) -> list[tuple[str, str | None, str | None, str | None]]:
    try:
        return list(string.Formatter().parse(template))
    except ValueError as error:
        raise ReveValidationError(
            f"file_name {template!r:.120}: {error} (a literal brace is written {{{{ or }}}})"
        ) from None


class _MetadataView:
    """``{metadata[key]}``: only top-level keys, only scalar values, a clear error otherwise."""

    def __init__(self, metadata: Mapping[str, Any]) -> None:
        self._metadata = metadata

    def __getitem__(self, key: str) -> str:
        if key not in self._metadata:
            raise ReveValidationError(
                f"file_name uses {{metadata[{key}]}}, but metadata has no {key!r} "
                f"(keys: {sorted(self._metadata)[:20]})"
            )
        value = self._metadata[key]
        if isinstance(value, (dict, list)) or value is None:
            raise ReveValidationError(f"file_name uses {{metadata[{key}]}}, which is not a string or number")
        return str(value)


class _AnyKey(dict):  # type: ignore[type-arg]
    """Metadata not known yet: every key holds a harmless stand-in value."""

    def __contains__(self, key: object) -> bool:
        return True

    def __getitem__(self, key: str) -> str:
        return "value"


def result_stems(tasks: Sequence[ReveTask], name_template: str | None) -> dict[tuple[str, int], str]:
    """Every result's file name without extension; refused when two would be the same.

    :param tasks: the finished Reve tasks.
    :param name_template: the ``file_name`` template; ``None``: the default names.
    :return: the stem by ``(Reve task id, result index)``.
    :raises ReveValidationError: when two results would share a name.
    """
    from airflow_provider_reve.results.storage import safe_stem  # _storage imports this module

    stems: dict[tuple[str, int], str] = {}
    for task in tasks:
        count = len(task.result_urls)
        for index in range(count):
            if name_template is None:
                stem = f"{safe_stem(task.task_id)}_{index}"
            else:
                stem = render_file_stem(
                    name_template, reve_task_id=task.task_id, index=index, count=count, metadata=task.metadata
                )
            stems[(task.task_id, index)] = stem
    taken: dict[str, tuple[str, int]] = {}
    for key, stem in stems.items():
        other = taken.setdefault(stem.lower(), key)  # lower: case-insensitive filesystems
        if other != key:
            raise ReveValidationError(
                f"file_name {name_template!r} names result {other[1]} of Reve task {other[0]} and "
                f"result {key[1]} of Reve task {key[0]} both {stem!r}: add {{reve_task_id}} or "
                "{metadata[key]} with a distinct value; nothing was stored"
            )
    return stems
