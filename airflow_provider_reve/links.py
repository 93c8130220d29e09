"""The "Reve result" extra link of a task in the Airflow UI (Details -> Extra links in 3.3).

When the task stored its files, the link opens the stored copy of its first result through the
Reve gallery's file route (``reve/media?...``, relative, so the UI resolves it against its own
base URL, a sub-path deployment included); the route serves a file only to users who may read
the DAG, and only after it proves to be the file the manifest describes. Otherwise it opens the
first result URL, which expires.

How Airflow 3.3 serves an extra link: when a task's process ends -- finished, failed, or
*deferred* -- the worker calls :meth:`ReveResultLink.get_link` and stores what it returns as the
XCom ``_link_ReveResultLink``; the api-server later reads only that XCom. ``get_link`` therefore
cannot rely on anything kept in memory *between* processes: a deferred task resumes in a new
process. So the operator pushes the URL into its own XCom (:func:`push_result_link`).

``get_link`` runs in the process that just ran the operator, so it first takes what
:func:`push_result_link` remembered on that operator object; the Reve operators start with "no
link yet" (``ReveResultLinkMixin``), so ``get_link`` never reads an XCom that does not exist:
the supervisor logs a missing XCom at ERROR level (``XCom not found``), which on every deferral
taught people to ignore errors. Only an operator that never called :func:`push_result_link` in
this process (someone else's, writing the XCom by hand) is looked up in XCom.

The URL comes from the Reve API, which we do not trust with the user's browser: only a plain
``http(s)://host/...`` URL becomes a link. ``javascript:``, ``data:``, ``file:``, a URL with
``user@`` in front of the host or with control characters gives no link at all.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

from airflow.providers.common.compat.sdk import BaseOperatorLink, XCom

if TYPE_CHECKING:
    from airflow.providers.common.compat.sdk import BaseOperator, Context, TaskInstanceKey

__all__ = [
    "RESULT_URL_XCOM_KEY",
    "ReveResultLink",
    "ReveResultLinkMixin",
    "first_result_url",
    "push_result_link",
    "safe_link",
]

log = logging.getLogger(__name__)

#: The task's own XCom key that holds the link's target (a checked URL, or ``None``).
RESULT_URL_XCOM_KEY = "reve_result_url"
# Signed CDN URLs are long, but not this long; anything longer is not a URL we want in an href.
_MAX_URL_CHARS = 8192
#: The gallery's file route, relative to the UI's base URL (plugins.gallery.URL_PREFIX + "/media",
#: spelled out: this module is imported at DAG-parse time, the plugin module is not).
MEDIA_ROUTE = "reve/media?"
_MEDIA_QUERY = ("dag_id", "run_id", "task_id", "map_index", "reve_task_id", "index")
# The attribute on the running operator that holds the link pushed in this process.
_PUSHED_IN_THIS_PROCESS = "reve_result_link"


class ReveResultLink(BaseOperatorLink):
    """Links a Reve task instance to its first result (image or video) URL."""

    name = "Reve result"

    def get_link(self, operator: BaseOperator, *, ti_key: TaskInstanceKey) -> str:
        """The task instance's first result URL: kept on the operator that just ran, else its XCom.

        :param operator: the task's operator (holds the link pushed in this process, if any).
        :param ti_key: the task instance.
        :return: a URL that :func:`safe_link` accepts, the gallery route to the stored copy
            (see ``stored_link``), or ``""`` (no link).
        """
        if hasattr(operator, _PUSHED_IN_THIS_PROCESS):
            pushed = getattr(operator, _PUSHED_IN_THIS_PROCESS)
            return safe_link(pushed) or stored_link(pushed)
        # Checked again on the way out: the XCom may have been written by an older version of
        # this provider, by a custom XCom backend, or by hand.
        value = XCom.get_value(ti_key=ti_key, key=RESULT_URL_XCOM_KEY)
        return safe_link(value) or stored_link(value)


class ReveResultLinkMixin:
    """The "Reve result" link for an operator that calls :func:`push_result_link` when it has one.

    Until it does, in this process, the link is empty: deferring, failing or skipping before a
    result never makes Airflow look up (and log at ERROR) an XCom that was never written.
    """

    operator_extra_links: Collection[BaseOperatorLink] = (ReveResultLink(),)
    #: What :func:`push_result_link` stored in this process (a checked URL), ``None`` until then.
    reve_result_link: str | None = None


def push_result_link(context: Context, url: str | None) -> None:
    """Remember ``url`` as the target of this task's "Reve result" link.

    Call it when the task has its result, and with ``None`` before deferring (so the link stays
    empty while the task waits). A URL that :func:`safe_link` refuses is stored as ``None``.

    :param context: the task's context (its ``ti`` pushes the XCom).
    :param url: the first result URL, or ``None``.
    """
    link = safe_link(url) or stored_link(url) or None
    if url is not None and link is None:
        # The value itself is not quoted: it came from the API and may carry anything.
        log.warning("No 'Reve result' link for this task: the result URL is not a plain http(s) URL.")
    # ``operator.execute({})`` in a user's own unit test has no task instance: nothing to link.
    ti: Any = context.get("ti") if isinstance(context, Mapping) else None
    if callable(getattr(ti, "xcom_push", None)):
        ti.xcom_push(key=RESULT_URL_XCOM_KEY, value=link)
        # The task runner's finalize() asks the link of this very object (ti.task).
        task = getattr(ti, "task", None) or context.get("task")
        if task is not None:
            setattr(task, _PUSHED_IN_THIS_PROCESS, link)


def stored_result_route(context: Context, entry: Mapping[str, Any]) -> str | None:
    """The gallery's route to the stored file of manifest ``entry`` of this task instance."""
    ti: Any = context.get("ti") if isinstance(context, Mapping) else None
    values = {name: getattr(ti, name, None) for name in ("dag_id", "run_id", "task_id", "map_index")}
    values.update(reve_task_id=entry.get("reve_task_id"), index=entry.get("index"))
    if values["map_index"] is None:
        values["map_index"] = -1
    if any(values[name] is None for name in _MEDIA_QUERY):
        return None
    return MEDIA_ROUTE + urlencode({name: values[name] for name in _MEDIA_QUERY})


def stored_link(value: Any) -> str:
    """``value`` if it is a route :func:`stored_result_route` builds, else ``""``."""
    if not isinstance(value, str) or not value.startswith(MEDIA_ROUTE) or len(value) > _MAX_URL_CHARS:
        return ""
    # urlencode leaves only these: nothing a browser could read as another scheme or host.
    allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-~%+=&")
    return value if all(c in allowed for c in value[len(MEDIA_ROUTE) :]) else ""


def safe_link(url: Any) -> str:
    """``url`` if it is a plain ``http(s)://host/...`` URL a browser may be sent to, else ``""``.

    :param url: anything; only a string can pass.
    :return: ``url`` unchanged, or ``""``.
    """
    if not isinstance(url, str) or not url or len(url) > _MAX_URL_CHARS:
        return ""
    # Browsers drop or reinterpret whitespace and control characters inside an href
    # ("java\tscript:"), so a URL holding any is refused rather than cleaned.
    if any(c <= " " or c == "\x7f" or c == "\\" for c in url):
        return ""
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
    except ValueError:  # e.g. an unbalanced "[" in the host
        return ""
    if parts.scheme.lower() not in ("http", "https") or not hostname:
        return ""
    if "@" in parts.netloc:
        # "https://reve2img.com@evil.example/" goes to evil.example: never a real result URL.
        return ""
    return url


def first_result_url(result: Any) -> str | None:
    """The first result URL in what an operator returns, or ``None``.

    Accepts a :class:`~airflow_provider_reve.models.ReveTask`, its dict, a manifest entry (its
    ``url``), a dict with a ``files`` manifest, or a list of any of these. The URL is not
    checked here: :func:`push_result_link` does that.

    :param result: what an operator or sensor returns.
    :return: the first result URL found, or ``None``.
    """
    from airflow_provider_reve.models import ReveTask

    if isinstance(result, ReveTask):
        return result.result_urls[0] if result.result_urls else None
    if isinstance(result, Mapping):
        if isinstance(result.get("url"), str):
            return result["url"]
        if isinstance(result.get("files"), list) and result["files"]:
            found = first_result_url(result["files"])
            if found:
                return found
        urls = result.get("result_urls")
        if isinstance(urls, Sequence) and not isinstance(urls, str) and urls and isinstance(urls[0], str):
            return urls[0]
        return None
    if isinstance(result, Sequence) and not isinstance(result, (str, bytes)):
        for item in result:
            found = first_result_url(item)
            if found:
                return found
    return None
