"""A throw-away Airflow in the production topology: CeleryExecutor, PostgreSQL, Redis, HA triggerers.

:class:`~airflow_provider_reve.testing.cluster.LocalAirflow` (SQLite, ``LocalExecutor``, one
triggerer) hides what matters when a deployment outgrows one machine: a trigger reassigned when
its triggerer dies (``run()`` starts again from the stored kwargs in another process), a task
retried on another worker host, row locking on PostgreSQL. :class:`ProductionAirflow` starts the
topology of Airflow's own docker-compose quick start, on this machine, with real components:

* a private PostgreSQL (metadata DB and Celery result backend) and a private Redis (Celery
  broker), fresh for every start, on free loopback ports, each with a random password in
  ``<home>/secrets/`` (see :mod:`airflow_provider_reve.testing._production_services`);
* the api-server, one scheduler, one dag-processor, ``workers`` Celery workers (``worker-1``,
  ``worker-2``...: separate processes with their own Celery hostnames) and ``triggerers``
  triggerers (``triggerer-1``, ``triggerer-2``...)::

    from airflow_provider_reve.testing.production import ProductionAirflow

    with ProductionAirflow(Path("dags"), env={"AIRFLOW_CONN_REVE_DEFAULT": "..."}) as af:
        af.wait_for_dag("my_dag")
        run_id = af.trigger("my_dag")
        af.kill("triggerer-1")            # SIGKILL, as if its host died
        assert af.wait_for_run("my_dag", run_id) == "success"
        af.start_component("triggerer-1")

Each component stands for a host of its own: it reports its name as its hostname (``[core]
hostname_callable``), so ``task_instance.hostname`` says which worker ran a try and ``job.hostname``
which triggerer holds a trigger (``trigger.triggerer_id`` is that job's id).

Everything else is :class:`LocalAirflow`'s: the same secrets, loopback only (the workers and the
scheduler run without their log servers), one log file per process in ``<home>/logs`` (plus
``postgresql.log`` and ``redis.log``), the same read-only queries (here on PostgreSQL) and the
same :meth:`stop`, which stops every process of every component and then the two servers, by
session, whatever happened.

Needs the Debian packages ``postgresql`` and ``redis-server`` and the ``system`` extra
(``apache-airflow-providers-celery``, ``psycopg2-binary``, ``asyncpg``); ``make test-system``
installs both.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from airflow_provider_reve.testing._cluster_config import ClusterSecrets
from airflow_provider_reve.testing._cluster_processes import session_members, stop_sessions
from airflow_provider_reve.testing._cluster_queries import Fetch, LocalAirflowError, Params
from airflow_provider_reve.testing._production_services import (
    HOSTNAME_CALLABLE,
    HOSTNAME_ENV,
    PostgresService,
    RedisService,
)
from airflow_provider_reve.testing._reaper import release_session, watch_folder
from airflow_provider_reve.testing.cluster import LocalAirflow

__all__ = ["ProductionAirflow"]

T = TypeVar("T")

_JOB_TYPES = {"scheduler": "SchedulerJob", "dag-processor": "DagProcessorJob", "triggerer": "TriggererJob"}


class ProductionAirflow(LocalAirflow):
    """Run Airflow on CeleryExecutor + PostgreSQL + Redis with several workers and triggerers.

    :param dags_folder: folder the dag-processor parses.
    :param home: ``AIRFLOW_HOME`` (logs, ``airflow.cfg``, secrets); a temporary one by default.
        The databases are not kept in it: PostgreSQL and Redis start empty every time.
    :param env: extra environment for every Airflow process, applied last.
    :param workers: how many Celery workers (``worker-1``...).
    :param triggerers: how many triggerers (``triggerer-1``...).
    :param worker_concurrency: task slots per worker (``[celery] worker_concurrency``).
    :param triggerer_capacity: triggers per triggerer (``[triggerer] capacity``).
    :param triggerer_health_check_threshold: seconds without a heartbeat after which a
        triggerer counts as dead and its triggers go to another one (Airflow's default is 30).
    :param task_heartbeat_timeout: seconds without a heartbeat after which the scheduler fails
        a running task whose worker is gone, so that its retry runs (Airflow's default is 300).
    """

    def __init__(
        self,
        dags_folder: Path | str,
        *,
        home: Path | str | None = None,
        env: Mapping[str, str] | None = None,
        workers: int = 2,
        triggerers: int = 2,
        worker_concurrency: int = 8,
        triggerer_capacity: int = 1000,
        triggerer_health_check_threshold: float = 10.0,
        task_heartbeat_timeout: int = 30,
    ) -> None:
        if workers < 1 or triggerers < 1:
            raise ValueError("a production topology needs at least one worker and one triggerer")
        self.workers = tuple(f"worker-{n}" for n in range(1, workers + 1))
        self.triggerers = tuple(f"triggerer-{n}" for n in range(1, triggerers + 1))
        components = ("api-server", "scheduler", "dag-processor", *self.workers, *self.triggerers)
        self.KNOWN_COMPONENTS = components
        tmp_home = None
        if home is None:
            tmp_home = tempfile.TemporaryDirectory(prefix="production-airflow-")
            home = tmp_home.name
            watch_folder(home)  # deleted by the reaper should this process die
        home = Path(home).resolve()
        log_dir = home / "logs"
        # The secrets folder is LocalAirflow's; the services keep their passwords beside its keys.
        secrets = ClusterSecrets.load_or_create(home)
        self.postgres = PostgresService(secrets, log_dir)
        self.redis = RedisService(secrets, home, log_dir)
        settings = {
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": self.postgres.sqlalchemy_url,
            "AIRFLOW__CORE__EXECUTOR": "CeleryExecutor",
            "AIRFLOW__CELERY__BROKER_URL": self.redis.url,
            "AIRFLOW__CELERY__RESULT_BACKEND": "db+" + self.postgres.sqlalchemy_url,
            "AIRFLOW__CELERY__WORKER_CONCURRENCY": str(worker_concurrency),
            "AIRFLOW__CORE__HOSTNAME_CALLABLE": HOSTNAME_CALLABLE,
            # Room for every worker slot; Airflow's default of 32 would be the bottleneck.
            "AIRFLOW__CORE__PARALLELISM": str(max(32, 2 * workers * worker_concurrency)),
            "AIRFLOW__TRIGGERER__CAPACITY": str(triggerer_capacity),
            "AIRFLOW__TRIGGERER__TRIGGERER_HEALTH_CHECK_THRESHOLD": str(triggerer_health_check_threshold),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT": str(task_heartbeat_timeout),
            "AIRFLOW__SCHEDULER__TASK_INSTANCE_HEARTBEAT_TIMEOUT_DETECTION_INTERVAL": "5",
        }
        super().__init__(dags_folder, home=home, env={**settings, **(env or {})}, components=components)
        self._tmp_home = tmp_home
        self._services: dict[str, subprocess.Popen[bytes]] = {}
        self._celery: Any = None
        self._signalled: dict[str, subprocess.Popen[bytes]] = {}

    # ------------------------------------------------------------------ lifecycle

    def __enter__(self) -> ProductionAirflow:
        return self.start()

    def start(self, timeout: float = 300.0) -> ProductionAirflow:
        """Start PostgreSQL and Redis, migrate, start every component, wait until all are up.

        Up means: the api-server's health endpoint answers, a running job row of this start
        exists for the scheduler, the dag-processor and each triggerer, and each Celery worker
        answers a ping. On any failure everything started so far is stopped.

        :param timeout: seconds to wait for the servers and every component to be ready.
        :return: this deployment, running.
        """
        if self._procs or self._services:
            raise LocalAirflowError("already started")
        deadline = time.monotonic() + timeout
        self.log_dir.mkdir(parents=True, exist_ok=True)
        try:
            self.postgres.start(deadline)
            assert self.postgres.proc is not None
            self._services["postgresql"] = self.postgres.proc
            self.redis.start(deadline)
            assert self.redis.proc is not None
            self._services["redis"] = self.redis.proc
            super().start(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop every Airflow process, then Redis and PostgreSQL.

        The processes stop as in :meth:`~airflow_provider_reve.testing.cluster.LocalAirflow.stop`.

        The servers go last, so that no component dies on a lost database while shutting down;
        PostgreSQL's data folder is deleted. Safe to call repeatedly.

        :param timeout: seconds to wait for each process to exit after SIGTERM, before SIGKILL.
        """
        try:
            celery, self._celery = self._celery, None
            if celery is not None:
                with contextlib.suppress(Exception):  # a probe client; never a reason to skip the rest
                    celery.close()
            # Components sent a signal other than SIGKILL may still be shutting down (a Celery
            # worker's warm shutdown waits for its tasks): they are stopped like the others.
            self._procs.update({f"{name} (signalled)": proc for name, proc in self._signalled.items()})
            self._signalled = {}
            super().stop(timeout)
        finally:
            services, self._services = self._services, {}
            # A server spawned but not yet answering (start() failed or was interrupted while
            # waiting for it) is stopped too, before its data folder is deleted.
            for name, service in (("postgresql", self.postgres), ("redis", self.redis)):
                if service.proc is not None and service.proc.poll() is None:
                    services.setdefault(name, service.proc)
            try:
                stop_sessions(services, timeout)
            finally:
                self.redis.cleanup()
                self.postgres.cleanup()

    def _migrate(self, deadline: float) -> None:
        self._run_db_migrate(deadline)

    def _component_command(self, component: str) -> list[str]:
        if component in self.workers:
            return self._airflow_cmd(
                "celery",
                "worker",
                "--celery-hostname",
                self.celery_hostname(component),
                # Its log server would listen on every interface; the log folder is shared.
                "--skip-serve-logs",
            )
        if component in self.triggerers:
            return self._airflow_cmd("triggerer", "--skip-serve-logs")
        return super()._component_command(component)

    def _component_env(self, component: str) -> dict[str, str]:
        return {**self.env, HOSTNAME_ENV: component}

    @staticmethod
    def celery_hostname(component: str) -> str:
        """The Celery node name of a worker component, e.g. ``worker-1@reve-production``."""
        return f"{component}@reve-production"

    def _check_alive(self) -> None:
        dead = {name: p.returncode for name, p in self._services.items() if p.poll() is not None}
        if dead:
            raise LocalAirflowError(f"service(s) exited: {dead}\n{self.dump_logs()}")
        super()._check_alive()

    def dump_logs(self, tail: int = 200) -> str:
        parts = [super().dump_logs(tail)]
        for log in (self.postgres.log_path, self.redis.log_path):
            lines = (
                log.read_text(errors="replace").splitlines()[-tail:] if log.exists() else ["<no log file>"]
            )
            parts.append(f"===== {log.name} (last {tail} lines) =====\n" + "\n".join(lines))
        return "\n".join(parts)

    # ------------------------------------------------------------------ readiness

    def _not_ready(self) -> str | None:
        return self._components_not_ready(self.components, self._started_at)

    def _components_not_ready(self, components: tuple[str, ...], since: str) -> str | None:
        """What is missing before ``components`` count as up, or ``None``.

        A job component is up when a running job row with its hostname started after ``since``
        (rows of killed processes say "running" forever, so older rows do not count); a worker
        is up when it answers a Celery ping.
        """
        wanted = Counter(c for c in components if _job_type(c))
        rows = self.query(
            "SELECT hostname, job_type FROM job WHERE state = 'running' AND start_date >= ?", (since,)
        )
        running = Counter(r["hostname"] for r in rows if r["job_type"] == _job_type(r["hostname"] or ""))
        missing = sorted(c for c in wanted if running[c] < 1)
        if "api-server" in components and not self._api_server_health()[0]:
            missing.append("api-server")  # it writes no job row and answers no ping
        workers = [c for c in components if c in self.workers]
        if workers:
            answered = self.worker_pings()
            missing += sorted(c for c in workers if self.celery_hostname(c) not in answered)
        return f"not up yet: {missing}" if missing else None

    def worker_pings(self, timeout: float = 1.0) -> set[str]:
        """Celery node names of the workers that answer a ping within ``timeout`` seconds.

        :param timeout: seconds to wait for the answers.
        :return: the Celery hostnames of the workers that answered.
        """
        if self._celery is None:
            from celery import Celery

            self._celery = Celery("reve-production-probe", broker=self.redis.url)
        replies = self._celery.control.ping(timeout=timeout) or []
        return {name for reply in replies for name in reply}

    # ------------------------------------------------------------------ failures on demand

    def kill(self, component: str, sig: signal.Signals = signal.SIGKILL, timeout: float = 30.0) -> list[int]:
        """Send ``sig`` to every process of ``component``, as if its host died; return their pids.

        Every member of the component's session is signalled: the worker, its pool processes, the
        task supervisors and task processes that moved into process groups of their own. The
        component counts as stopped (:meth:`start_component` starts it again); with SIGKILL this
        returns once they are all gone. With another signal what is left is still stopped by
        :meth:`stop`, or by a second ``kill()``, and :meth:`start_component` refuses while any
        of it runs.

        :param component: e.g. ``"triggerer-1"`` or ``"worker-2"``.
        :param sig: the signal; SIGKILL (the default) is a host that died.
        :param timeout: seconds to wait for the processes to be gone (SIGKILL only).
        :return: the pids that were signalled.
        """
        proc = self._procs.pop(component, None) or self._signalled.pop(component, None)
        if proc is None:
            raise LocalAirflowError(f"{component!r} is not running")
        members = session_members([proc.pid])
        for pid in members:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        if sig == signal.SIGKILL:
            self._poll(
                f"{component} to be gone", timeout, lambda: None if session_members([proc.pid]) else True
            )
            release_session(proc.pid)
        else:  # it may take its time, or ignore the signal: stop() still stops what is left
            self._signalled[component] = proc
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
        return members

    def stop_component(self, component: str, timeout: float = 60.0) -> None:
        """Stop one component gracefully (SIGTERM, then SIGKILL at ``timeout``), as a deploy would.

        :param component: e.g. ``"triggerer-1"``.
        :param timeout: seconds to wait for it to exit.
        """
        proc = self._procs.pop(component, None)
        if proc is None:
            raise LocalAirflowError(f"{component!r} is not running")
        stop_sessions({component: proc}, timeout)

    def start_component(self, component: str, timeout: float = 120.0) -> None:
        """Start a stopped or killed component again and wait until it is up.

        :param component: e.g. ``"triggerer-1"``.
        :param timeout: seconds to wait for it to be ready.
        """
        if component not in self.components:
            raise ValueError(f"unknown component {component!r}; choose from {self.components}")
        if component in self._procs:
            raise LocalAirflowError(f"{component!r} is already running")
        signalled = self._signalled.get(component)
        if signalled is not None:
            if session_members([signalled.pid]):
                # Two workers with one Celery node name, two triggerers with one hostname: no.
                raise LocalAirflowError(f"{component!r} was signalled but is still running; kill it first")
            del self._signalled[component]
        since = self._db_now()
        self._spawn(component)
        self._poll(
            f"{component} to be up",
            timeout,
            lambda: True if self._components_not_ready((component,), since) is None else None,
            interval=0.5,
        )

    def wait_until(self, what: str, probe: Callable[[], T | None], timeout: float = 60.0) -> T:
        """Poll ``probe`` until it returns something other than ``None``; return that.

        Raises :class:`~airflow_provider_reve.testing.cluster.LocalAirflowError` with every log
        tail after ``timeout`` seconds, or at once if a component or service died that was not
        stopped on purpose.

        :param what: what is awaited, for the error message.
        :param probe: called every 0.25 s; ``None`` means "not yet".
        :param timeout: seconds to wait.
        :return: the probe's first answer other than ``None``.
        """
        return self._poll(what, timeout, probe, interval=0.25)

    def _db_now(self) -> str:
        return str(
            self.query("SELECT to_char(now() AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') AS t")[0]["t"]
        )

    def job_hostnames(self) -> dict[int, str]:
        """``job.id`` -> ``job.hostname`` (the component name), e.g. to name a ``triggerer_id``.

        :return: job id -> the component (hostname) that ran it.
        """
        rows = self.query("SELECT id, hostname FROM job")
        return {r["id"]: r["hostname"] for r in rows}

    # ------------------------------------------------------------------ PostgreSQL reads

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Fetch]:
        """A read-only REPEATABLE READ transaction on the metadata DB: one consistent state.

        JSON columns come back as their text, as SQLite returns them, so every reader of
        :class:`ClusterQueries` decodes them the same way.
        """
        import psycopg2
        import psycopg2.extras

        conn = psycopg2.connect(**self.postgres.connect_kwargs())
        try:
            conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
            psycopg2.extras.register_default_json(conn, loads=_as_text)
            psycopg2.extras.register_default_jsonb(conn, loads=_as_text)
            with conn.cursor(cursor_factory=psycopg2.extras.RealDictCursor) as cur:

                def fetch(sql: str, params: Params = ()) -> list[dict[str, Any]]:
                    if params:
                        cur.execute(_to_pyformat(sql, params), params)
                    else:
                        cur.execute(sql)
                    return [dict(row) for row in cur.fetchall()]

                yield fetch
        finally:
            with contextlib.suppress(Exception):
                conn.rollback()
            conn.close()

    def table_names(self) -> list[str]:
        """Every table of the metadata DB (Airflow's and the Celery result backend's)."""
        rows = self.query(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
            " AND table_type = 'BASE TABLE' ORDER BY table_name"
        )
        return [r["table_name"] for r in rows]

    def table_text(self, table: str) -> str:
        """Every row of ``table`` as PostgreSQL's text form of the row, one per line."""
        if table not in self.table_names():
            raise ValueError(f"no table {table!r}")
        rows = self.query(f'SELECT t::text AS row FROM "{table}" AS t')
        return "\n".join(r["row"] for r in rows)


def _job_type(component: str) -> str | None:
    """The ``job.job_type`` a component writes (``triggerer-2`` -> ``TriggererJob``), if any."""
    return _JOB_TYPES.get(re.sub(r"-\d+$", "", component))


def _as_text(value: str) -> str:
    return value


def _to_pyformat(sql: str, params: Params) -> str:
    """``?`` / ``:name`` placeholders (sqlite3's, which ClusterQueries uses) -> psycopg2's."""
    sql = sql.replace("%", "%%")
    if isinstance(params, Mapping):
        return re.sub(r"(?<!:):([A-Za-z_]\w*)", r"%(\1)s", sql)
    return sql.replace("?", "%s")
