"""The private PostgreSQL and Redis of a
:class:`~airflow_provider_reve.testing.production.ProductionAirflow`.

Both come from the Debian packages ``postgresql`` and ``redis-server`` and are started fresh for
each deployment: PostgreSQL ``initdb``'d into a temporary folder, Redis with no persistence, each
on a free loopback port and with a random password kept in ``<home>/secrets/`` (0600). A
PostgreSQL server refuses to run as root, so as root it runs as the ``postgres`` user (``runuser``)
from a folder that user owns; its unix socket stays inside that folder.

Like the Airflow components, each server is the leader of its own session, so
:func:`~airflow_provider_reve.testing._cluster_processes.stop_sessions` stops it and everything it
forked (PostgreSQL's backends), and nothing else.
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import IO, Any

from airflow_provider_reve.testing._cluster_config import LOOPBACK, ClusterSecrets, load_or_create_secret
from airflow_provider_reve.testing._cluster_processes import free_port, spawn
from airflow_provider_reve.testing._reaper import release_folder, watch_folder

#: The one command that installs what these services need (``make test-system`` runs it as root).
INSTALL_HINT = (
    "sudo sh -c 'apt-get update && apt-get install -y --no-install-recommends postgresql redis-server'"
)

#: Airflow's ``[core] hostname_callable`` in a ``ProductionAirflow``: see :func:`process_hostname`.
HOSTNAME_CALLABLE = "airflow_provider_reve.testing._production_services.process_hostname"
HOSTNAME_ENV = "REVE_TESTING_HOSTNAME"

_DB_NAME = "airflow"
_DB_USER = "airflow"
_SERVICE_USER = "postgres"


class ServiceError(RuntimeError):
    """A service binary is missing, or a server did not come up."""


def process_hostname() -> str:
    """The "host" a process of a ``ProductionAirflow`` reports (``task_instance.hostname``, ``job``).

    Every component runs on this one machine, but stands for a host of its own: each gets its
    component name (``worker-1``, ``triggerer-2``...) in ``REVE_TESTING_HOSTNAME``, so the metadata
    DB shows which worker ran a try, as it would with one worker per host.
    """
    name = os.environ.get(HOSTNAME_ENV)
    if name:
        return name
    import socket

    return socket.getfqdn()


def _is_root() -> bool:
    return os.geteuid() == 0


def _postgres_bin(name: str) -> str:
    """A PostgreSQL server binary: Debian keeps them out of PATH, under /usr/lib/postgresql/<v>/bin."""
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_major_version)
    if found:
        return found[-1]
    on_path = shutil.which(name)
    if on_path:
        return on_path
    raise ServiceError(
        f"PostgreSQL's {name!r} was not found (Debian package postgresql). Run:\n    {INSTALL_HINT}"
    )


def _major_version(path: str) -> int:
    with contextlib.suppress(ValueError, IndexError):
        return int(Path(path).parts[-3])
    return 0


def _service_env() -> dict[str, str]:
    """The servers' environment: enough to run, nothing of the caller's (as root they run as
    ``postgres``, and any process of that user may read ``/proc/<pid>/environ``)."""
    kept = ("PATH", "LANG", "LC_ALL", "LC_CTYPE", "LC_COLLATE", "LC_MESSAGES", "TZ")
    return {name: os.environ[name] for name in kept if name in os.environ}


def _as_service_user(cmd: list[str]) -> list[str]:
    # PostgreSQL refuses to run as root; as anyone else it runs as that user.
    return ["runuser", "-u", _SERVICE_USER, "--", *cmd] if _is_root() else cmd


class PostgresService:
    """A private PostgreSQL server: ``initdb`` into a temporary folder, loopback, password auth.

    :param secrets: the deployment's secrets; the ``airflow`` role's password is kept beside them.
    :param log_dir: the deployment's log folder; the server writes ``postgresql.log`` there.
    """

    def __init__(self, secrets: ClusterSecrets, log_dir: Path) -> None:
        self.port = free_port()
        self.password = load_or_create_secret(secrets.directory / "postgres_password")
        self.log_path = log_dir / "postgresql.log"
        self.root: Path | None = None
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def sqlalchemy_url(self) -> str:
        """The metadata DB for Airflow: psycopg2 (the api-server derives ``+asyncpg`` from it)."""
        return f"postgresql+psycopg2://{_DB_USER}:{self.password}@{LOOPBACK}:{self.port}/{_DB_NAME}"

    def connect_kwargs(self) -> dict[str, Any]:
        """``psycopg2.connect()`` arguments; timestamps come back in UTC."""
        return {
            "host": LOOPBACK,
            "port": self.port,
            "user": _DB_USER,
            "password": self.password,
            "dbname": _DB_NAME,
            "connect_timeout": 10,
            "options": "-c timezone=UTC",
        }

    def start(self, deadline: float) -> None:
        initdb, postgres = _postgres_bin("initdb"), _postgres_bin("postgres")
        # Its own folder, not one under the Airflow home: as root the server runs as `postgres`,
        # which must own it and cannot enter a home that is private to root.
        self.root = Path(tempfile.mkdtemp(prefix="reve-postgres-"))
        watch_folder(str(self.root))  # deleted by the reaper should this process die
        data, sockets = self.root / "data", self.root / "sockets"
        sockets.mkdir(mode=0o700)
        pwfile = self.root / "pwfile"
        fd = os.open(pwfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write(self.password)
        if _is_root():
            shutil.chown(self.root, _SERVICE_USER)
            shutil.chown(sockets, _SERVICE_USER)
            shutil.chown(pwfile, _SERVICE_USER)
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        try:
            subprocess.run(
                _as_service_user(
                    [
                        initdb,
                        "--pgdata",
                        str(data),
                        "--username",
                        _DB_USER,
                        "--pwfile",
                        str(pwfile),
                        "--auth",
                        "scram-sha-256",
                        "--encoding",
                        "UTF8",
                        "--no-sync",
                        "--no-instructions",
                    ]
                ),
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                env=_service_env(),
                timeout=max(1.0, deadline - time.monotonic()),
                check=True,
            )
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as err:
            raise ServiceError(f"initdb failed ({err}); see {self.log_path}") from err
        finally:
            pwfile.unlink(missing_ok=True)
        settings = {
            "listen_addresses": LOOPBACK,
            "port": str(self.port),
            "unix_socket_directories": str(sockets),
            # Airflow's processes (pools of 5 + overflow each), the Celery result backend, this object.
            "max_connections": "300",
            # A throw-away database: durability only costs time here.
            "fsync": "off",
            "synchronous_commit": "off",
            "full_page_writes": "off",
        }
        cmd = [postgres, "-D", str(data)]
        for name, value in settings.items():
            cmd += ["-c", f"{name}={value}"]
        self.proc = spawn(_as_service_user(cmd), env=_service_env(), cwd=self.root, log=self._log)
        self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> None:
        import psycopg2

        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"postgres exited {self.proc.returncode}; see {self.log_path}")
            try:
                # The cluster has only its template databases yet; Airflow's is made here.
                kwargs = {**self.connect_kwargs(), "dbname": "postgres"}
                with contextlib.closing(psycopg2.connect(**kwargs)) as conn:
                    conn.autocommit = True
                    with conn.cursor() as cur:
                        cur.execute(f"CREATE DATABASE {_DB_NAME}")
                return
            except psycopg2.OperationalError as err:
                last = err
                time.sleep(0.2)
        raise ServiceError(f"PostgreSQL did not accept connections in time ({last}); see {self.log_path}")

    def cleanup(self) -> None:
        """Close the log and delete the data folder (call once the server is stopped)."""
        if self._log is not None:
            self._log.close()
            self._log = None
        if self.root is not None:
            shutil.rmtree(self.root, ignore_errors=True)
            release_folder(str(self.root))
            self.root = None


class RedisService:
    """A private Redis: loopback, a password, nothing written to disk.

    The settings go in a 0600 file, not on the command line, so the password is not in ``ps``.
    """

    def __init__(self, secrets: ClusterSecrets, home: Path, log_dir: Path) -> None:
        self.port = free_port()
        self.password = load_or_create_secret(secrets.directory / "redis_password")
        self.config_path = secrets.directory / "redis.conf"
        self.home = home
        self.log_path = log_dir / "redis.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def url(self) -> str:
        """The Celery broker URL."""
        return f"redis://:{self.password}@{LOOPBACK}:{self.port}/0"

    def client(self) -> Any:
        """A ``redis.Redis`` client of this server (the Celery extra installs redis-py)."""
        import redis

        return redis.Redis(host=LOOPBACK, port=self.port, password=self.password, socket_timeout=10)

    def start(self, deadline: float) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise ServiceError(
                f"'redis-server' was not found (Debian package redis-server). Run:\n    {INSTALL_HINT}"
            )
        lines = [
            f"port {self.port}",
            f"bind {LOOPBACK}",
            "protected-mode yes",
            'save ""',
            "appendonly no",
            'logfile ""',
            "daemonize no",
            f"requirepass {self.password}",
        ]
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w", encoding="ascii") as fh:
            fh.write("\n".join(lines) + "\n")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = self.log_path.open("ab")
        # No "dir" line: the working directory is the home, and a path in Redis' config would
        # need Redis' own quoting (a space in it stops the server).
        self.proc = spawn([binary, str(self.config_path)], env=_service_env(), cwd=self.home, log=self._log)
        self._wait_ready(deadline)

    def _wait_ready(self, deadline: float) -> None:
        import redis

        last: object = None
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise ServiceError(f"redis-server exited {self.proc.returncode}; see {self.log_path}")
            try:
                client = self.client()
                try:
                    if client.ping():
                        return
                finally:
                    client.close()
            except redis.RedisError as err:
                last = err
            time.sleep(0.1)
        raise ServiceError(f"Redis did not answer in time ({last}); see {self.log_path}")

    def cleanup(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None
