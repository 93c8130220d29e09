"""The documentation site builds with no warning, its links resolve and its code runs.

``make docs`` builds docs/ with ``-W --keep-going -n``; this test does the same build into a
temporary folder, so ``make test`` fails on a warning, a reference to one of our objects that does
not resolve, or a how-to whose ``[START ...]`` marker left its example DAG. It then reads the HTML:
every internal link and image must point at a page (and anchor) the build made, and every code
block must be an include from an example DAG, a block marked ``fragment``, or a block marked
``runnable``, which runs here against the fake Reve API.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
CODE_BLOCK_KINDS = {"example-dag", "fragment", "runnable"}
RUNNABLE = re.compile(r"```\{code-block\} python\n:class: runnable\n\n(.*?)```", re.S)

pytestmark = pytest.mark.docs


class _Page(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: set[str] = set()
        self.links: list[str] = []
        self.code_blocks: list[set[str]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        if found.get("id"):
            self.ids.add(found["id"] or "")
        if tag == "a" and found.get("href"):
            self.links.append(found["href"] or "")
        if tag == "img" and found.get("src"):
            self.links.append(found["src"] or "")
        classes = set((found.get("class") or "").split())
        if tag == "div" and any(c.startswith("highlight-") for c in classes):
            self.code_blocks.append(classes)


@pytest.fixture(scope="module")
def built_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("docs")
    env = {**os.environ, "AIRFLOW_HOME": str(out / "airflow-home"), "PYTHONPATH": str(ROOT)}
    build = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n", "-q", "-b", "html",
         "-d", str(out / "doctrees"), str(DOCS), str(out / "html")],
        capture_output=True, text=True, env=env, timeout=600,
    )  # fmt: skip
    warnings = [line for line in build.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert build.returncode == 0 and not warnings, "\n".join(warnings) or build.stderr[-3000:]
    return out / "html"


def _pages(site: Path) -> dict[Path, _Page]:
    pages = {}
    for path in sorted(site.rglob("*.html")):
        page = _Page()
        page.feed(path.read_text(encoding="utf-8"))
        pages[path] = page
    return pages


def test_the_docs_build_with_no_warning_and_have_every_page(built_site):
    for page in ["index", "quickstart", "connection", "errors", "costs", "scale", "testing", "security",
                 "changelog", "api", "budgets", "features", "howto/generate", "howto/taskflow",
                 "howto/sensor", "howto/download", "howto/assets", "howto/gallery"]:  # fmt: skip
        assert (built_site / f"{page}.html").is_file(), page


def test_every_internal_link_and_image_of_the_site_resolves(built_site):
    pages = _pages(built_site)
    broken = []
    for path, page in pages.items():
        for link in page.links:
            parts = urlsplit(link)
            if parts.scheme or link.startswith("//"):
                continue  # an external link: checking it needs the network
            target = (path.parent / unquote(parts.path)).resolve() if parts.path else path
            if not target.is_file():
                broken.append(f"{path.relative_to(built_site)}: {link}")
            elif parts.fragment and target.suffix == ".html" and parts.fragment not in pages[target].ids:
                broken.append(f"{path.relative_to(built_site)}: {link} (no such anchor)")
    assert broken == []


def test_every_code_block_is_an_example_dag_include_a_fragment_or_run_by_a_test(built_site):
    unmarked = [
        f"{path.relative_to(built_site)}: {sorted(classes)}"
        for path, page in _pages(built_site).items()
        if not path.name.startswith(("genindex", "search"))
        for classes in page.code_blocks
        if not classes & CODE_BLOCK_KINDS
    ]
    assert unmarked == []


def _runnable_blocks() -> list[tuple[str, str]]:
    blocks = []
    for source in sorted(DOCS.rglob("*.md")):
        text = source.read_text(encoding="utf-8")
        for match in RUNNABLE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            blocks.append((f"{source.relative_to(DOCS)}:{line}", match.group(1)))
    return blocks


def test_the_docs_have_runnable_code_blocks():
    assert len(_runnable_blocks()) >= 3


@pytest.mark.parametrize(("where", "code"), _runnable_blocks(), ids=[w for w, _ in _runnable_blocks()])
def test_a_runnable_code_block_of_the_docs_runs_against_the_fake_api(where, code, tmp_path):
    with FakeReveServer(async_seconds=0.2) as server:
        connection = {"conn_type": "reve", "host": server.url, "password": DEFAULT_API_KEY}
        env = {
            **os.environ,
            "AIRFLOW_HOME": str(tmp_path / "airflow-home"),
            "AIRFLOW_CONN_REVE_DEFAULT": json.dumps(connection),
            "REVE_DOCS_BASE_URL": server.url,
            "REVE_DOCS_API_KEY": DEFAULT_API_KEY,
            "PYTHONPATH": str(ROOT),
        }
        run = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path
        )
    assert run.returncode == 0, f"{where}:\n{run.stdout[-2000:]}\n{run.stderr[-3000:]}"
