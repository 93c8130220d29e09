"""Configuration and secrets of a :class:`~airflow_provider_reve.testing.cluster.LocalAirflow`.

Every secret an Airflow deployment signs or encrypts with is generated per deployment and
kept in its home, readable by the owner only: ``<home>/secrets/`` (mode 0700) holds
``fernet_key``, ``api_secret_key`` and ``jwt_secret`` (mode 0600). A fixed, published value
would let anyone who can reach the api-server mint an admin token for it.
"""

from __future__ import annotations

import os
import secrets
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from airflow_provider_reve.testing._cluster_processes import free_port

SECRETS_DIR = "secrets"
LOOPBACK = "127.0.0.1"


@dataclass(frozen=True)
class ClusterSecrets:
    """The deployment's secrets; ``repr`` shows where they are kept, never their values."""

    directory: Path
    fernet_key: str = field(repr=False)
    api_secret_key: str = field(repr=False)
    jwt_secret: str = field(repr=False)

    @classmethod
    def load_or_create(cls, home: Path) -> ClusterSecrets:
        """Read the secrets of ``home``, creating the missing ones.

        A reused home keeps its secrets, so what its database holds encrypted stays readable
        and tokens issued before a restart stay valid.
        """
        directory = home / SECRETS_DIR
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        # mkdir's mode is ignored for an existing folder and reduced by the umask.
        os.chmod(directory, 0o700)
        return cls(
            directory=directory,
            fernet_key=_load_or_create(directory / "fernet_key", _new_fernet_key),
            api_secret_key=_load_or_create(directory / "api_secret_key", _new_token),
            jwt_secret=_load_or_create(directory / "jwt_secret", _new_token),
        )


def load_or_create_secret(path: Path) -> str:
    """A random token kept in ``path`` (0600), created on first use: e.g. a database password.

    ``path`` must be in :attr:`ClusterSecrets.directory`, which only the owner may enter.
    """
    return _load_or_create(path, _new_token)


def _new_fernet_key() -> str:
    """What Airflow encrypts (connections, variables) is encrypted as in production, and
    :class:`LocalAirflow` can still decrypt what it reads from the database."""
    from cryptography.fernet import Fernet

    return Fernet.generate_key().decode()


def _new_token() -> str:
    return secrets.token_urlsafe(48)


def _load_or_create(path: Path, make: Callable[[], str]) -> str:
    try:
        # O_EXCL: never write through a file someone else put there; 0600 from the first byte.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "r", encoding="ascii") as fh:
            if stat.S_IMODE(os.fstat(fh.fileno()).st_mode) != 0o600:
                os.fchmod(fh.fileno(), 0o600)
            value = fh.read().strip()
        if value:
            return value
        path.unlink()
        return _load_or_create(path, make)
    value = make()
    with os.fdopen(fd, "w", encoding="ascii") as fh:
        os.fchmod(fh.fileno(), 0o600)
        fh.write(value)
    return value


def airflow_env(
    *,
    home: Path,
    dags_folder: Path,
    db_path: Path,
    log_dir: Path,
    port: int,
    keys: ClusterSecrets,
    extra: Mapping[str, str],
) -> dict[str, str]:
    """The environment of every process of the deployment.

    Inherited ``AIRFLOW*`` variables of the calling process are dropped, so a developer's own
    ``AIRFLOW__DATABASE__SQL_ALCHEMY_CONN`` can never point the deployment at a real
    database; ``extra`` is applied last and may override anything here.
    """
    base_url = f"http://{LOOPBACK}:{port}"
    env = {k: v for k, v in os.environ.items() if not (k.startswith("AIRFLOW") or k.startswith("_AIRFLOW"))}
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            "AIRFLOW_HOME": str(home),
            "AIRFLOW_CONFIG": str(home / "airflow.cfg"),
            "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{db_path}",
            "AIRFLOW__CORE__DAGS_FOLDER": str(dags_folder),
            "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
            "AIRFLOW__CORE__EXECUTOR": "LocalExecutor",
            "AIRFLOW__CORE__FERNET_KEY": keys.fernet_key,
            "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "True",
            # Workers reach the api-server here; the default is localhost:8080.
            "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"{base_url}/execution/",
            "AIRFLOW__API__HOST": LOOPBACK,
            "AIRFLOW__API__PORT": str(port),
            "AIRFLOW__API__BASE_URL": base_url,
            # Signs the tokens of log requests and of DAG file tokens.
            "AIRFLOW__API__SECRET_KEY": keys.api_secret_key,
            # Every component must sign/verify task and API JWTs with the same secret;
            # with no value each process would invent its own and workers get 403s.
            "AIRFLOW__API_AUTH__JWT_SECRET": keys.jwt_secret,
            # Parse new files within seconds instead of the 5-minute default.
            "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
            "AIRFLOW__DAG_PROCESSOR__BUNDLE_REFRESH_CHECK_INTERVAL": "2",
            "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_STORAGE_PATH": str(home / "dag_bundles"),
            "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
            "AIRFLOW__SCHEDULER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__TRIGGERER__JOB_HEARTBEAT_SEC": "2",
            "AIRFLOW__LOGGING__BASE_LOG_FOLDER": str(log_dir),
            # No log server runs (see LocalAirflow), but the api-server still asks one for the
            # logs of running tasks: not the default 8793/8794, which may be someone else's.
            "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port()),
            # Off by default; should a caller turn it on, it binds loopback, not 0.0.0.0.
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_HOST": LOOPBACK,
            "AIRFLOW__SCHEDULER__SCHEDULER_HEALTH_CHECK_SERVER_PORT": str(free_port()),
        }
    )
    env.update(extra)
    return env
