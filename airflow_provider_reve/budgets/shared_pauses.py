"""A ``429 RATE_LIMITED`` pause seen by one process holds every process of the deployment.

The request gates (``client.ratelimit``) pause a connection's requests in one process or event loop.
With a ledger configured (``[reve] ledger_conn_id``) a pause is also written to the ledger's
``reve_rate_limit_pauses`` row for the gate's key (a hash of Base URL and API key), and each
process reads the rows at most once a second, so a worker or triggerer that never saw the 429
holds its requests too.

Invariants: nothing here blocks the caller -- reads and writes run in a background thread, and
the caller sees the last value read (a pause reaches other processes within about a second plus
the database's round trip). A ledger that is off, unreachable or slow changes nothing but this:
the pause stays per process, as without a ledger. Times in the ledger are UNIX times (shared by
hosts); the gates convert them to their own clock.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

__all__ = ["READ_INTERVAL_SECONDS", "SharedPauses", "forget", "publish_pause", "shared_pause_until"]

#: How often one process reads the shared pauses, at most.
READ_INTERVAL_SECONDS = 1.0

log = logging.getLogger(__name__)


class SharedPauses:
    """One process's view of the deployment's 429 pauses.

    :param read_interval: seconds between two reads of the database, at most one at a time.
    """

    def __init__(self, read_interval: float = READ_INTERVAL_SECONDS) -> None:
        self.read_interval = read_interval
        self._known: dict[str, float] = {}
        self._lock = threading.Lock()
        self._last_read = float("-inf")
        self._reading = False

    def paused_until(self, gate_key: str) -> float:
        """The latest shared pause of this gate (UNIX time), as last read; starts a read when
        the last one is older than ``read_interval``. Never waits for the database.

        :param gate_key: the connection's :func:`~airflow_provider_reve.client.ratelimit.gate_key`.
        :return: the UNIX time; ``-inf`` when none is known.
        """
        if not _ledger_configured():
            return float("-inf")
        now = time.monotonic()
        with self._lock:
            due = not self._reading and now - self._last_read >= self.read_interval
            if due:
                self._reading, self._last_read = True, now
            known = self._known.get(gate_key, float("-inf"))
        if due:
            threading.Thread(target=self._read, name="reve-shared-pauses", daemon=True).start()
        return known

    def publish(self, gate_key: str, until: float) -> threading.Thread | None:
        """Tell every process: this gate is paused until ``until`` (UNIX time). Returns at once,
        with the thread writing it (``None`` without a ledger).

        :param gate_key: the connection's :func:`~airflow_provider_reve.client.ratelimit.gate_key`.
        :param until: the UNIX time the pause ends.
        :return: the writing thread, or ``None``.
        """
        if not _ledger_configured():
            return None
        with self._lock:
            self._known[gate_key] = max(until, self._known.get(gate_key, float("-inf")))
        writer = threading.Thread(
            # Not a daemon: a task process that ends right after its 429 still shares it.
            target=self._write,
            args=(gate_key, until),
            name="reve-shared-pauses",
            daemon=False,
        )
        writer.start()
        return writer

    def _read(self) -> None:
        try:
            engine = _engine()
            if engine is None:
                return
            from sqlalchemy import select

            from airflow_provider_reve.budgets.schema import rate_limit_pauses

            with engine.connect() as connection:
                rows = connection.execute(
                    select(rate_limit_pauses.c.gate_key, rate_limit_pauses.c.paused_until).where(
                        rate_limit_pauses.c.paused_until > time.time()
                    )
                ).all()
            with self._lock:
                for key, until in rows:
                    self._known[key] = max(until, self._known.get(key, float("-inf")))
        except Exception as error:  # the pause stays per process; never the caller's problem
            log.debug("Could not read shared 429 pauses: %s", type(error).__name__)
        finally:
            with self._lock:
                self._reading = False

    def _write(self, gate_key: str, until: float) -> None:
        try:
            engine = _engine()
            if engine is None:
                return
            from sqlalchemy import func

            from airflow_provider_reve.budgets.schema import rate_limit_pauses

            with engine.begin() as connection:
                # The later of the stored and the new pause: two processes' 429s never shorten it.
                latest: Any = func.greatest if connection.dialect.name == "postgresql" else func.max
                if connection.dialect.name == "postgresql":
                    from sqlalchemy.dialects.postgresql import insert
                else:
                    from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
                statement = insert(rate_limit_pauses).values(gate_key=gate_key, paused_until=until)
                connection.execute(
                    statement.on_conflict_do_update(
                        index_elements=[rate_limit_pauses.c.gate_key],
                        set_={
                            "paused_until": latest(
                                rate_limit_pauses.c.paused_until, statement.excluded.paused_until
                            )
                        },
                    )
                )
        except Exception as error:
            log.warning("Could not share a 429 pause with other processes: %s", type(error).__name__)


_CONFIGURED_CHECK_SECONDS = 10.0
_configured: tuple[float, str | None] = (float("-inf"), None)
_engines: dict[str, Any] = {}


def _ledger_conn_id() -> str | None:
    """``[reve] ledger_conn_id``, read again at most every 10 s (the gates ask on every request)."""
    global _configured
    now = time.monotonic()
    checked, conn_id = _configured
    if now - checked >= _CONFIGURED_CHECK_SECONDS:
        from airflow_provider_reve.budgets.schema import ledger_conn_id

        conn_id = ledger_conn_id()
        _configured = (now, conn_id)
    return conn_id


def _ledger_configured() -> bool:
    return _ledger_conn_id() is not None


def _engine() -> Any:
    """The ledger's engine (the connection is looked up once per process), or ``None``."""
    conn_id = _ledger_conn_id()
    if conn_id is None:
        return None
    if conn_id not in _engines:
        from airflow_provider_reve.budgets.schema import engine_for_conn_id

        _engines[conn_id] = engine_for_conn_id(conn_id)
    return _engines[conn_id]


_BOARD = SharedPauses()


def shared_pause_until(gate_key: str) -> float:
    """This process's board: see :meth:`SharedPauses.paused_until`.

    :param gate_key: the connection's :func:`~airflow_provider_reve.client.ratelimit.gate_key`.
    :return: the UNIX time; ``-inf`` when none is known.
    """
    return _BOARD.paused_until(gate_key)


def publish_pause(gate_key: str, until: float) -> threading.Thread | None:
    """This process's board: see :meth:`SharedPauses.publish`.

    :param gate_key: the connection's :func:`~airflow_provider_reve.client.ratelimit.gate_key`.
    :param until: the UNIX time the pause ends.
    :return: the writing thread, or ``None``.
    """
    return _BOARD.publish(gate_key, until)


def forget() -> None:
    """Forget what this process read and which ledger it uses: after ``[reve] ledger_conn_id``
    changed in a running process (tests do)."""
    global _BOARD, _configured
    _BOARD = SharedPauses()
    _configured = (float("-inf"), None)
    _engines.clear()
