"""What a :class:`~airflow_provider_reve.testing.cluster.LocalAirflow` deployment did, read
from its metadata database and its log folder.

:class:`ClusterQueries` is the read-only half of ``LocalAirflow`` (which inherits it): SQL on
the SQLite metadata DB opened ``mode=ro``, the task and trigger log files, and the polling
waits built on them. It starts and signals nothing. Every read goes through :meth:`_snapshot`,
which a deployment on another database overrides (``ProductionAirflow``: PostgreSQL).
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
Params = Sequence[Any] | Mapping[str, Any]
Fetch = Callable[[str, Params], list[dict[str, Any]]]
"""Runs one SQL statement (``?`` placeholders) in a snapshot; returns the rows as dicts."""

_TERMINAL_RUN_STATES = frozenset({"success", "failed"})
_IMPORT_ERROR_GRACE = 10.0  # seconds wait_for_dag keeps waiting once import errors exist


class LocalAirflowError(RuntimeError):
    """Raised when the local deployment fails to start, a process dies, or a wait times out.

    The message carries the tail of every component log, because the reason is almost
    always in a log of a *different* process than the one the test talks to.
    """


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


class ClusterQueries:
    """Readers of the metadata DB and log folder of a deployment living in ``home``."""

    db_path: Path
    log_dir: Path
    components: tuple[str, ...]
    fernet_key: str

    def _check_alive(self) -> None:
        """Raise if a process of the deployment died; polls call it to fail fast, not time out."""

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

    def query(self, sql: str, params: Params = ()) -> list[dict[str, Any]]:
        """Run a read-only SQL statement on the metadata database; rows as dicts.

        The connection is opened with ``mode=ro`` so a test can never corrupt the state it
        is asserting on, and is closed at once so it holds no lock.
        """
        with self._snapshot() as fetch:
            return fetch(sql, params)

    @contextlib.contextmanager
    def _snapshot(self) -> Iterator[Fetch]:
        """A read-only connection in one transaction, so several statements see one state."""
        uri = f"file:{self.db_path}?mode=ro"
        with contextlib.closing(sqlite3.connect(uri, uri=True, timeout=30)) as conn:
            conn.row_factory = sqlite3.Row
            conn.execute("BEGIN")

            def fetch(sql: str, params: Params = ()) -> list[dict[str, Any]]:
                return [dict(row) for row in conn.execute(sql, params).fetchall()]

            yield fetch

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
            with self._snapshot() as fetch:  # one snapshot for the TI and its trigger
                tis = fetch(
                    "SELECT state, try_number, next_method, next_kwargs, trigger_id FROM task_instance"
                    " WHERE dag_id = ? AND run_id = ? AND task_id = ? AND map_index = ?",
                    (dag_id, run_id, task_id, map_index),
                )
                ti = tis[0] if tis else None
                if ti is None or ti["state"] != state:
                    if ti is not None and ti["state"] in finished:
                        raise LocalAirflowError(
                            f"{dag_id}/{run_id}/{task_id} finished as {ti['state']!r} without being seen "
                            f"in state {state!r}"
                        )
                    return None
                trig = None
                if ti["trigger_id"] is not None:
                    trigs = fetch(
                        "SELECT id, classpath, kwargs, created_date, triggerer_id FROM trigger WHERE id = ?",
                        (ti["trigger_id"],),
                    )
                    trig = trigs[0] if trigs else None
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
