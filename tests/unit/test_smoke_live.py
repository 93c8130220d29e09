"""``make smoke-live`` (scripts/smoke_live.py) works the day a user runs it with a real key.

Proven against the shipped fake API over HTTPS with its own CA, as the real API is reached: the
script announces its cost before it spends, spends exactly that once, downloads and checks the
file, and never prints the key. Without a key it sends nothing and exits 0.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "smoke_live.py"


def run_smoke_live(tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("REVE_", "AIRFLOW_CONN_"))}
    clean.update({"AIRFLOW_HOME": str(tmp_path / "airflow-home"), "PYTHONPATH": str(ROOT), **env})
    return subprocess.run(
        [sys.executable, str(SCRIPT)], capture_output=True, text=True, env=clean, timeout=300, cwd=tmp_path
    )


def test_smoke_live_without_a_key_explains_itself_sends_nothing_and_exits_0(tmp_path):
    with FakeReveServer() as server:
        run = run_smoke_live(tmp_path, REVE_BASE_URL=server.url)
        received = server.stats()["requests"]
    assert run.returncode == 0, run.stderr
    assert sum(received.values()) == 0
    assert "REVE_API_KEY is not set" in run.stdout
    assert "nothing was spent" in run.stdout


def test_smoke_live_announces_12_credits_then_generates_downloads_and_checks_one_image_over_https(tmp_path):
    with FakeReveServer(tls=True) as server:
        run = run_smoke_live(
            tmp_path,
            REVE_API_KEY=DEFAULT_API_KEY,
            REVE_BASE_URL=server.url,
            REQUESTS_CA_BUNDLE=server.ca_file,
            SSL_CERT_FILE=server.ca_file,
        )
        charged = -sum(entry["delta"] for entry in server.ledger)
        submissions = server.submissions
    assert run.returncode == 0, run.stdout + run.stderr
    lines = run.stdout.splitlines()
    announced = next(i for i, line in enumerate(lines) if "This will spend 12 credits" in line)
    submitted = next(i for i, line in enumerate(lines) if line.startswith("Submitted: Reve task"))
    assert announced < submitted
    assert any(line.startswith("Downloaded and checked: PNG") for line in lines), run.stdout
    assert "Spent: 12 credits." in lines
    assert submissions == 1
    assert charged == 12
    assert DEFAULT_API_KEY not in run.stdout + run.stderr


def test_smoke_live_with_a_refused_key_fails_clearly_without_printing_the_key(tmp_path):
    wrong_key = "sk-this-key-is-not-known-to-the-fake"
    with FakeReveServer(tls=True) as server:
        run = run_smoke_live(
            tmp_path,
            REVE_API_KEY=wrong_key,
            REVE_BASE_URL=server.url,
            REQUESTS_CA_BUNDLE=server.ca_file,
        )
        assert server.submissions == 0
    assert run.returncode == 1
    assert "FAILED: ReveAuthenticationError" in run.stdout
    assert wrong_key not in run.stdout + run.stderr
