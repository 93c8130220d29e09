"""Screenshots of the built documentation site, for CONTRIBUTING.md and release notes.

Run ``make docs`` first, then::

    .venv/bin/python scripts/docs_screenshots.py

It opens the built pages in headless Chromium -- Debian's ``chromium``, driven by Playwright (the
``system`` extra), as the browser tests do; no browser is downloaded -- at 1280x900 and saves what
a reader sees first, one viewport, as PNG files in ``docs/_static/screenshots/``. ``--html`` names
another build folder, ``--out`` another output folder, ``--chromium`` another browser binary.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1280, "height": 900}
#: The built page (relative to the HTML folder) -> the screenshot's file name.
PAGES = {
    "index.html": "docs-home.png",
    "howto/generate.html": "docs-generate.png",
}
#: Keep them small enough to live in the repository.
MAX_BYTES = 300_000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--html", type=Path, default=ROOT / "docs" / "_build" / "html")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "_static" / "screenshots")
    parser.add_argument("--chromium", default=shutil.which("chromium") or "/usr/bin/chromium")
    args = parser.parse_args(argv)

    missing = [page for page in PAGES if not (args.html / page).is_file()]
    if missing:
        print(f"{args.html} has no {', '.join(missing)}: run `make docs` first.", file=sys.stderr)
        return 1
    from playwright.sync_api import sync_playwright

    args.out.mkdir(parents=True, exist_ok=True)
    too_large = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=args.chromium, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT, color_scheme="light")
            for source, name in PAGES.items():
                page.goto((args.html / source).resolve().as_uri())
                page.wait_for_load_state("load")
                target = args.out / name
                page.screenshot(path=str(target))
                size = target.stat().st_size
                shown = target.relative_to(ROOT) if target.is_relative_to(ROOT) else target
                print(f"{shown}: {size:,} bytes")
                if size > MAX_BYTES:
                    too_large.append(name)
        finally:
            browser.close()
    if too_large:
        print(f"larger than {MAX_BYTES:,} bytes: {', '.join(too_large)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
