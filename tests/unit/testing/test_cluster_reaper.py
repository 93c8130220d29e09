"""A test deployment never outlives the test process: LocalAirflow's and ProductionAirflow's
components (each a session of its own, so a Ctrl-C aimed at the test run cannot tear them down
mid-write) are stopped by the reaper when the process that started them dies without ``stop()``:
SIGKILL, an OOM kill, a CI timeout, or SIGTERM, which Python answers by dying without ``finally``.

Real processes throughout: a parent that starts a component with the harness's own ``spawn()``,
a component that forks a child into a process group of its own (as Airflow's task runners do),
and the reaper itself."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from airflow_provider_reve.testing._cluster_processes import session_members
from tests.support.reve_test_helpers import wait_for

REPO = Path(__file__).resolve().parents[3]

# Starts one component the way LocalAirflow does, prints its session id, then waits to be killed.
PARENT = """
import sys, time
from pathlib import Path
from airflow_provider_reve.testing._cluster_processes import spawn
component = "import os, time\\nif os.fork() == 0:\\n    os.setpgid(0, 0)\\ntime.sleep(600)\\n"
def start():
    with open(sys.argv[1], "ab") as log:
        proc = spawn([sys.executable, "-c", component], env={"PATH": "/usr/bin:/bin"}, cwd=Path("/"), log=log)
    print(proc.pid, flush=True)
start()
for _ in sys.stdin:  # each line: start one more component
    start()
time.sleep(600)
"""


def session(sid: int) -> list[int]:
    return session_members([sid])


def dead(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE  # dead; its parent has not asked yet
    except psutil.NoSuchProcess:
        return True


@pytest.fixture
def bystander() -> Iterator[subprocess.Popen[bytes]]:
    """A process of someone else's, in a session of its own: the reaper must never touch it."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
    yield proc
    proc.kill()
    proc.wait(30)


class RunningTest:
    """The process running a test: starts components with the harness's ``spawn()``."""

    def __init__(self, log: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(log)],
            cwd=REPO,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.sessions: list[int] = []
        self._read_session()

    def _read_session(self) -> int:
        assert self.proc.stdout is not None
        self.sessions.append(int(self.proc.stdout.readline()))
        return self.sessions[-1]

    def start_another(self) -> int:
        assert self.proc.stdin is not None
        self.proc.stdin.write("one more\n")
        self.proc.stdin.flush()
        return self._read_session()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
        for sid in self.sessions:
            for pid in session(sid):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture
def running_test(tmp_path: Path) -> Iterator[RunningTest]:
    started = RunningTest(tmp_path / "component.log")
    yield started
    started.close()


@pytest.mark.parametrize("death", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_dead_test_process_takes_its_components_and_their_task_groups_with_it(
    running_test: RunningTest, death: signal.Signals, bystander: subprocess.Popen[bytes]
) -> None:
    (sid,) = running_test.sessions
    wait_for(lambda: len(session(sid)) == 2, "the component and its own-group child")
    assert len({os.getpgid(pid) for pid in session(sid)}) == 2, "the child did not leave the group"

    running_test.proc.send_signal(death)
    assert running_test.proc.wait(30) == -death

    wait_for(lambda: not session(sid), "the orphaned component to be stopped")
    assert bystander.poll() is None, "the reaper killed a process that was not the deployment's"


def test_a_reaper_killed_by_someone_is_replaced_by_one_that_still_knows_every_component(
    running_test: RunningTest,
) -> None:
    children = psutil.Process(running_test.proc.pid).children()
    (first_reaper,) = [child for child in children if child.pid not in running_test.sessions]
    first_reaper.kill()
    wait_for(lambda: dead(first_reaper), "the first reaper to die")

    running_test.start_another()  # the next call notices, and starts a new reaper
    sessions = running_test.sessions
    wait_for(lambda: all(len(session(sid)) == 2 for sid in sessions), "both components to run")
    running_test.proc.kill()
    running_test.proc.wait(30)

    wait_for(lambda: not any(session(sid) for sid in sessions), "both orphaned components to stop")


def reaper() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_reve.testing._reaper"],
        cwd=REPO,
        stdin=subprocess.PIPE,
        text=True,
    )


def started(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


def test_a_released_session_and_a_reused_pid_are_left_alone_a_watched_one_is_stopped(
    bystander: subprocess.Popen[bytes],
) -> None:
    victim, released = (
        subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], start_new_session=True)
        for _ in range(2)
    )
    watcher = reaper()
    try:
        assert watcher.stdin is not None
        watcher.stdin.write(f"+{victim.pid} {started(victim.pid)!r}\n")
        watcher.stdin.write(f"+{released.pid} {started(released.pid)!r}\n-{released.pid}\n")
        # The bystander's pid, as if it had been reused since a session of ours ended under it.
        watcher.stdin.write(f"+{bystander.pid} {started(bystander.pid) - 3600!r}\n")
        watcher.stdin.close()  # what the kernel does when the test process dies

        assert watcher.wait(60) == 0
        assert victim.wait(30) in (-signal.SIGTERM, -signal.SIGKILL)
        assert released.poll() is None, "a session stopped on purpose was signalled again"
        assert bystander.poll() is None, "a reused pid's session was signalled"
    finally:
        for proc in (victim, released):
            proc.kill()
            proc.wait(30)


def test_a_throw_away_folder_is_deleted_unless_released(tmp_path: Path) -> None:
    data, kept = tmp_path / "postgres-data", tmp_path / "released"
    for folder in (data, kept):
        (folder / "base").mkdir(parents=True)
        (folder / "base" / "1").write_bytes(b"x" * 1024)
    watcher = reaper()
    assert watcher.stdin is not None
    watcher.stdin.write(f"d{data}\nd{kept}\nr{kept}\n")
    watcher.stdin.close()

    assert watcher.wait(60) == 0
    assert not data.exists(), "a dead run's database folder stayed on disk"
    assert (kept / "base" / "1").exists(), "a folder released by a clean stop was deleted"
