"""The ledger's tables, their version, and the engine named by ``[reve] ledger_conn_id``.

Tables (created on first use; ``reve_ledger_schema`` holds the version they were made for):

* ``reve_budgets`` -- one row per budget: its limit, window, time zone, scope, unknown price rule.
* ``reve_budget_windows`` -- one row per (budget, window start): ``spent_credits`` and
  ``reserved_credits``. A new window is a new row, so a reset needs no job.
* ``reve_reservations`` -- one row per reservation: its key (DAG, run, task, map index, run of
  tries, request fingerprint; emptied when a later try of the same key reserves afresh), state
  (``reserved`` / ``settled`` / ``released``), the Reve task id once known, the estimate and the
  consumed credits.
* ``reve_reservation_lines`` -- what a reservation holds in each budget's window.
* ``reve_rate_limit_pauses`` -- until when (UNIX time) a ``429`` paused a connection's requests,
  by the gate's key (a hash of Base URL and API key; never the key).

SQLite transactions that write start with ``BEGIN IMMEDIATE``: the database lock is taken before
the first read, so two processes never interleave a reservation.
"""

from __future__ import annotations

import importlib.util
import threading
from typing import Any

from sqlalchemy import (
    Column,
    Engine,
    Float,
    Integer,
    MetaData,
    PrimaryKeyConstraint,
    String,
    Table,
    Text,
    create_engine,
    event,
    insert,
    select,
)
from sqlalchemy.engine import URL

__all__ = [
    "SCHEMA_VERSION",
    "budget_windows",
    "budgets",
    "engine_for_conn_id",
    "engine_for_url",
    "ledger_conn_id",
    "metadata",
    "prepare",
    "rate_limit_pauses",
    "reservation_lines",
    "reservations",
]

SCHEMA_VERSION = 1

metadata = MetaData()

schema_version = Table("reve_ledger_schema", metadata, Column("version", Integer, nullable=False))

budgets = Table(
    "reve_budgets",
    metadata,
    Column("name", String(200), primary_key=True),
    Column("limit_credits", Integer, nullable=False),
    Column("window", String(16), nullable=False),
    Column("time_zone", String(64), nullable=False),
    Column("conn_id", String(250), nullable=False),
    Column("dag_ids", Text, nullable=False, default="[]"),
    Column("dag_tags", Text, nullable=False, default="[]"),
    Column("models", Text, nullable=False, default="[]"),
    Column("unknown_price_credits", Integer, nullable=True),
    Column("updated_at", String(40), nullable=False),
)

budget_windows = Table(
    "reve_budget_windows",
    metadata,
    Column("budget", String(200), nullable=False),
    Column("window_start", String(40), nullable=False),
    Column("resets_at", String(40), nullable=True),
    Column("spent_credits", Integer, nullable=False, default=0),
    Column("reserved_credits", Integer, nullable=False, default=0),
    PrimaryKeyConstraint("budget", "window_start"),
)

reservations = Table(
    "reve_reservations",
    metadata,
    Column("id", String(36), primary_key=True),
    Column("reservation_key", String(64), nullable=True, unique=True),
    Column("state", String(16), nullable=False),
    Column("conn_id", String(250), nullable=False),
    Column("dag_id", String(250), nullable=True),
    Column("run_id", String(250), nullable=True),
    Column("task_id", String(250), nullable=True),
    Column("map_index", Integer, nullable=True),
    Column("model", String(200), nullable=True),
    Column("reve_task_id", String(200), nullable=True),
    Column("estimate_credits", Integer, nullable=True),
    Column("consumed_credits", Integer, nullable=True),
    Column("created_at", String(40), nullable=False),
    Column("updated_at", String(40), nullable=False),
)

reservation_lines = Table(
    "reve_reservation_lines",
    metadata,
    Column("reservation_id", String(36), nullable=False),
    Column("budget", String(200), nullable=False),
    Column("window_start", String(40), nullable=False),
    Column("credits", Integer, nullable=False),
    PrimaryKeyConstraint("reservation_id", "budget"),
)

# A 429 pause seen by any process, for every process of the deployment (see shared_pauses).
rate_limit_pauses = Table(
    "reve_rate_limit_pauses",
    metadata,
    Column("gate_key", String(64), primary_key=True),
    Column("paused_until", Float, nullable=False),
)

_prepared: set[str] = set()
_engines: dict[str, Engine] = {}
_lock = threading.Lock()


def ledger_conn_id() -> str | None:
    """``[reve] ledger_conn_id`` (``AIRFLOW__REVE__LEDGER_CONN_ID``); ``None``: budgets are off.

    :return: the connection id, or ``None``.
    """
    from airflow.providers.common.compat.sdk import conf

    value = conf.get("reve", "ledger_conn_id", fallback=None)
    return value.strip() if isinstance(value, str) and value.strip() else None


def engine_for_conn_id(conn_id: str) -> Engine:
    """One engine per process and connection, its tables prepared.

    :param conn_id: the ledger's Airflow connection (``sqlite`` or ``postgres``).
    :return: the engine.
    """
    from airflow.providers.common.compat.sdk import BaseHook

    return engine_for_url(_url(conn_id, BaseHook.get_connection(conn_id)))


def engine_for_url(url: URL | str) -> Engine:
    """One engine per process and database URL, its tables prepared (SQLite: ``BEGIN IMMEDIATE``).

    :param url: the database URL.
    :return: the engine.
    """
    if isinstance(url, str):
        from sqlalchemy.engine import make_url

        url = make_url(url)
    key = url.render_as_string(hide_password=False)
    with _lock:
        engine = _engines.get(key)
        if engine is None:
            engine = _engines[key] = _create_engine(url)
        if key not in _prepared:
            prepare(engine)
            _prepared.add(key)
    return engine


def _url(conn_id: str, connection: Any) -> URL:
    conn_type = (connection.conn_type or "").lower()
    if conn_type == "sqlite":
        path = connection.schema or connection.host
        if not path or not path.startswith("/"):
            raise ValueError(
                f"ledger connection {conn_id!r}: an SQLite ledger needs an absolute path "
                "(e.g. sqlite:////var/lib/airflow/reve-ledger.db)"
            )
        return URL.create("sqlite", database=path)
    if conn_type in ("postgres", "postgresql"):
        return URL.create(
            f"postgresql+{_postgres_driver(conn_id)}",
            username=connection.login or None,
            password=connection.password or None,
            host=connection.host or None,
            port=connection.port or None,
            database=connection.schema or None,
        )
    raise ValueError(
        f"ledger connection {conn_id!r} has type {conn_type!r}: the Reve ledger supports 'sqlite' "
        "and 'postgres' connections"
    )


def _postgres_driver(conn_id: str) -> str:
    for module, driver in (("psycopg", "psycopg"), ("psycopg2", "psycopg2"), ("pg8000", "pg8000")):
        if importlib.util.find_spec(module) is not None:
            return driver
    raise ValueError(
        f"ledger connection {conn_id!r} is PostgreSQL, but no driver is installed: "
        "pip install psycopg2-binary (or apache-airflow-providers-postgres)"
    )


def _create_engine(url: URL) -> Engine:
    if url.get_backend_name() != "sqlite":
        return create_engine(url, pool_pre_ping=True, future=True)
    engine = create_engine(url, connect_args={"timeout": 60}, future=True)

    # pysqlite's own transaction handling starts a deferred transaction at the first write;
    # take the write lock at BEGIN instead, so a reservation's reads and writes are one unit.
    @event.listens_for(engine, "connect")
    def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None
        # WAL: readers (``budget show``, the look-up of a reservation) never wait for a writer.
        dbapi_connection.execute("PRAGMA journal_mode=WAL")

    @event.listens_for(engine, "begin")
    def _begin_immediate(connection: Any) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")

    return engine


def prepare(engine: Engine) -> None:
    """Create the tables when missing and check that their version is one this code knows.

    :param engine: the ledger's engine.
    """
    with engine.begin() as connection:
        if connection.dialect.name == "postgresql":
            # Hosts starting together must not race to CREATE the same tables; the lock ends
            # with this transaction. (SQLite: BEGIN IMMEDIATE already serialises this.)
            connection.exec_driver_sql("SELECT pg_advisory_xact_lock(7265766501)")
        metadata.create_all(connection, checkfirst=True)
        found = connection.execute(select(schema_version.c.version)).scalars().all()
        if not found:
            connection.execute(insert(schema_version).values(version=SCHEMA_VERSION))
        elif max(found) > SCHEMA_VERSION:
            raise RuntimeError(
                f"the Reve ledger's tables are version {max(found)}, newer than this provider "
                f"understands ({SCHEMA_VERSION}): upgrade airflow-provider-reve on this host"
            )
