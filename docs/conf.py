"""Sphinx configuration of the airflow-provider-reve documentation.

Built offline by ``make docs`` (``sphinx-build -W --keep-going -n``): any warning fails the build,
and ``-n`` (nitpicky) makes every reference to one of our own objects that does not resolve a
warning. References to other projects' objects are ignored below (there is no network to fetch
their inventories), and so are references to private modules, which the API reference leaves out
on purpose.
"""

from __future__ import annotations

import sys
from pathlib import Path

from docutils.parsers.rst import directives
from sphinx.directives.code import LiteralInclude

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))  # document this checkout, not whatever copy is installed

from airflow_provider_reve import __version__  # noqa: E402

#: Where the example DAGs live. The how-to pages include code from them through
#: ``exampleinclude`` (below), so moving them is a one-line change here.
EXAMPLE_DAGS_DIR = ROOT / "airflow_provider_reve" / "example_dags"

project = "airflow-provider-reve"
author = "The airflow-provider-reve authors"
copyright = "2026, The airflow-provider-reve authors"
version = release = __version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = f"airflow-provider-reve {release}"
html_static_path: list[str] = []

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_description_target = "documented"

nitpicky = True
nitpick_ignore_regex = [
    # Other projects' objects: Airflow, the standard library, requests, aiohttp... Without network
    # there is no intersphinx inventory to resolve them against.
    (
        r"py:.*",
        r"(airflow|aiohttp|requests|urllib3|datetime|collections|typing|pathlib|asyncio|signal"
        r"|subprocess|types|contextlib|dataclasses|logging|pytest|argparse|threading|sqlalchemy"
        r"|zoneinfo|urllib)(\..*)?",
    ),
    (
        r"py:.*",
        r"(Context|ObjectStoragePath|TaskInstanceKey|BaseOperator|BaseOperatorLink|TaskDecorator"
        r"|Path|Any|Mapping|Sequence|Callable|AsyncIterator|TriggerEvent|T|Params|NoReturn|timedelta"
        r"|Engine|AirflowException|AirflowFailException|AirflowSkipException)",
    ),
    # Private modules and their names are not part of the API reference: the classes below appear
    # in signatures of public methods, by their unqualified names.
    (r"py:.*", r"airflow_provider_reve(\.[a-z_]+)*\._.*"),
    (r"py:class", r"(RetryPolicy|ConnectionSettings|StoredResults|ClusterQueries|FakeState|SubmissionLog)"),
    # The gallery's web app: the plugin serves it; its modules are not an API.
    (r"py:mod", r"airflow_provider_reve\.plugins\.app(\..*)?"),
    # What a finished task's store returns; results.storage is left out of the reference while
    # its split settles. ``Key`` is results.manifest's ``(Reve task id, index)`` alias.
    (r"py:class", r"(airflow_provider_reve\.results\.storage\.StoredResults|Key)"),
    # The type variables of ProductionAirflow.wait_until's probe and of the retry loops' result.
    (r"py:class", r"airflow_provider_reve\.(testing\.production|client\.retry)\.T"),
]


class ExampleInclude(LiteralInclude):
    """``exampleinclude``: a ``literalinclude`` of one ``[START name]`` .. ``[END name]`` block of
    an example DAG, dedented. The DAG's file name is relative to ``EXAMPLE_DAGS_DIR``.

    A marker that is missing from the file is a warning, so the build (``-W``) fails.
    """

    option_spec = {**LiteralInclude.option_spec, "marker": directives.unchanged_required}

    def run(self):  # type: ignore[no-untyped-def]
        path = Path(EXAMPLE_DAGS_DIR, self.arguments[0])
        # literalinclude reads a path that starts with "/" relative to the docs' source folder.
        self.arguments[0] = "/" + str(Path(*[".."] * 1, path.relative_to(ROOT)))
        marker = self.options.pop("marker")
        self.options.setdefault("start-after", f"[START {marker}]")
        self.options.setdefault("end-before", f"[END {marker}]")
        self.options.setdefault("dedent", None)
        self.options.setdefault("language", "python")
        self.options["class"] = [*self.options.get("class", []), "example-dag"]
        self.options.setdefault("caption", f"{path.name}")
        return super().run()


def setup(app):  # type: ignore[no-untyped-def]
    app.add_directive("exampleinclude", ExampleInclude)
    return {"parallel_read_safe": True}
