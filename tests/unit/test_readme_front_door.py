"""README.md is a short front door whose every link leads somewhere.

The full documentation lives in the Sphinx site under docs/ (built and link-checked by
tests/unit/test_docs_site.py). README.md stays short enough to read on one screen or two, and a user
who follows any of its links lands on a file of this repository (and, for a link with an anchor
into a docs page, on a heading that page has), or on a well-formed http(s) address.
"""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
MAX_README_LINES = 150

# [text](target) and ![alt](target); a target ends at the first space or closing parenthesis.
MARKDOWN_LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _readme_links() -> list[str]:
    text = FENCE.sub("", README.read_text(encoding="utf-8"))  # code is not a link
    return MARKDOWN_LINK.findall(text)


def _heading_anchors(markdown: Path) -> set[str]:
    """The anchors MyST gives a page's headings (``myst_heading_anchors``), GitHub-style slugs."""
    anchors = set()
    for line in FENCE.sub("", markdown.read_text(encoding="utf-8")).splitlines():
        heading = re.match(r"^#{1,6}\s+(.*)$", line)
        if heading:
            title = heading.group(1).strip().lower()
            slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
            anchors.add(slug)
    return anchors


def test_the_readme_is_at_most_150_lines():
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines"


def test_the_readme_has_links_to_the_docs_changelog_security_contributing_and_license():
    targets = {urlsplit(link).path for link in _readme_links()}
    for needed in ["docs/index.md", "CHANGELOG.md", "docs/security.md", "CONTRIBUTING.md", "LICENSE"]:
        assert needed in targets, needed


def test_every_relative_link_of_the_readme_resolves_to_a_file_and_heading_of_the_repo():
    broken = []
    for link in _readme_links():
        parts = urlsplit(link)
        if parts.scheme or link.startswith("//"):
            continue
        target = (ROOT / unquote(parts.path)).resolve() if parts.path else README
        if not target.is_file() or ROOT not in target.parents:
            broken.append(link)
        elif parts.fragment and target.suffix == ".md" and parts.fragment not in _heading_anchors(target):
            broken.append(f"{link} (no such heading)")
    assert broken == []


def test_every_web_link_of_the_readme_is_a_well_formed_https_address():
    malformed = []
    for link in _readme_links():
        parts = urlsplit(link)
        if not parts.scheme and not link.startswith("//"):
            continue
        if parts.scheme != "https" or not re.fullmatch(r"[a-z0-9.-]+\.[a-z]{2,}", parts.netloc or ""):
            malformed.append(link)
    assert malformed == []
