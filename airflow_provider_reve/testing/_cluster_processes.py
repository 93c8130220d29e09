"""Process management for :class:`~airflow_provider_reve.testing.cluster.LocalAirflow`.

Every component runs as the leader of a new *session*. Everything it spawns stays in that
session, including the task runners that Airflow moves into process groups of their own, so
the session id is what tells this deployment's processes from everyone else's.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sized
from pathlib import Path
from typing import IO

from airflow_provider_reve.testing._reaper import release_session, session_members, watch_session

TASK_TERM_GRACE = 3.0
"""Seconds between SIGTERM (-> ``on_kill()``) and SIGKILL of running tasks in :func:`stop_sessions`."""


def free_port() -> int:
    """Ask the kernel for an unused loopback port.

    There is a small window between closing the probe socket and Airflow binding the
    port; on a test machine that is acceptable and far better than fixed ports, which
    collide as soon as two deployments (or a developer's own Airflow) run at once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def airflow_cmd(*args: str) -> list[str]:
    """``python -m airflow`` with this interpreter: no reliance on PATH or an activated venv."""
    return [sys.executable, "-m", "airflow", *args]


def spawn(cmd: list[str], *, env: Mapping[str, str], cwd: Path, log: IO[bytes]) -> subprocess.Popen[bytes]:
    """Start ``cmd`` as the leader of a new session, its output appended to ``log``.

    A new session per component: :func:`stop_sessions` can then signal the whole tree
    (uvicorn workers, LocalExecutor workers, task supervisors) and recognise its members by
    session id even after they ``setpgid()`` into their own process groups. Should this process
    die without stopping it, the reaper (:mod:`._reaper`) does.
    """
    proc = subprocess.Popen(
        cmd,
        env=dict(env),
        cwd=cwd,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    watch_session(proc.pid)
    return proc


def stop_sessions(procs: Mapping[str, subprocess.Popen[bytes]], timeout: float) -> None:
    """Stop every process in the sessions led by ``procs`` (component name -> leader).

    Running tasks go first, since a stopping scheduler waits for them: SIGTERM (which in
    Airflow 3 only runs the operator's ``on_kill()``, the task itself keeps running), a
    short grace, then SIGKILL, the same escalation the task supervisor uses. Then the
    components get SIGTERM, the api-server last, and whatever is left at the deadline
    gets SIGKILL. Processes outside those sessions are never signalled.
    """
    if not procs:
        return
    sessions = {p.pid for p in procs.values()}
    deadline = time.monotonic() + timeout
    task_groups = _process_groups(session_members(sessions)) - sessions
    if task_groups:
        _signal_groups(task_groups, signal.SIGTERM)
        _wait_gone(
            lambda: _process_groups(session_members(sessions)) & task_groups,
            min(deadline, time.monotonic() + TASK_TERM_GRACE),
        )
        _signal_groups(task_groups, signal.SIGKILL)
    # The api-server goes last: supervisors and the triggerer report final states
    # through it, and retry for a long time if it is already gone.
    for wave in ([n for n in procs if n != "api-server"], ["api-server"]):
        wave_sessions = {procs[n].pid for n in wave if n in procs}
        _signal_groups(wave_sessions, signal.SIGTERM)
        _wait_gone(functools.partial(session_members, wave_sessions), deadline)
    for pid in session_members(sessions):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    for p in procs.values():
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.wait(timeout=10)
        release_session(p.pid)


def _process_groups(pids: Iterable[int]) -> set[int]:
    groups = set()
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            groups.add(os.getpgid(pid))
    return groups


def _signal_groups(groups: Iterable[int], sig: signal.Signals) -> None:
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, sig)


def _wait_gone(remaining: Callable[[], Sized], deadline: float) -> None:
    while remaining() and time.monotonic() < deadline:
        time.sleep(0.2)
