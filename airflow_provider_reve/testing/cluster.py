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
``airflow.db``, ``airflow.cfg``, task logs under ``logs/``, one ``logs/<component>.log``
per process, and ``secrets/``: the Fernet key, ``[api] secret_key`` and the JWT secret,
random per home and readable by the owner only (0600).

Nothing listens beyond loopback: the api-server is bound to ``127.0.0.1`` on a free port, and
the scheduler and triggerer run without their log servers (which Airflow binds to every
interface): all components share the home's log folder, which the api-server reads directly.

:meth:`LocalAirflow.stop` (also run by ``__exit__`` and by a failed :meth:`LocalAirflow.start`)
kills exactly the process sessions this object started, including task processes that moved
into their own process group, and nothing else.

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
import json
import sqlite3
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType
from typing import IO, Any

import requests

from airflow_provider_reve.testing._cluster_config import LOOPBACK, ClusterSecrets, airflow_env
from airflow_provider_reve.testing._cluster_processes import (
    airflow_cmd,
    free_port,
    session_members,
    spawn,
    stop_sessions,
)
from airflow_provider_reve.testing._cluster_queries import ClusterQueries, LocalAirflowError
from airflow_provider_reve.testing._reaper import release_folder, watch_folder

__all__ = ["DEFAULT_COMPONENTS", "LocalAirflow", "LocalAirflowError"]

DEFAULT_COMPONENTS: tuple[str, ...] = ("api-server", "scheduler", "dag-processor", "triggerer")
"""The processes a production-like deployment needs for deferrable tasks."""

# Extra arguments per component. The log servers of the scheduler and the triggerer would
# listen on every interface (Airflow binds them to "" / "::", with no setting to change that),
# and every component writes to and reads from the same log folder here, so they are not
# started. The api-server's host is given on the command line so that no ``env`` override
# can move it off loopback.
_COMPONENT_ARGS: dict[str, tuple[str, ...]] = {
    "scheduler": ("--skip-serve-logs",),
    "triggerer": ("--skip-serve-logs",),
}


class LocalAirflow(ClusterQueries):
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

        The deployment's secrets are created in ``<home>/secrets/`` (see ``secrets`` below);
        ``env`` may still override them, e.g. with ``AIRFLOW__API_AUTH__JWT_SECRET``.
    :param components: which of :data:`DEFAULT_COMPONENTS` to start. Without the
        ``api-server`` the REST-based helpers fall back to the ``airflow`` CLI.

    Attributes: ``home``, ``base_url`` (the api-server, on ``127.0.0.1``), ``secrets`` (a
    :class:`~airflow_provider_reve.testing._cluster_config.ClusterSecrets`: where the keys are
    kept, and their values) and ``env``, the environment of every process, which holds those
    keys too: never log it.

    Subclasses (e.g. :class:`~airflow_provider_reve.testing.production.ProductionAirflow`)
    reuse start-up, health checks and stopping by overriding the ``_component_*`` hooks,
    ``_migrate()`` and ``_not_ready()``.
    """

    #: The component names this class knows how to start.
    KNOWN_COMPONENTS: tuple[str, ...] = DEFAULT_COMPONENTS

    def __init__(
        self,
        dags_folder: Path | str,
        *,
        home: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        components: Sequence[str] = DEFAULT_COMPONENTS,
    ) -> None:
        unknown = set(components) - set(self.KNOWN_COMPONENTS)
        if unknown:
            raise ValueError(f"unknown components {sorted(unknown)}; choose from {self.KNOWN_COMPONENTS}")
        self.dags_folder = Path(dags_folder).resolve()
        self._tmp_home: tempfile.TemporaryDirectory[str] | None = None
        if home is None:
            self._tmp_home = tempfile.TemporaryDirectory(prefix="local-airflow-")
            home = self._tmp_home.name
            watch_folder(home)  # deleted by the reaper should this process die
        self.home = Path(home).resolve()
        self.log_dir = self.home / "logs"
        self.db_path = self.home / "airflow.db"
        self.components: tuple[str, ...] = tuple(components)
        self.port = free_port()
        self.base_url = f"http://{LOOPBACK}:{self.port}"
        self.secrets = ClusterSecrets.load_or_create(self.home)
        self.env: dict[str, str] = airflow_env(
            home=self.home,
            dags_folder=self.dags_folder,
            db_path=self.db_path,
            log_dir=self.log_dir,
            port=self.port,
            keys=self.secrets,
            extra=dict(env or {}),
        )
        # Honour an override of the key by the caller, since decoding trigger kwargs needs it.
        self.fernet_key = self.env["AIRFLOW__CORE__FERNET_KEY"]
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._log_files: list[IO[bytes]] = []
        self._token: str | None = None
        self._http = requests.Session()
        self._started_at = ""

    # ------------------------------------------------------------------ lifecycle

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

        :param timeout: seconds to wait for every component to report healthy.
        :return: this deployment, running.
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
        self._run_db_migrate(deadline)
        # WAL lets readers (this object, the api-server) run beside the one writer instead of
        # making every process wait on "database is locked". The mode is stored in the file.
        with contextlib.closing(sqlite3.connect(self.db_path, timeout=30)) as conn:
            conn.execute("PRAGMA journal_mode=WAL")

    def _run_db_migrate(self, deadline: float) -> None:
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

    def _spawn(self, component: str) -> None:
        log = (self.log_dir / f"{component}.log").open("ab")
        self._log_files.append(log)
        self._procs[component] = spawn(
            self._component_command(component), env=self._component_env(component), cwd=self.home, log=log
        )

    def _component_command(self, component: str) -> list[str]:
        """The command line of one component (its name is the ``airflow`` sub-command here)."""
        args: tuple[str, ...] = _COMPONENT_ARGS.get(component, ())
        if component == "api-server":
            args = ("--host", LOOPBACK, "--port", str(self.port))
        return self._airflow_cmd(component, *args)

    def _component_env(self, component: str) -> dict[str, str]:
        """The environment of one component: :attr:`env` for every one of them here."""
        return self.env

    @staticmethod
    def _airflow_cmd(*args: str) -> list[str]:
        return airflow_cmd(*args)

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
        last: object = "no answer yet"
        while True:
            self._check_alive()
            api_ok = "api-server" not in self.components
            if not api_ok:
                api_ok, last = self._api_server_health()
            if api_ok:
                missing = self._not_ready()
                if missing is None:
                    return
                last = missing
            if time.monotonic() > deadline:
                raise LocalAirflowError(
                    f"Airflow not healthy in time; last status: {last}\n{self.dump_logs()}"
                )
            time.sleep(0.5)

    def _api_server_health(self) -> tuple[bool, str]:
        """Whether the api-server answers healthy, with what it said (or why it did not)."""
        try:
            resp = self._http.get(f"{self.base_url}/api/v2/monitor/health", timeout=5)
            return resp.ok and resp.json().get("metadatabase", {}).get("status") == "healthy", resp.text
        except (requests.RequestException, ValueError) as err:
            return False, repr(err)

    def _not_ready(self) -> str | None:
        """What is still missing once the api-server is healthy, or ``None`` when all is up:
        a running job row, started after :meth:`start`, for each scheduler, triggerer and
        dag-processor."""
        kinds = {"scheduler": "SchedulerJob", "triggerer": "TriggererJob", "dag-processor": "DagProcessorJob"}
        wanted = {kinds[c] for c in self.components if c in kinds}
        rows = self.query(
            "SELECT DISTINCT job_type FROM job WHERE state = 'running' AND start_date >= ?",
            (self._started_at,),
        )
        running = {r["job_type"] for r in rows}
        if wanted <= running:
            return None
        return f"running jobs: {sorted(running)}, waiting for {sorted(wanted)}"

    def stop(self, timeout: float = 20.0) -> None:
        """Stop every process this object started; safe to call repeatedly.

        Membership is decided by *session*: each component was started as a session leader,
        and everything it spawns stays in that session, including task runners that Airflow
        moves into process groups of their own (and so would survive a plain ``killpg`` of
        the component). Processes outside those sessions are never signalled. Running tasks
        are stopped first (SIGTERM, a short grace, SIGKILL), then the components, the
        api-server last (see ``_cluster_processes.stop_sessions``).

        :param timeout: seconds to wait for the processes to exit after SIGTERM, before SIGKILL.
        """
        procs, self._procs = self._procs, {}
        # Drop our keep-alive connection first, or uvicorn waits for it when shutting down.
        self._http.close()
        self._http = requests.Session()
        self._token = None
        try:
            stop_sessions(procs, timeout)
        finally:
            for log in self._log_files:
                log.close()
            self._log_files = []

    def cleanup(self) -> None:
        """Stop, then delete the home directory if this object created it."""
        self.stop()
        if self._tmp_home is not None:
            self._tmp_home.cleanup()
            release_folder(self._tmp_home.name)
            self._tmp_home = None

    @property
    def pids(self) -> dict[str, int]:
        """Pid (= process group = session id) of every running component."""
        return {name: p.pid for name, p in self._procs.items()}

    def process_ids(self) -> list[int]:
        """Pids of every live process of this deployment: components, their workers and
        subprocesses, task runners (all members of the components' sessions)."""
        return session_members(self.pids.values())

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

        :param method: ``GET``, ``POST``, ``PATCH``...
        :param path: relative to ``/api/v2``, e.g. ``dags/my_dag``.
        :param json_body: the request's JSON body, if any.
        :param params: query parameters.
        :return: the decoded JSON body, or ``None`` for an empty one.
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
        """Run ``airflow <args>`` against this deployment; raise with its output on failure.

        :param args: the ``airflow`` command's arguments, e.g. ``"dags", "list"``.
        :param timeout: seconds the command may take.
        :return: the finished process, its output as text.
        """
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
        """Unpause a DAG (new DAGs start paused: ``[core] dags_are_paused_at_creation``).

        :param dag_id: the DAG to unpause.
        """
        if "api-server" in self.components:
            self.api("PATCH", f"dags/{dag_id}", {"is_paused": False})
        else:
            self.cli("dags", "unpause", dag_id)

    def trigger(self, dag_id: str, conf: Mapping[str, Any] | None = None) -> str:
        """Unpause ``dag_id`` and create a manual run without a logical date; return its run_id.

        Uses the REST API (well under a second) and falls back to ``airflow dags trigger``
        (several seconds of start-up) when no api-server runs.

        :param dag_id: the DAG to run.
        :param conf: the run's ``conf``.
        :return: the new run's ``run_id``.
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
