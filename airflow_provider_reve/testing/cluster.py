"""A real, throw-away Airflow deployment for end-to-end tests and demos.

``dag.test()`` runs every task in one process and never involves the scheduler, the
triggerer or the metadata database the way production does, so it cannot prove that a
deferrable operator really defers, that what it hands to the triggerer is serializable, or
that nothing secret is persisted in the ``trigger`` table. :class:`LocalAirflow` starts the
real components (``api-server``, ``scheduler``, ``dag-processor``, ``triggerer``) as
separate processes against a private SQLite database and ``LocalExecutor``, on free
loopback ports, so several instances (a test session and ``make demo``) can coexist::

    from pathlib import Path
    from airflow_provider_reve.testing.cluster import LocalAirflow

    with LocalAirflow(Path("dags"), env={"AIRFLOW_CONN_REVE_DEFAULT": "..."}) as af:
        af.wait_for_dag("my_dag")
        run_id = af.trigger("my_dag", conf={"prompt": "a cat"})
        assert af.wait_for_run("my_dag", run_id) == "success"
        print(af.xcom("my_dag", run_id, "generate"))

Everything lives under one home directory (a temporary one unless ``home`` is given):
``airflow.db``, ``airflow.cfg``, task logs under ``logs/`` and one ``logs/<component>.log``
per process. :meth:`LocalAirflow.stop` (also run by ``__exit__`` and by a failed
:meth:`LocalAirflow.start`) kills exactly the process sessions this object started, including
task processes that moved into their own process group, and nothing else.

SQLite and ``LocalExecutor`` are accepted together by Airflow 3 (the old "SQLite needs the
SequentialExecutor" rule is gone); the database is switched to WAL journaling so that the
four processes, the task workers and this object's read-only queries do not lock each
other out.

Deferral can be proven two ways: live, with :meth:`LocalAirflow.wait_for_ti_state`, which
returns the ``trigger`` row while it exists (decoded kwargs included, to assert that no
secret is persisted: in Airflow 3.3 a task's trigger kwargs are stored as *plain* JSON, not
Fernet-encrypted), and after the fact with :meth:`LocalAirflow.deferral_evidence`.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence, Sized
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any, TypeVar

import requests

__all__ = ["DEFAULT_COMPONENTS", "LocalAirflow", "LocalAirflowError"]

DEFAULT_COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")
"""The processes a production-like deployment needs for deferrable tasks."""

_TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_IMPORT_ERROR_GRACE = 10.0  # seconds wait_for_dag keeps waiting once import errors exist
_TASK_TERM_GRACE = 3.0  # seconds between SIGTERM (-> on_kill) and SIGKILL of running tasks in stop()
_JWT_SECRET = "airflow-provider-reve-local-airflow-jwt-secret-not-for-production"
_API_SECRET_KEY = "airflow-provider-reve-local-airflow-api-secret-not-for-production"

T = TypeVar("T")


class LocalAirflowError(RuntimeError):
    """Raised when the local deployment fails to start, a process dies, or a wait times out.

    The message carries the tail of every component log, because the reason is almost
    always in a log of a *different* process than the one the test talks to.
    """


def _free_port() -> int:
    """Ask the kernel for an unused loopback port.

    There is a small window between closing the probe socket and Airflow binding the
    port; on a test machine that is acceptable and far better than fixed ports, which
    collide as soon as two deployments (or a developer's own Airflow) run at once.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _new_fernet_key() -> str:
    """A fresh Fernet key: what Airflow encrypts (connections, variables) is encrypted as in
    production, and this object can still decrypt what it reads from the database."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _tail(path: Path, lines: int) -> str:
    try:
        with path.open("rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - 256 * lines))
            data = fh.read().decode("utf-8", errors="replace")
    except FileNotFoundError:
        return "<no log file>"
    return "\n".join(data.splitlines()[-lines:])


class LocalAirflow:
    """Run real Airflow components on SQLite + ``LocalExecutor`` for end-to-end tests.

    :param dags_folder: folder the dag-processor parses (``[core] dags_folder``).
    :param home: ``AIRFLOW_HOME``. When ``None``, a temporary directory that is deleted with
        this object (or by :meth:`cleanup`); pass a path to keep database and logs for a
        post-mortem. A given home is reused as is (migrated, not wiped).
    :param env: extra environment for every process, applied last so it can override any
        default here, e.g. ``{"AIRFLOW_CONN_REVE_DEFAULT": "reve://:key@127.0.0.1:8123"}``.
        Inherited ``AIRFLOW*`` variables of the calling process are *not* passed on, so a
        developer's own ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` can never point the test
        deployment at a real database.
    :param components: which of :data:`DEFAULT_COMPONENTS` to start. Without the
        ``api-server`` the REST-based helpers fall back to the ``airflow`` CLI.
    """

    def __init__(
        self,
        dags_folder: Path | str,
        *,
        home: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        components: Sequence[str] = DEFAULT_COMPONENTS,
    ) -> None:
        unknown = set(components) - set(DEFAULT_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {DEFAULT_COMPONENTS}")
        self.dags_folder = Path(dags_folder).resolve()
        self._tmp_home: tempfile.TemporaryDirectory[str] | None = None
        if home is None:
            self._tmp_home = tempfile.TemporaryDirectory(prefix="local-airflow-")
            home = self._tmp_home.name
        self.home = Path(home).resolve()
        self.log_dir = self.home / "logs"
        self.db_path = self.home / "airflow.db"
        self.components: tuple[str, ...] = tuple(components)
        self.port = _free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.fernet_key = _new_fernet_key()
        self.env: dict[str, str] = self._build_env(dict(env or {}))
        # Honour an override of the key by the caller, since decoding trigger kwargs needs it.
        self.fernet_key = self.env["AIRFLOW__CORE__FERNET_KEY"]
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []
        self._token: str | None = None
        self._http = requests.Session()
        self._started_at = ""

    # ------------------------------------------------------------------ lifecycle

    def _build_env(self, extra: dict[str, str]) -> dict[str, str]:
        env = {
            k: v for k, v in os.environ.items() if not (k.startswith("AIRFLOW") or k.startswith("_AIRFLOW"))
        }
        env.update(
            {
                "PYTHONUNBUFFERED": "1",
                "AIRFLOW_HOME": str(self.home),
                "AIRFLOW_CONFIG": str(self.home / "airflow.cfg"),
                "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{self.db_path}",
                "AIRFLOW__CORE__DAGS_FOLDER": str(self.dags_folder),
                "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
                "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
                "AIRFLOW__CORE__FERNET_KEY": self.fernet_key,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
                # Workers reach the api-server here; the default is localhost:8080.
                "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{self.base_url}/execution/",
                "AIRFLOW__API__HOST": "127.0.0.1",
                "AIRFLOW__API__PORT": str(self.port),
                "AIRFLOW__API__BASE_URL": self.base_url,
                "AIRFLOW__API__SECRET_KEY": _API_SECRET_KEY,
                # Every component must sign/verify task and API JWTs with the same secret;
                # with no value each process would invent its own and workers get 403s.
                "AIRFLOW__API_AUTH__JWT_SECRET": _JWT_SECRET,
                # Parse new files within seconds instead of the 5-minute default.
                "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
                "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(self.home / "dag_bundles"),
                "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
                "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
                "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(self.log_dir),
                # Defaults are the fixed ports 8793/8794; two deployments would collide.
                "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
                "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
            }
        )
        env.update(extra)
        return env

    def __enter__(self) -> LocalAirflow:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self, timeout: float = 120.0) -> LocalAirflow:
        """Migrate the database, start the components and wait until all report healthy.

        Always cleans up after itself: if anything fails, every process started so far is
        stopped before the :class:`LocalAirflowError` (with all log tails) propagates.
        """
        if self._procs:
            raise LocalAirflowError("already started")
        deadline = time.monotonic() + timeout
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self._migrate(deadline)
            # Jobs must have started after this: a reused home may hold rows of an earlier
            # deployment that still say "running" (a SIGKILLed job never updates its row).
            self._started_at = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")
            for component in self.components:
                self._spawn(component)
            self._wait_until_healthy(deadline)
        except BaseException:
            self.stop()
            raise
        return self

    def _migrate(self, deadline: float) -> None:
        log_path = self.log_dir / "db-migrate.log"
        with log_path.open("wb") as log:
            try:
                proc = subprocess.run(
                    self._airflow_cmd("db", "migrate"),
                    env=self.env,
                    cwd=self.home,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    timeout=max(1.0, deadline - time.monotonic()),
                    check=False,
                )
            except subprocess.TimeoutExpired as err:
                raise LocalAirflowError(f"`airflow db migrate` timed out\n{self.dump_logs()}") from err
        if proc.returncode != 0:
            raise LocalAirflowError(f"`airflow db migrate` exited {proc.returncode}\n{self.dump_logs()}")
        # WAL lets readers (this object, the api-server) run beside the one writer instead of
        # making every process wait on "database is locked". The mode is stored in the file.
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    def _spawn(self, component: str) -> None:
        log = (self.log_dir / f"{component}.log").open("ab")
        self._log_files.append(log)
        # A new session per component: stop() can then signal the whole tree (uvicorn
        # workers, LocalExecutor workers, task supervisors) and recognise its members by
        # session id even after they setpgid() into their own process groups.
        self._procs[component] = subprocess.Popen(
            self._airflow_cmd(component),
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @staticmethod
    def _airflow_cmd(*args: str) -> list[str]:
        # ``python -m airflow`` with this interpreter: no reliance on PATH or an activated venv.
        return [sys.executable, "-m", "airflow", *args]

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self._procs.items() if p.poll() is not None}
        if dead:
            raise LocalAirflowError(f"Airflow process(es) exited: {dead}\n{self.dump_logs()}")

    def _wait_until_healthy(self, deadline: float) -> None:
        """Wait for the api-server's health endpoint and for a fresh job row per component.

        The health endpoint alone is not enough: it reports the most recent job of each
        kind, which in a reused home can be a dead deployment's. So the ``job`` table is
        checked for a running job of each started component that began after start().
        """
        kinds = {"scheduler": "SchedulerJob", "triggerer": "TriggererJob", "dag-processor": "DagProcessorJob"}
        wanted = {kinds[c] for c in self.components if c in kinds}
        last: object = "no answer yet"
        while True:
            self._check_alive()
            api_ok = "api-server" not in self.components
            if not api_ok:
                try:
                    resp = self._http.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
                    last = resp.text
                    api_ok = resp.ok and resp.json().get("metadatabase", {}).get("status") == "healthy"
                except requests.RequestException as err:
                    last = repr(err)
            if api_ok:
                rows = self.query(
                    "SELECT DISTINCT job_type FROM job WHERE state = 'running' AND start_date >= ?",
                    (self._started_at,),
                )
                running = {r["job_type"] for r in rows}
                if wanted <= running:
                    return
                last = f"running jobs: {sorted(running)}, waiting for {sorted(wanted)}"
            if time.monotonic() > deadline:
                raise LocalAirflowError(
                    f"Airflow not healthy in time; last status: {last}\n{self.dump_logs()}"
                )
            time.sleep(0.5)

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every process this object started; safe to call repeatedly.

        Membership is decided by *session*: each component was started as a session leader,
        and everything it spawns stays in that session, including task runners that Airflow
        moves into process groups of their own (and so would survive a plain ``killpg`` of
        the component). Processes outside those sessions are never signalled.

        Running tasks go first, since a stopping scheduler waits for them: SIGTERM (which in
        Airflow 3 only runs the operator's ``on_kill()``, the task itself keeps running), a
        short grace, then SIGKILL, the same escalation the task supervisor uses. Then the
        components get SIGTERM, the api-server last, and whatever is left at the deadline
        gets SIGKILL.
        """
        procs, self._procs = self._procs, {}
        # Drop our keep-alive connection first, or uvicorn waits for it when shutting down.
        self._http.close()
        self._http = requests.Session()
        self._token = None
        try:
            if procs:
                sessions = {p.pid for p in procs.values()}
                deadline = time.monotonic() + timeout
                task_groups = _process_groups(_session_members(sessions)) - sessions
                if task_groups:
                    _signal_groups(task_groups, signal.SIGTERM)
                    _wait_gone(
                        lambda: _process_groups(_session_members(sessions)) & task_groups,
                        min(deadline, time.monotonic() + _TASK_TERM_GRACE),
                    )
                    _signal_groups(task_groups, signal.SIGKILL)
                # The api-server goes last: supervisors and the triggerer report final states
                # through it, and retry for a long time if it is already gone.
                for wave in ([n for n in procs if n != "api-server"], ["api-server"]):
                    wave_sessions = {procs[n].pid for n in wave if n in procs}
                    _signal_groups(wave_sessions, signal.SIGTERM)
                    _wait_gone(functools.partial(_session_members, wave_sessions), deadline)
                for pid in _session_members(sessions):
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.kill(pid, signal.SIGKILL)
                for p in procs.values():
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        p.wait(timeout=10)
        finally:
            for log in self._log_files:
                log.close()
            self._log_files = []

    def cleanup(self) -> None:
        """Stop, then delete the home directory if this object created it."""
        self.stop()
        if self._tmp_home is not None:
            self._tmp_home.cleanup()
            self._tmp_home = None

    @property
    def pids(self) -> dict[str, int]:
        """Pid (= process group = session id) of every running component."""
        return {name: p.pid for name, p in self._procs.items()}

    # ------------------------------------------------------------------ logs

    def component_log(self, component: str) -> Path:
        """Path of the combined stdout/stderr log of one component (or ``db-migrate``)."""
        return self.log_dir / f"{component}.log"

    def dump_logs(self, tail: int = 200) -> str:
        """The last ``tail`` lines of every component log, for failure messages."""
        parts = []
        for name in ("db-migrate", *self.components):
            parts.append(
                f"===== {name}.log (last {tail} lines) =====\n{_tail(self.component_log(name), tail)}"
            )
        return "\n".join(parts)

    def task_log_path(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> Path:
        """Where the default ``[logging] log_filename_template`` puts a task attempt's log."""
        path = self.log_dir / f"dag_id={dag_id}" / f"run_id={run_id}" / f"task_id={task_id}"
        if map_index >= 0:
            path /= f"map_index={map_index}"
        return path / f"attempt={try_number}.log"

    def task_log(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> str:
        """The worker's log file of one task attempt (JSON lines in Airflow 3)."""
        return self.task_log_path(dag_id, run_id, task_id, try_number, map_index).read_text(errors="replace")

    def trigger_logs(
        self, dag_id: str, run_id: str, task_id: str, try_number: int = 1, map_index: int = -1
    ) -> dict[str, str]:
        """Logs the triggerer wrote while running this attempt's trigger, by file name.

        The triggerer writes them next to the task log as ``attempt=N.log.trigger.<job>.log``,
        so a non-empty result proves that a triggerer really ran a trigger for this task.
        """
        base = self.task_log_path(dag_id, run_id, task_id, try_number, map_index)
        return {
            p.name: p.read_text(errors="replace") for p in sorted(base.parent.glob(f"{base.name}.trigger.*"))
        }

    # ------------------------------------------------------------------ database

    def query(self, sql: str, params: Sequence[Any] | Mapping[str, Any] = ()) -> list[dict[str, Any]]:
        """Run a read-only SQL statement on the metadata database; rows as dicts.

        The connection is opened with ``mode=ro`` so a test can never corrupt the state it
        is asserting on, and is closed at once so it holds no lock.
        """
        uri = f"file:{self.db_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            return [dict(row) for row in conn.execute(sql, params).fetchall()]

    def _poll(self, what: str, timeout: float, probe: Callable[[], T | None], interval: float = 0.25) -> T:
        deadline = time.monotonic() + timeout
        while True:
            result = probe()
            if result is not None:
                return result
            self._check_alive()
            if time.monotonic() > deadline:
                raise LocalAirflowError(f"timed out after {timeout}s waiting for {what}\n{self.dump_logs()}")
            time.sleep(interval)

    def import_errors(self) -> list[dict[str, Any]]:
        """Rows of the ``import_error`` table: files the dag-processor failed to parse."""
        return self.query("SELECT filename, bundle_name, timestamp, stacktrace FROM import_error")

    def wait_for_dag(self, dag_id: str, timeout: float = 60.0) -> None:
        """Wait until the dag-processor has parsed and serialized ``dag_id``.

        If the folder has import errors and the DAG is still missing
        ``_IMPORT_ERROR_GRACE`` seconds after they appeared, raise with their stack traces
        instead of waiting out the timeout. (The grace is there because the broken file
        may be another DAG's, parsed just before ours.) Note that the dag-processor skips
        files that contain neither "airflow" nor "dag" without reporting anything.
        """
        first_error_seen: float | None = None

        def probe() -> bool | None:
            nonlocal first_error_seen
            rows = self.query(
                "SELECT 1 FROM dag JOIN serialized_dag USING (dag_id) WHERE dag_id = ? AND NOT dag.is_stale",
                (dag_id,),
            )
            if rows:
                return True
            errors = self.import_errors()
            if errors:
                first_error_seen = first_error_seen or time.monotonic()
                if time.monotonic() - first_error_seen > _IMPORT_ERROR_GRACE:
                    details = "\n".join(f"--- {e['filename']}\n{e['stacktrace']}" for e in errors)
                    raise LocalAirflowError(f"DAG {dag_id!r} not parsed; import errors:\n{details}")
            return None

        self._poll(f"DAG {dag_id!r} to be parsed", timeout, probe, interval=0.5)

    def dag_run_state(self, dag_id: str, run_id: str) -> str | None:
        """Current state of a DAG run, ``None`` if the run does not exist."""
        rows = self.query("SELECT state FROM dag_run WHERE dag_id = ? AND run_id = ?", (dag_id, run_id))
        return rows[0]["state"] if rows else None

    def wait_for_run(self, dag_id: str, run_id: str, timeout: float = 120.0) -> str:
        """Wait until the run is ``success`` or ``failed`` and return that state."""

        def probe() -> str | None:
            state = self.dag_run_state(dag_id, run_id)
            return state if state in _TERMINAL_RUN_STATES else None

        return self._poll(f"run {dag_id}/{run_id} to finish", timeout, probe, interval=0.5)

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        """``task_id``, ``map_index``, ``state``, ``try_number`` (and more) of every TI of a run."""
        return self.query(
            "SELECT task_id, map_index, state, try_number, start_date, end_date, trigger_id, next_method"
            " FROM task_instance WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
            (dag_id, run_id),
        )

    def xcom(
        self, dag_id: str, run_id: str, task_id: str, key: str = "return_value", map_index: int = -1
    ) -> Any:
        """The JSON-decoded XCom value; :class:`KeyError` if the task pushed none."""
        rows = self.query(
            "SELECT value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = ? AND key = ?"
            " AND map_index = ?",
            (dag_id, run_id, task_id, key, map_index),
        )
        if not rows:
            raise KeyError(f"no XCom {key!r} for {dag_id}/{run_id}/{task_id}[{map_index}]")
        value = rows[0]["value"]
        return json.loads(value) if isinstance(value, (str, bytes)) else value

    def task_state_history(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> list[dict[str, Any]]:
        """State transitions of one TI, oldest first, as recorded in the ``log`` table.

        The execution API writes one row per state a worker reports (``running``,
        ``deferred``, ``success``, ...), and the row survives after the trigger row is
        deleted and the TI's ``trigger_id`` is cleared, so ``deferred`` here proves a deferral
        happened. Rows of ``task_instance_history`` (one per finished earlier try) are added
        with ``event = 'history:<state>'``.
        """
        events = self.query(
            "SELECT event, try_number, dttm, extra FROM log WHERE dag_id = ? AND run_id = ?"
            " AND task_id = ? AND map_index = ? ORDER BY dttm, id",
            (dag_id, run_id, task_id, map_index),
        )
        history = self.query(
            "SELECT 'history:' || state AS event, try_number, end_date AS dttm, NULL AS extra"
            " FROM task_instance_history WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = ?"
            " ORDER BY try_number",
            (dag_id, run_id, task_id, map_index),
        )
        return sorted(events + history, key=lambda r: r["dttm"] or "")

    def _trigger_row(self, row: Mapping[str, Any]) -> dict[str, Any]:
        stored = row["kwargs"]
        plaintext = self.decrypt_trigger_kwargs(stored)
        try:
            from airflow.sdk.serde import deserialize

            kwargs = deserialize(json.loads(plaintext))
        except Exception:  # decoding is a convenience; the plaintext is the ground truth
            kwargs = json.loads(plaintext)
        return {
            "id": row["id"],
            "classpath": row["classpath"],
            "kwargs": kwargs,
            "kwargs_json": plaintext,
            "stored_kwargs": stored,
            "encrypted": stored != plaintext,
            "created_date": row["created_date"],
            "triggerer_id": row["triggerer_id"],
        }

    def decrypt_trigger_kwargs(self, stored: str) -> str:
        """Turn a ``trigger.kwargs`` column into the serialized JSON the triggerer receives.

        Mirrors ``airflow.models.trigger.Trigger._decrypt_kwargs`` but with this deployment's
        Fernet key instead of the calling process's Airflow configuration. Note that in
        Airflow 3.3 a *task* deferral stores the kwargs as plain JSON (the execution API
        writes what the worker sent, unencrypted); only triggers created through
        ``Trigger(...)`` in the scheduler/API are Fernet-encrypted. Search this string when
        asserting that no secret was persisted.
        """
        if stored.lstrip().startswith("{") or not self.fernet_key:
            return stored
        from cryptography.fernet import Fernet, MultiFernet

        fernet = MultiFernet([Fernet(part.encode()) for part in self.fernet_key.split(",")])
        return fernet.decrypt(stored.encode()).decode()

    def triggers(self) -> list[dict[str, Any]]:
        """Every row currently in the ``trigger`` table, kwargs decrypted (see ``_trigger_row``)."""
        rows = self.query("SELECT id, classpath, kwargs, created_date, triggerer_id FROM trigger ORDER BY id")
        return [self._trigger_row(r) for r in rows]

    def wait_for_ti_state(
        self,
        dag_id: str,
        run_id: str,
        task_id: str,
        state: str = "deferred",
        timeout: float = 60.0,
        map_index: int = -1,
    ) -> dict[str, Any]:
        """Poll until the TI is in ``state``; return what the DB held at that moment.

        The result has the TI's ``state``, ``try_number``, ``next_method``, ``next_kwargs``
        and ``trigger_id``, plus ``trigger``: the matching ``trigger`` row read in the same
        transaction, or ``None``: ``id``, ``classpath``, ``kwargs`` (deserialized dict),
        ``kwargs_json`` (the decrypted serialized text, the thing to search for secrets),
        ``stored_kwargs`` (the column as stored), ``encrypted``, ``created_date`` and
        ``triggerer_id``. Watching live is the only way to see a trigger row: the triggerer
        deletes it once it fired. Polls every 0.1 s, far shorter than any real deferral.
        Raises if the TI finishes in another state first (it went past unseen).
        """
        finished = {"success", "failed", "skipped", "upstream_failed", "removed"}

        def probe() -> dict[str, Any] | None:
            uri = f"file:{self.db_path}?mode=ro"
            with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
                conn.row_factory = sqlite3.Row
                conn.execute("BEGIN")  # one snapshot for the TI and its trigger
                ti = conn.execute(
                    "SELECT state, try_number, next_method, next_kwargs, trigger_id FROM task_instance"
                    " WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = ?",
                    (dag_id, run_id, task_id, map_index),
                ).fetchone()
                if ti is None or ti["state"] != state:
                    if ti is not None and ti["state"] in finished:
                        raise LocalAirflowError(
                            f"{dag_id}/{run_id}/{task_id} finished as {ti['state']!r} without being seen "
                            f"in state {state!r}"
                        )
                    return None
                trig = None
                if ti["trigger_id"] is not None:
                    trig = conn.execute(
                        "SELECT id, classpath, kwargs, created_date, triggerer_id FROM trigger WHERE id = ?",
                        (ti["trigger_id"],),
                    ).fetchone()
                result = dict(ti)
                result["trigger"] = self._trigger_row(trig) if trig is not None else None
                return result

        return self._poll(f"{dag_id}/{run_id}/{task_id} to be {state!r}", timeout, probe, interval=0.1)

    def deferral_evidence(
        self, dag_id: str, run_id: str, task_id: str, map_index: int = -1
    ) -> dict[str, Any]:
        """What survives in the DB and log folder to show that a TI deferred, after the fact.

        Once a deferred task has finished, its ``trigger`` row is deleted and ``trigger_id``
        is cleared; ``task_instance_history`` only gets rows for retried tries and
        ``task_reschedule`` only for ``mode="reschedule"`` sensors. What remains:

        * ``deferred_events``: ``log`` table rows with ``event = 'deferred'``, written by the
          execution API when the worker reported the deferral (one per deferral);
        * ``trigger_log_files``: ``attempt=N.log.trigger.<triggerer job>.log`` files the
          triggerer wrote next to the task log while it ran the trigger;
        * ``next_method``: the TI's resume method if still set. A task that resumed on a
          worker has it cleared, but one finished by the triggerer itself
          (``end_from_trigger=True``, e.g. ``WaitSensor``) keeps it;
        * ``deferred``: ``True`` when any of the above shows a deferral.

        Use :meth:`wait_for_ti_state` to catch the trigger row itself while it exists.
        """
        events = [
            e for e in self.task_state_history(dag_id, run_id, task_id, map_index) if e["event"] == "deferred"
        ]
        tis = self.query(
            "SELECT try_number, next_method FROM task_instance WHERE dag_id = ? AND run_id = ?"
            " AND task_id = ? AND map_index = ?",
            (dag_id, run_id, task_id, map_index),
        )
        try_number = tis[0]["try_number"] if tis else 0
        next_method = tis[0]["next_method"] if tis else None
        files = [
            name
            for attempt in range(1, try_number + 1)
            for name in self.trigger_logs(dag_id, run_id, task_id, attempt, map_index)
        ]
        return {
            "deferred": bool(events or files or next_method),
            "deferred_events": events,
            "trigger_log_files": files,
            "next_method": next_method,
        }

    # ------------------------------------------------------------------ REST / CLI

    def _auth_headers(self) -> dict[str, str]:
        if self._token is None:
            # With [core] simple_auth_manager_all_admins the SimpleAuthManager hands out an
            # admin JWT to anyone who asks: GET /auth/token, no credentials.
            resp = self._http.get(f"{self.base_url}/auth/token", timeout=30)
            resp.raise_for_status()
            self._token = resp.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}"}

    def api(self, method: str, path: str, json_body: Any = None, **params: Any) -> Any:
        """Call the public REST API (``path`` relative to ``/api/v2``) as an admin.

        Returns the decoded JSON body, or ``None`` for an empty one; raises
        :class:`LocalAirflowError` with the response body on any non-2xx status.
        """
        if "api-server" not in self.components:
            raise LocalAirflowError("the api-server component is not running")
        resp = self._http.request(
            method,
            f"{self.base_url}/api/v2/{path.lstrip('/')}",
            json=json_body,
            params=params or None,
            headers=self._auth_headers(),
            timeout=60,
        )
        if not resp.ok:
            raise LocalAirflowError(f"{method} {path} -> {resp.status_code}: {resp.text}")
        return resp.json() if resp.content else None

    def cli(self, *args: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
        """Run ``airflow <args>`` against this deployment; raise with its output on failure."""
        proc = subprocess.run(
            self._airflow_cmd(*args),
            env=self.env,
            cwd=self.home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if proc.returncode != 0:
            raise LocalAirflowError(
                f"`airflow {' '.join(args)}` exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def unpause(self, dag_id: str) -> None:
        """Unpause a DAG (new DAGs start paused: ``[core] dags_are_paused_at_creation``)."""
        if "api-server" in self.components:
            self.api("PATCH", f"dags/{dag_id}", {"is_paused": False})
        else:
            self.cli("dags", "unpause", dag_id)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Unpause ``dag_id`` and create a manual run without a logical date; return its run_id.

        Uses the REST API (well under a second) and falls back to ``airflow dags trigger``
        (several seconds of start-up) when no api-server runs.
        """
        self.unpause(dag_id)
        if "api-server" in self.components:
            body = {"logical_date": None, "conf": dict(conf or {})}
            return str(self.api("POST", f"dags/{dag_id}/dagRuns", body)["dag_run_id"])
        out = self.cli(
            "dags", "trigger", dag_id, "--conf", json.dumps(dict(conf or {})), "--output", "json"
        ).stdout
        return str(_last_json(out)[0]["dag_run_id"])


def _last_json(text: str) -> Any:
    """The last line of ``text`` that parses as JSON (CLI output may be preceded by logs)."""
    for line in reversed(text.strip().splitlines()):
        with contextlib.suppress(ValueError):
            return json.loads(line)
    raise LocalAirflowError(f"no JSON in CLI output:\n{text}")


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


def _session_members(sessions: Iterable[int]) -> list[int]:
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
