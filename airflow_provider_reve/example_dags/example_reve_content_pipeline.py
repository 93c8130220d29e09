"""### A daily content pipeline: generate, store, make a contact sheet, publish it

Every day this DAG turns the prompts in `prompts/content_pipeline.txt` (shipped beside this file)
into images, stores them, and lays them out on one contact sheet with their prompts as captions.
A second DAG, `example_reve_publish_contact_sheet`, is scheduled on the contact sheet's Asset:
it runs whenever a new sheet lands, never on a clock.

* **`generate`**: one mapped task per prompt (`.partial().expand()`), `deferrable=True`, so every
  generation waits in the triggerer, not in a worker slot. `download_to` stores the results the
  moment they are ready (result URLs are short-lived CDN links). Each instance's XCom is the Reve
  task plus `files`, its manifest (path, bytes, sha256, content type, credits per file); its
  event on the `reve_example_images` Asset carries the Reve task id, model and credits.
* **`contact_sheet`**: opens every stored image with Pillow and writes `contact_sheet.png`
  beside them; its event on the `reve_example_contact_sheet` Asset says where the sheet is.

Prompts are Jinja templates rendered per run with values every run has (`dag_run.run_after`,
`run_id`), never `ds`: a run triggered by hand may have no logical date.

Files go to `$REVE_EXAMPLE_OUTPUT_DIR` (a local folder or any object-store URL Airflow reaches,
e.g. `s3://bucket/reve`; default `<tmp>/reve-example-output`), one folder per run named by when
the run was due and a digest of its id: a run id is chosen by whoever triggers the run and may be
`..` or contain `/`, so it never becomes a path.

Needs Pillow in the workers (`pip install "airflow-provider-reve[examples]"`); parsing does not.
"""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import textwrap
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from airflow.sdk import DAG, Asset, ObjectStoragePath, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator

PROMPTS_FILE = Path(__file__).resolve().parent / "prompts" / "content_pipeline.txt"
TILE = 256  # pixels per image on the contact sheet
CAPTION_LINES = 3


def output_root() -> str:
    """``$REVE_EXAMPLE_OUTPUT_DIR`` as a URL: object-store URLs as they are, folders as ``file://``."""
    configured = os.environ.get("REVE_EXAMPLE_OUTPUT_DIR", "").strip()
    if "://" in configured:
        return configured.rstrip("/")
    folder = Path(configured or Path(tempfile.gettempdir(), "reve-example-output")).absolute()
    return f"file://{folder}"


def read_prompts(path: Path = PROMPTS_FILE) -> list[str]:
    lines = (line.strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def run_folder(dag_run: Any) -> str:
    """``20260301T000000-1a2b3c4d5e6f``: when the run was due, then a digest of its id."""
    digest = hashlib.sha256(dag_run.run_id.encode()).hexdigest()[:12]
    return f"{dag_run.run_after:%Y%m%dT%H%M%S}-{digest}"


def shown(path: ObjectStoragePath) -> str:
    """A local file as a plain absolute path (as in the manifest), anything else as its URL."""
    return path.path if path.protocol in ("", "file", "local") else str(path)


ROOT = output_root()
PROMPTS = read_prompts()
# Rendered per task instance (see user_defined_macros below): the same folder for every
# instance and every retry of a run, a different one for every run.
# [START howto_reve_assets_declare]
RUN_FOLDER = ObjectStoragePath(ROOT + "/{{ run_folder(dag_run) }}")
IMAGES = Asset(name="reve_example_images", uri=f"{ROOT}/images")
CONTACT_SHEET = Asset(name="reve_example_contact_sheet", uri=f"{ROOT}/contact-sheets")
# [END howto_reve_assets_declare]

with DAG(
    dag_id="example_reve_content_pipeline",
    schedule="@daily",
    start_date=datetime(2026, 1, 1),
    catchup=False,
    max_active_runs=1,
    tags=["reve", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=30)},
    user_defined_macros={"run_folder": run_folder},
    doc_md=__doc__,
):
    # [START howto_operator_reve_generate]
    generate = ReveGenerateOperator.partial(
        task_id="generate",
        model="seedream-5",
        aspect_ratio="1:1",
        deferrable=True,
        poll_interval=2,
        max_credits=25,  # one seedream-5 image; refused before submitting if it would cost more
        download_to=RUN_FOLDER,
        outlets=[IMAGES],
    ).expand(prompt=PROMPTS)
    # [END howto_operator_reve_generate]

    @task(outlets=[CONTACT_SHEET])
    def contact_sheet(
        generated: list[dict[str, Any]],
        prompts: list[str],
        folder: ObjectStoragePath,
        run_id: str | None = None,
        outlet_events: Any = None,
    ) -> dict[str, Any]:
        """Lay every stored image out on one sheet, captioned with its (rendered) prompt."""
        from PIL import Image, ImageDraw, ImageFont, ImageOps  # only the workers need Pillow

        # One read of every map index, ordered like the prompts. (Iterating the lazy sequence
        # reads item by item until one is "not found", which Airflow logs at ERROR level.)
        results = list(generated[:])
        captions = prompts if len(prompts) == len(results) else [r["reve_task_id"] for r in results]
        pairs = zip(results, captions, strict=True)
        images = [(entry, caption) for result, caption in pairs for entry in result["files"]]
        if not images:
            raise ValueError("no stored images to put on a contact sheet")

        columns = min(4, len(images))
        rows = -(-len(images) // columns)
        pad, line = 16, 16
        cell = (TILE + pad, TILE + 6 + CAPTION_LINES * line + pad)
        sheet = Image.new("RGB", (pad + columns * cell[0], pad + rows * cell[1]), "white")
        draw = ImageDraw.Draw(sheet)
        font = ImageFont.load_default(size=13)
        for number, (entry, caption) in enumerate(images):
            x, y = pad + (number % columns) * cell[0], pad + (number // columns) * cell[1]
            # The folder (with its connection), plus our own file name from the manifest.
            with (folder / entry["path"].rsplit("/", 1)[-1]).open("rb") as fh, Image.open(fh) as image:
                thumb = ImageOps.contain(image.convert("RGB"), (TILE, TILE))
            sheet.paste(thumb, (x + (TILE - thumb.width) // 2, y + (TILE - thumb.height) // 2))
            for row, text in enumerate(textwrap.wrap(caption, 36)[:CAPTION_LINES]):
                draw.text((x, y + TILE + 6 + row * line), text, fill="black", font=font)

        # Encoded in memory, then written in one go: no half-written sheet for a reader to find.
        encoded = io.BytesIO()
        sheet.save(encoded, format="PNG")
        target = folder / "contact_sheet.png"
        with target.open("wb") as out:
            out.write(encoded.getvalue())

        credits = [r["consumed_credits"] for r in results if r.get("consumed_credits") is not None]
        summary = {
            "path": shown(target),
            "bytes": len(encoded.getvalue()),
            "image_count": len(images),
            "reve_task_ids": [r["reve_task_id"] for r in results],
            "consumed_credits": sum(credits) if credits else None,
            "run_id": run_id,
        }
        # [START howto_reve_asset_event_extra]
        # The Asset event's extra: what a DAG scheduled on the sheet reads to find it.
        outlet_events[CONTACT_SHEET].extra = summary
        # [END howto_reve_asset_event_extra]
        return summary

    contact_sheet(generate.output, PROMPTS, RUN_FOLDER)


# [START howto_reve_asset_scheduled_dag]
with DAG(
    dag_id="example_reve_publish_contact_sheet",
    schedule=[CONTACT_SHEET],  # data-aware: runs when a new contact sheet lands
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["reve", "example"],
    doc_md="""### Publish each new contact sheet

Scheduled on the `reve_example_contact_sheet` Asset that `example_reve_content_pipeline`
updates: runs once per new sheet. Reads the sheet's location from the Asset event's `extra`
and writes a web-sized JPEG preview beside it. A run triggered by hand has no events and
publishes nothing.
""",
):

    @task
    def publish(triggering_asset_events: Any = None) -> list[dict[str, Any]]:
        from PIL import Image, ImageOps

        published = []
        for event in triggering_asset_events[CONTACT_SHEET] if triggering_asset_events else []:
            # A URL in the extra names no connection: pass conn_id= here if yours is not the default.
            sheet = ObjectStoragePath(event.extra["path"])
            with sheet.open("rb") as fh, Image.open(fh) as image:
                preview = ImageOps.contain(image.convert("RGB"), (800, 800))
            encoded = io.BytesIO()
            preview.save(encoded, format="JPEG", quality=85)
            target = sheet.parent / "contact_sheet_preview.jpg"
            with target.open("wb") as out:
                out.write(encoded.getvalue())
            published.append(
                {
                    "contact_sheet": event.extra["path"],
                    "preview": shown(target),
                    "bytes": len(encoded.getvalue()),
                    "size": list(preview.size),
                    "source_run_id": event.source_run_id,
                }
            )
        return published

    publish()
# [END howto_reve_asset_scheduled_dag]
