"""A scheduled content pipeline with Reve: generate, wait without holding a worker, hand files on.

* ``hero_image``: an asynchronous model, waited for in the triggerer (``deferrable=True``).
* ``thumbnails``: ``reve-2.0`` answers synchronously, so the operator returns at once, never defers.
* ``submit_video`` + ``wait_for_video``: submit without waiting, then a deferrable sensor waits.
* ``social_variants``: one mapped task per prompt (``.partial().expand()``).
* ``collect_files``: downloads every result URL into a local folder and returns the paths.

Prompts use ``{{ run_id }}``, which every run has (a run triggered from the UI/CLI/API without
a logical date has no ``{{ ds }}``). Results are written below ``$REVE_EXAMPLE_OUTPUT_DIR``
(default: ``<tmp>/reve-example-output``), in one folder per run named by the run's date and a
digest of its id (a run id may be ``..`` or contain ``/``, so it is never a path).

Downloads are http(s) only, capped in size and time, and follow redirects only to public
addresses: a result URL is untrusted input. Loopback and private addresses are allowed only
when the ``reve_default`` connection itself points at loopback (the offline fake); delete that
exception in production.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from airflow.sdk import DAG, task

from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.sensors.reve import ReveTaskSensor

SOCIAL_PROMPTS = [
    "A lighthouse at dawn, flat illustration, square crop",
    "A lighthouse at dusk, watercolour, square crop",
]
SUFFIXES = {"image/png": ".png", "image/jpeg": ".jpg", "image/webp": ".webp", "video/mp4": ".mp4"}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is this machine: ``localhost``, ``127.0.0.0/8`` or ``::1``."""
    try:
        return host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


with DAG(
    dag_id="example_reve_content_pipeline",
    schedule=None,
    start_date=datetime(2026, 1, 1),
    catchup=False,
    tags=["reve", "example"],
    default_args={"retries": 2, "retry_delay": timedelta(seconds=10)},
    doc_md=__doc__,
):
    hero_image = ReveGenerateOperator(
        task_id="hero_image",
        model="seedream-5",
        prompt="A lighthouse on a cliff at golden hour, cinematic ({{ run_id }})",
        aspect_ratio="16:9",
        deferrable=True,
        poll_interval=2,
        max_credits=100,
    )

    thumbnails = ReveGenerateOperator(
        task_id="thumbnails",
        model="reve-2.0",
        prompt="A tiny lighthouse icon, flat design ({{ run_id }})",
        num_images=2,
        aspect_ratio="1:1",
        deferrable=True,  # reve-2.0 answers at once: this task never actually defers
    )

    submit_video = ReveGenerateOperator(
        task_id="submit_video",
        model="kling26-text-to-video",
        prompt="Waves crashing below a lighthouse, slow pan ({{ run_id }})",
        duration=5,
        wait_for_completion=False,
    )

    wait_for_video = ReveTaskSensor(
        task_id="wait_for_video",
        reve_task_id=submit_video.output,
        deferrable=True,
        poke_interval=2,
        timeout=600,
    )

    social_variants = ReveGenerateOperator.partial(
        task_id="social_variants",
        model="nano-banana",
        deferrable=True,
        poll_interval=2,
    ).expand(prompt=SOCIAL_PROMPTS)

    @task
    def collect_files(
        hero: dict[str, Any],
        thumbs: dict[str, Any],
        video: dict[str, Any],
        variants: list[dict[str, Any]],
        run_id: str | None = None,
        dag_run: Any = None,
    ) -> dict[str, Any]:
        """Download every result into one folder per run; return where the files are."""
        # Until ReveDownloadResultsOperator lands, the provider's safe fetch does the downloading.
        from airflow_provider_reve._download import download
        from airflow_provider_reve.hooks.reve import ReveHook

        base = Path(
            os.environ.get("REVE_EXAMPLE_OUTPUT_DIR") or Path(tempfile.gettempdir(), "reve-example-output")
        )
        run_after = getattr(dag_run, "run_after", None) or datetime.now(timezone.utc)
        digest = hashlib.sha256((run_id or "").encode()).hexdigest()[:12]
        out_dir = base / f"{run_after:%Y%m%dT%H%M%S}-{digest}"
        out_dir.mkdir(parents=True, exist_ok=True)

        # The offline fake serves results from loopback; a real API never should.
        api_on_loopback = is_loopback(urlsplit(ReveHook().settings.base_url).hostname or "")
        files = []
        results = {"hero": [hero], "thumbnail": [thumbs], "video": [video], "social": list(variants)}
        for label, tasks in results.items():
            for task_number, result in enumerate(tasks):
                for url_number, url in enumerate(result["result_urls"]):
                    # Named by us; the suffix follows the Content-Type, never the URL.
                    partial = out_dir / f"{label}-{task_number}-{url_number}.part"
                    fetched = download(url, partial, allow_private_addresses=api_on_loopback)
                    path = partial.with_suffix(SUFFIXES.get(fetched.content_type or "", ".bin"))
                    partial.replace(path)
                    files.append(str(path))
        credits = sum((r.get("consumed_credits") or 0) for rs in results.values() for r in rs)
        return {"output_dir": str(out_dir), "files": files, "credits": credits}

    collect_files(hero_image.output, thumbnails.output, wait_for_video.output, social_variants.output)
