"""``make smoke-live``: one real generation through the provider, end to end, with your own key.

With ``REVE_API_KEY`` set it says what it will spend (12 credits), then submits one ``reve-2.0``
image through ``ReveHook`` -- the provider's own client, with its validation, retries and
never-pay-twice rules -- reads the task's status, downloads the file with the provider's download
policy, checks it (the size and sha256 the manifest gives, and an image signature) and prints
what the API says it spent. Without the key it explains itself and exits 0: nothing is sent.

``REVE_BASE_URL`` points it at another base URL (a proxy you trust; the test suite points it at
the fake API over HTTPS); ``REQUESTS_CA_BUNDLE`` trusts a private CA. The key is never printed.

Exit status: 0 when every check passed (or when there is no key), 1 when one failed.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from pathlib import Path

MODEL = "reve-2.0"
#: What one reve-2.0 text-to-image generation costs (the published price); said before it runs.
PLANNED_CREDITS = 12
PROMPT = "A lighthouse on a rocky coast at dusk, watercolour"
CONNECTION_ID = "reve_smoke_live"
# reve-2.0 answers at once; should the API ever make it asynchronous, wait this long at most.
WAIT_SECONDS = 300
IMAGE_SIGNATURES = {
    "PNG": lambda head: head.startswith(b"\x89PNG\r\n\x1a\n"),
    "JPEG": lambda head: head.startswith(b"\xff\xd8\xff"),
    "WebP": lambda head: head[:4] == b"RIFF" and head[8:12] == b"WEBP",
}


def explain_and_skip() -> int:
    print(
        "make smoke-live: REVE_API_KEY is not set, so nothing was sent and nothing was spent.\n"
        f"With REVE_API_KEY set, it submits one {MODEL} image to the Reve API ({PLANNED_CREDITS} "
        "credits of that key's account), reads its status, downloads the file, checks it and "
        "prints what it spent:\n"
        "    REVE_API_KEY=sk-... make smoke-live\n"
        "REVE_BASE_URL sends it elsewhere (default https://reve2img.com)."
    )
    return 0


def image_kind(head: bytes) -> str | None:
    return next((kind for kind, matches in IMAGE_SIGNATURES.items() if matches(head)), None)


def main() -> int:
    key = os.environ.get("REVE_API_KEY", "").strip()
    if not key:
        return explain_and_skip()
    base_url = os.environ.get("REVE_BASE_URL", "").strip()
    connection: dict[str, object] = {"conn_type": "reve", "password": key}
    if base_url:
        connection["host"] = base_url
    # The provider reads its connection as Airflow does; this one lives only in this process.
    os.environ[f"AIRFLOW_CONN_{CONNECTION_ID.upper()}"] = json.dumps(connection)

    from airflow_provider_reve.exceptions import ReveError
    from airflow_provider_reve.hooks.reve import ReveHook

    where = base_url or "https://reve2img.com"
    print(f"This will spend {PLANNED_CREDITS} credits: one {MODEL} image from {where}.", flush=True)
    hook = ReveHook(CONNECTION_ID)
    try:
        task = hook.generate(MODEL, prompt=PROMPT, aspect_ratio="1:1")
        print(f"Submitted: Reve task {task.task_id}, {task.status}.", flush=True)
        deadline = time.monotonic() + WAIT_SECONDS
        task = hook.get_status(task.task_id, model=MODEL)
        while not task.is_finished and time.monotonic() < deadline:
            time.sleep(3)
            task = hook.get_status(task.task_id, model=MODEL)
        print(f"Status: {task.status}, {len(task.result_urls)} result URL(s).", flush=True)
        if not task.succeeded:
            why = f"{task.error_code}: {task.error_message}" if task.failed else "still running"
            print(f"FAILED: the task did not succeed ({why}).")
            return 1
        with tempfile.TemporaryDirectory(prefix="reve-smoke-live-") as folder:
            files = hook.download_results(task, folder)
            if len(files) != 1:
                print(f"FAILED: expected one stored file, got {len(files)}.")
                return 1
            entry = files[0]
            data = Path(entry["path"]).read_bytes()
            kind = image_kind(data[:16])
            if len(data) != entry["bytes"] or hashlib.sha256(data).hexdigest() != entry["sha256"]:
                print("FAILED: the stored file does not match its manifest (size or sha256).")
                return 1
            if kind is None:
                print(f"FAILED: the stored file is not a PNG, JPEG or WebP image ({entry['content_type']}).")
                return 1
            print(f"Downloaded and checked: {kind}, {len(data)} bytes, sha256 {entry['sha256'][:16]}...")
    except ReveError as error:
        print(f"FAILED: {type(error).__name__}: {error}")
        return 1
    finally:
        hook.close()
    spent = task.consumed_credits
    print(f"Spent: {spent if spent is not None else 'unknown (the API did not say)'} credits.")
    if spent is not None and spent != PLANNED_CREDITS:
        print(f"Note: the API charged {spent}, not the {PLANNED_CREDITS} announced: prices may have changed.")
    print("OK: submit, status, download and file checks passed.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
