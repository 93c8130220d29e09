"""A watchdog that stops a test deployment's processes when the Python process that started them dies.

``LocalAirflow`` and ``ProductionAirflow`` start every component as the leader of a session of its
own, so that a Ctrl-C or a ``killpg`` aimed at the test run does not tear components down
mid-write. The other side of that: when the test process dies without calling ``stop()`` --
SIGKILL, an OOM kill, a CI job timeout, SIGTERM (Python's default is to die without running
``finally``) -- nothing would stop them, and schedulers, Celery workers, PostgreSQL and Redis would
run on, holding ports, memory and CPU.

So the first component started also starts this reaper, in a session of its own, reading its
stdin from a pipe that only the test process holds. The test process writes a line per session
it starts (``+<leader pid> <leader start time>``) and stops (``-<leader pid>``), and per throw-away
folder (``d<path>``, for PostgreSQL's data). When the pipe reaches end-of-file the test process is
gone; still registered sessions get SIGTERM, then SIGKILL after a grace, and the folders are
deleted. A normal ``stop()`` unregisters everything first, so the reaper then just exits.

A session is recognised by its leader's pid *and* start time: if that pid is alive but started at
another time, the session ended long ago and the pid was reused, and nothing is signalled. (While
any member of a session is alive, Linux never hands its id out as a new pid.)
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterable

GRACE_SECONDS = 5.0
"""Between SIGTERM and SIGKILL of an orphaned deployment."""

_lock = threading.Lock()
_reaper: subprocess.Popen[str] | None = None
_reaper_owner: int | None = None
# What this process asked to be watched, so that a reaper that died (killed by someone, say)
# is replaced by one that knows all of it.
_watched: dict[str, str] = {}


def _start_time(pid: int) -> float | None:
    import psutil

    try:
        return float(psutil.Process(pid).create_time())
    except psutil.Error:
        return None


def _write(lines: list[str]) -> bool:
    assert _reaper is not None and _reaper.stdin is not None
    try:
        _reaper.stdin.write("".join(f"{line}\n" for line in lines))
        _reaper.stdin.flush()
    except (OSError, ValueError):
        return False
    return True


def _send(line: str, *, key: str, watch: bool) -> None:
    """Tell this process's reaper ``line``; start a reaper on first use, after a fork, or when
    the one there was has died, and then tell it everything still watched."""
    global _reaper, _reaper_owner
    with _lock:
        if _reaper_owner != os.getpid():
            # First use, or a forked child: what the parent watches stays the parent's business
            # (a child's reaper replaying it would stop the parent's deployment when the child exits).
            _watched.clear()
            _reaper = None
        if watch:
            _watched[key] = line
        else:
            _watched.pop(key, None)
        if _reaper is not None and _reaper.poll() is None and _write([line]):
            return
        _reaper = subprocess.Popen(
            [sys.executable, "-m", "airflow_provider_reve.testing._reaper"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            text=True,
        )
        _reaper_owner = os.getpid()
        _write(list(_watched.values()))  # a reaper that fails at once cannot be helped


def watch_session(leader: int) -> None:
    """Have the reaper stop session ``leader`` should this process die before :func:`release_session`."""
    started = _start_time(leader)
    if started is not None:
        _send(f"+{leader} {started!r}", key=f"session {leader}", watch=True)


def release_session(leader: int) -> None:
    """The session was stopped on purpose: the reaper forgets it."""
    _send(f"-{leader}", key=f"session {leader}", watch=False)


def watch_folder(path: str) -> None:
    """Have the reaper delete ``path`` should this process die before :func:`release_folder`."""
    _send(f"d{path}", key=f"folder {path}", watch=True)


def release_folder(path: str) -> None:
    _send(f"r{path}", key=f"folder {path}", watch=False)


# ---------------------------------------------------------------------- the reaper process


def session_members(sessions: Iterable[int]) -> list[int]:
    """Pids of live (non-zombie) processes whose session id is one of ``sessions``."""
    import psutil

    wanted = set(sessions)
    members = []
    for proc in psutil.process_iter(["status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE:
                continue
            if os.getsid(proc.pid) in wanted:
                members.append(proc.pid)
        except (ProcessLookupError, PermissionError, psutil.Error):
            continue
    return members


def _members(sessions: dict[int, float]) -> list[int]:
    """Members of the registered sessions whose leader pid was not reused since."""
    return session_members(
        leader
        for leader, started in sessions.items()
        if (current := _start_time(leader)) is None or abs(current - started) < 0.001
    )


def _reap(sessions: dict[int, float], folders: set[str]) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_SECONDS), (signal.SIGKILL, 10.0)):
        members = _members(sessions)
        for pid in members:
            with contextlib.suppress(OSError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while members and time.monotonic() < deadline:
            time.sleep(0.1)
            members = _members(sessions)
    for folder in folders:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    # Ctrl-C in the test's terminal is the test process's business, not ours.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sessions: dict[int, float] = {}
    folders: set[str] = set()
    for line in sys.stdin:
        kind, rest = line[:1], line[1:].rstrip("\n")
        with contextlib.suppress(ValueError):
            if kind == "+":
                leader, started = rest.split(" ", 1)
                sessions[int(leader)] = float(started)
            elif kind == "-":
                sessions.pop(int(rest), None)
            elif kind == "d":
                folders.add(rest)
            elif kind == "r":
                folders.discard(rest)
    _reap(sessions, folders)


if __name__ == "__main__":
    main()
