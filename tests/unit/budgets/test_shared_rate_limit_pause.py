"""A ``429 RATE_LIMITED`` seen by one process pauses the same connection in every other process of
the deployment, through the ledger (``[reve] ledger_conn_id``), read at most once a second."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from reve_test_helpers import wait_for

from airflow_provider_reve.budgets import shared_pauses
from airflow_provider_reve.client.ratelimit import process_gate
from airflow_provider_reve.exceptions import ReveRateLimitError
from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing import FakeReveServer

REPO = Path(__file__).resolve().parents[3]

# Another worker: one status read that the API answers with a 429 and Retry-After 30.
OTHER_PROCESS = textwrap.dedent(
    """
    from airflow_provider_reve.client.retry import RetryPolicy
    from airflow_provider_reve.exceptions import ReveRateLimitError
    from airflow_provider_reve.hooks.reve import ReveHook

    hook = ReveHook(retry_policy=RetryPolicy(max_attempts=1))
    try:
        hook.get_status("0123456789abcdef0123456789abcdef")
    except ReveRateLimitError:
        print("rate limited")
    """
)


@pytest.fixture
def ledger_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    shared_pauses.forget()
    yield
    shared_pauses.forget()


def test_a_429_seen_by_another_process_holds_this_processs_requests_to_the_same_connection(
    fake_reve_server: FakeReveServer, reve_connection_env: str, ledger_env
):
    hook = ReveHook()
    gate = process_gate(hook.settings)
    gate.acquire("status")  # not paused: goes at once
    fake_reve_server.add_fault(kind="error", endpoint="status", code="RATE_LIMITED", retry_after=30, times=1)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }

    other = subprocess.run(
        [sys.executable, "-c", OTHER_PROCESS], env=env, capture_output=True, text=True, timeout=300
    )

    assert other.returncode == 0, other.stderr[-2000:]
    assert "rate limited" in other.stdout
    assert gate.shared_key is not None
    wait_for(
        lambda: shared_pauses.shared_pause_until(gate.shared_key) > time.time() + 10,  # type: ignore[arg-type]
        "the other process's 429 pause to be read from the ledger",
    )
    sent_before = fake_reve_server.requests_to("status")
    with pytest.raises(ReveRateLimitError, match="held for another"):
        gate.acquire("status", ends_at=gate.clock() + 1.0)
    assert fake_reve_server.requests_to("status") == sent_before


def test_two_pauses_of_one_connection_keep_the_later_end(tmp_path: Path, ledger_env):
    early, late = time.time() + 20, time.time() + 40
    for until in (late, early):  # the earlier one written last
        writer = shared_pauses.publish_pause("gate", until)
        assert writer is not None
        writer.join(timeout=60)
    shared_pauses.forget()  # a process that saw neither
    wait_for(lambda: shared_pauses.shared_pause_until("gate") > 0, "the pauses to be read")
    assert shared_pauses.shared_pause_until("gate") == pytest.approx(late)


def test_without_a_ledger_a_pause_stays_in_its_process(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.delenv("AIRFLOW__REVE__LEDGER_CONN_ID", raising=False)
    shared_pauses.forget()
    assert shared_pauses.publish_pause("gate", time.time() + 30) is None
    assert shared_pauses.shared_pause_until("gate") == float("-inf")
