"""The provider in Airflow's production topology: CeleryExecutor, PostgreSQL, Redis, two workers and
two triggerers (:class:`ProductionAirflow`), with hosts lost on purpose.

One deployment serves the whole module and the scenarios run in sequence, each with its own DAG
(``dags_production/``). Every claim is read from the PostgreSQL metadata DB (``task_instance``,
``trigger``, ``job``, ``task_state_store``, ``log``) and from the fake Reve API's ledger, never from
log text. The fake holds its tasks ``IN_PROGRESS`` (``async_seconds`` of an hour) until the test has
seen what it wants to see, then lets them finish: no scenario depends on timing.

Measured times (start-up, the triggerer takeover, each scenario) are printed at the end of the
module and written to ``tests/system/artifacts/production_topology.json``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import secrets
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from key_leaks import leak_report

from airflow_provider_reve.testing.fake_server import FakeReveServer
from airflow_provider_reve.testing.production import ProductionAirflow

from .conftest import ARTIFACTS, PRODUCTION_CLUSTER_KEY

DAGS = Path(__file__).resolve().parent / "dags_production"
WIDTH, FAILOVER, CRASH = "reve_production_width", "reve_production_failover", "reve_production_worker_crash"
RESTART, BACK_PRESSURE = "reve_production_scheduler_restart", "reve_production_back_pressure"
SECRETS_DAG = "reve_production_secrets"
DAG_IDS = (WIDTH, FAILOVER, CRASH, RESTART, BACK_PRESSURE, SECRETS_DAG)

HOLD = 3600.0  # the fake keeps every task IN_PROGRESS this long: until the test releases it
# Fewer than the 50 waits of the width scenario, so neither triggerer can take them all, and at
# least the 30 of the failover scenario, so the survivor can take over every one of them.
TRIGGERER_CAPACITY = 32
CREDITS = 10_000_000

MEASURED: dict[str, float] = {}


# ----------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def api_key() -> str:
    """The Reve key of the deployment's connection: random and vowel-free with no hex digit in
    its random part, so that no 8-character piece of it turns up in logs or tables by chance
    (task ids and tokens are hex or base64, words have vowels)."""
    return "sk-PROD-CANARY-" + "".join(secrets.choice("ghjkmnpqrstvwxyzGHJKMNPQRSTVWXYZ") for _ in range(24))


@pytest.fixture(scope="module")
def fake(api_key: str) -> Iterator[FakeReveServer]:
    with FakeReveServer(api_keys={api_key: CREDITS}) as server:
        yield server


@pytest.fixture(scope="module")
def production(
    fake: FakeReveServer,
    api_key: str,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[ProductionAirflow]:
    """The deployment, with the ``reve_default`` connection stored (Fernet-encrypted) in its DB,
    as a real deployment keeps it, and every scenario's DAG parsed."""
    cluster = ProductionAirflow(
        DAGS, home=tmp_path_factory.mktemp("production-airflow"), triggerer_capacity=TRIGGERER_CAPACITY
    )
    started = time.monotonic()
    try:
        cluster.start(timeout=360)
        MEASURED["start_seconds"] = time.monotonic() - started
        request.config.stash[PRODUCTION_CLUSTER_KEY] = cluster
        connection = {
            "connection_id": "reve_default",
            "conn_type": "reve",
            "host": fake.url,
            "password": api_key,
        }
        cluster.api("POST", "connections", connection)
        for dag_id in DAG_IDS:
            cluster.wait_for_dag(dag_id, timeout=180)
        yield cluster
    finally:
        request.config.stash[PRODUCTION_CLUSTER_KEY] = None
        stopping = time.monotonic()
        cluster.stop()
        MEASURED["stop_seconds"] = time.monotonic() - stopping
        _report(request)


def _report(request: pytest.FixtureRequest) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "production_topology.json").write_text(json.dumps(MEASURED, indent=2, sort_keys=True))
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is not None and capture is not None:
        # A fixture's teardown runs inside pytest's output capture: step out of it to be seen.
        with capture.global_and_fixture_disabled():
            reporter.write_line("")
            for name, seconds in sorted(MEASURED.items()):
                reporter.write_line(f"production topology: {name}: {seconds:.1f} s")


@pytest.fixture
def timed(request: pytest.FixtureRequest) -> Iterator[None]:
    started = time.monotonic()
    yield
    MEASURED[f"scenario {request.node.name.removeprefix('test_')[:48]}"] = time.monotonic() - started


# ----------------------------------------------------------------------------------- helpers


def task_rows(af: ProductionAirflow, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    return af.query(
        "SELECT task_id, map_index, state, try_number, hostname, trigger_id FROM task_instance"
        " WHERE dag_id = ? AND run_id = ? ORDER BY task_id, map_index",
        (dag_id, run_id),
    )


def wait_until_all_wait_in_triggerers(
    af: ProductionAirflow, dag_id: str, run_id: str, count: int, timeout: float = 420
) -> dict[int, dict[str, Any]]:
    """Poll until ``count`` TIs are deferred and each trigger row is held by a triggerer; return
    those trigger rows by id (decoded kwargs, ``triggerer_id``)."""

    def probe() -> dict[int, dict[str, Any]] | None:
        deferred = {
            ti["trigger_id"]
            for ti in task_rows(af, dag_id, run_id)
            if ti["state"] == "deferred" and ti["trigger_id"]
        }
        if len(deferred) < count:
            return None
        rows = {t["id"]: t for t in af.triggers() if t["id"] in deferred}
        if len(rows) == count and all(t["triggerer_id"] is not None for t in rows.values()):
            return rows
        return None

    return af.wait_until(f"{count} tasks of {dag_id} to wait in the triggerers", probe, timeout)


def holder_names(af: ProductionAirflow, triggers: dict[int, dict[str, Any]]) -> Counter[str]:
    """How many of ``triggers`` each triggerer (by component name) holds."""
    hosts = af.job_hostnames()
    return Counter(hosts[t["triggerer_id"]] for t in triggers.values())


def running_job_id(af: ProductionAirflow, component: str) -> int:
    rows = af.query(
        "SELECT id FROM job WHERE hostname = ? AND state = 'running' ORDER BY id DESC LIMIT 1", (component,)
    )
    return int(rows[0]["id"])


def results(
    af: ProductionAirflow, dag_id: str, run_id: str, task_id: str = "generate"
) -> dict[int, dict[str, Any]]:
    """Each mapped TI's XCom (``ReveTask.to_dict()``) by map index."""
    indexes = [ti["map_index"] for ti in task_rows(af, dag_id, run_id) if ti["task_id"] == task_id]
    return {index: af.xcom(dag_id, run_id, task_id, map_index=index) for index in indexes}


def restart_if_down(af: ProductionAirflow, component: str) -> None:
    if component not in af.pids:
        af.start_component(component)


def reset(fake: FakeReveServer, *, async_seconds: float = HOLD) -> None:
    fake.reset()
    fake.set_async_seconds(async_seconds)


# ----------------------------------------------------------------------------------- scenarios


def test_fifty_waits_at_width_spread_over_both_triggerers_and_both_workers_and_each_is_paid_once(
    production: ProductionAirflow, fake: FakeReveServer, timed: None
) -> None:
    af = production
    reset(fake)
    run_id = af.trigger(WIDTH)

    # 40 generations and 10 sensors, all waiting at once.
    held = wait_until_all_wait_in_triggerers(af, WIDTH, run_id, 50)
    spread = holder_names(af, held)
    assert set(spread) == set(af.triggerers), spread
    assert all(n <= TRIGGERER_CAPACITY for n in spread.values()), spread

    fake.set_async_seconds(0)
    assert af.wait_for_run(WIDTH, run_id, timeout=420) == "success"

    tis = task_rows(af, WIDTH, run_id)
    assert Counter(ti["task_id"] for ti in tis) == {"generate": 40, "submit": 10, "wait": 10}
    assert all(ti["state"] == "success" and ti["try_number"] == 1 for ti in tis), tis
    assert {ti["hostname"] for ti in tis} == set(af.workers)

    # One paid task per generation and per submission, and the credits the XComs report are
    # exactly what the account was charged.
    assert fake.submissions == 50
    charges = [entry for entry in fake.ledger if entry["reason"] == "charge"]
    assert len(charges) == 50 and len(fake.ledger) == 50  # no refund: nothing failed
    finished = [*results(af, WIDTH, run_id).values(), *results(af, WIDTH, run_id, "wait").values()]
    assert {r["task_id"] for r in finished} == {entry["task_id"] for entry in charges}
    assert all(r["status"] == "SUCCESS" for r in finished)
    assert sum(r["consumed_credits"] for r in finished) == -sum(entry["delta"] for entry in charges)


def test_a_sigkilled_triggerer_hands_every_wait_to_the_other_with_the_same_deadline_and_no_resubmission(
    production: ProductionAirflow, fake: FakeReveServer, timed: None
) -> None:
    af = production
    reset(fake)
    triggered_at = time.time()
    run_id = af.trigger(FAILOVER)
    before = wait_until_all_wait_in_triggerers(af, FAILOVER, run_id, 30)
    victim = holder_names(af, before).most_common(1)[0][0]
    survivor = next(name for name in af.triggerers if name != victim)
    survivor_job = running_job_id(af, survivor)
    assert fake.submissions == 30

    killed_at, killed_wall = time.monotonic(), time.time()
    af.kill(victim)
    try:

        def all_with_survivor() -> dict[int, dict[str, Any]] | None:
            rows = {t["id"]: t for t in af.triggers() if t["id"] in before}
            return (
                rows
                if len(rows) == 30 and all(t["triggerer_id"] == survivor_job for t in rows.values())
                else None
            )

        after = af.wait_until(f"{survivor} to take over every trigger", all_with_survivor, timeout=180)
        MEASURED["triggerer_takeover_seconds"] = time.monotonic() - killed_at

        # The survivor runs each trigger again from the same stored kwargs (Airflow builds the new
        # run() from them), and the deadline in them is absolute: an hour (the operator's default
        # timeout) after the deferral, which came before the kill -- not an hour after the takeover.
        for trigger_id, row in before.items():
            assert after[trigger_id]["kwargs"] == row["kwargs"]
            deadline = row["kwargs"]["deadline"]
            assert isinstance(deadline, float) and triggered_at + 3600 <= deadline <= killed_wall + 3600

        fake.set_async_seconds(0)
        assert af.wait_for_run(FAILOVER, run_id, timeout=300) == "success"
        tis = task_rows(af, FAILOVER, run_id)
        assert len(tis) == 30
        assert all(ti["state"] == "success" and ti["try_number"] == 1 for ti in tis), tis
        assert fake.submissions == 30  # the takeover re-ran waits, never submissions
        waited_for = {row["kwargs"]["reve_task_id"] for row in before.values()}
        assert {r["task_id"] for r in results(af, FAILOVER, run_id).values()} == waited_for == set(fake.tasks)
    finally:  # the next scenarios need the whole cluster, even after a failure here
        restart_if_down(af, victim)


def test_a_worker_host_killed_mid_poll_has_its_tasks_retried_on_the_other_worker_without_paying_again(
    production: ProductionAirflow, fake: FakeReveServer, timed: None
) -> None:
    af = production
    reset(fake)
    run_id = af.trigger(CRASH)

    # Every try has submitted, remembered its Reve task in task_state_store and polls in its slot.
    def all_polling() -> dict[int, str] | None:
        tis = task_rows(af, CRASH, run_id)
        stored = af.query(
            "SELECT map_index, value FROM task_state_store WHERE dag_id = ? AND run_id = ?"
            " AND key = 'reve_submitted_task'",
            (CRASH, run_id),
        )
        remembered = {row["map_index"]: json.loads(row["value"]) for row in stored}
        if (
            len(tis) == 6
            and all(ti["state"] == "running" and ti["hostname"] for ti in tis)
            and all(remembered.get(ti["map_index"], {}).get("phase") == "submitted" for ti in tis)
        ):
            return {index: entry["task_id"] for index, entry in remembered.items()}
        return None

    remembered = af.wait_until("every try to poll a remembered Reve task", all_polling, timeout=300)
    assert fake.submissions == 6
    tis = task_rows(af, CRASH, run_id)
    victim = Counter(ti["hostname"] for ti in tis).most_common(1)[0][0]
    survivor = next(name for name in af.workers if name != victim)
    on_victim = {ti["map_index"] for ti in tis if ti["hostname"] == victim}

    af.kill(victim)  # the worker, its pool, the supervisors and the task processes
    try:
        fake.set_async_seconds(0)
        assert af.wait_for_run(CRASH, run_id, timeout=300) == "success"

        tis = task_rows(af, CRASH, run_id)
        assert all(ti["state"] == "success" for ti in tis), tis
        for ti in tis:
            if ti["map_index"] in on_victim:
                assert (ti["try_number"], ti["hostname"]) == (2, survivor), ti
            else:
                assert ti["try_number"] == 1, ti
        first_tries = af.query(
            "SELECT map_index, hostname FROM task_instance_history"
            " WHERE dag_id = ? AND run_id = ? AND try_number = 1",
            (CRASH, run_id),
        )
        assert {row["map_index"]: row["hostname"] for row in first_tries} == dict.fromkeys(on_victim, victim)
        # The retries re-attached to the task each first try had paid for.
        assert fake.submissions == 6
        assert {index: r["task_id"] for index, r in results(af, CRASH, run_id).items()} == remembered
    finally:  # the next scenarios need the whole cluster, even after a failure here
        restart_if_down(af, victim)


def test_a_scheduler_restart_while_generations_wait_loses_nothing_and_submits_nothing_twice(
    production: ProductionAirflow, fake: FakeReveServer, timed: None
) -> None:
    af = production
    reset(fake)
    run_id = af.trigger(RESTART)
    waiting = wait_until_all_wait_in_triggerers(af, RESTART, run_id, 10)

    af.stop_component("scheduler")
    try:
        # The Reve tasks finish while no scheduler runs: the triggers fire and their events must
        # wait in the DB for the next scheduler.
        fake.set_async_seconds(0)

        def all_fired() -> bool | None:
            tis = task_rows(af, RESTART, run_id)
            fired = all(ti["state"] == "scheduled" and ti["trigger_id"] is None for ti in tis)
            return True if fired else None

        af.wait_until("every trigger to fire with no scheduler running", all_fired, timeout=120)
    finally:  # the next scenarios need the whole cluster, even after a failure here
        restart_if_down(af, "scheduler")

    assert af.wait_for_run(RESTART, run_id, timeout=300) == "success"
    tis = task_rows(af, RESTART, run_id)
    assert len(tis) == 10
    assert all(ti["state"] == "success" and ti["try_number"] == 1 for ti in tis), tis
    assert fake.submissions == 10
    waited_for = {row["kwargs"]["reve_task_id"] for row in waiting.values()}
    assert {r["task_id"] for r in results(af, RESTART, run_id).values()} == waited_for


def test_too_many_tasks_across_both_workers_is_waited_out_in_triggers_with_one_submission_each_and_no_retry(
    production: ProductionAirflow, fake: FakeReveServer, timed: None
) -> None:
    af = production
    reset(fake, async_seconds=2)
    fake.set_max_in_flight(4)
    run_id = af.trigger(BACK_PRESSURE)
    assert af.wait_for_run(BACK_PRESSURE, run_id, timeout=600) == "success"

    tis = task_rows(af, BACK_PRESSURE, run_id)
    assert len(tis) == 20
    assert all(ti["state"] == "success" and ti["try_number"] == 1 for ti in tis), tis  # retries=0
    assert {ti["hostname"] for ti in tis} == set(af.workers)
    assert fake.submissions == 20
    refused = fake.requests_to("generate") - fake.submissions
    assert refused > 0, "the in-flight limit was never hit"
    # Every refusal became a timer deferral (no worker slot held, no retry), on top of one
    # deferral per task to wait for its result.
    deferrals = af.query(
        "SELECT count(*) AS n FROM log WHERE dag_id = ? AND run_id = ? AND event = 'deferred'",
        (BACK_PRESSURE, run_id),
    )[0]["n"]
    assert deferrals == 20 + refused
    assert len({r["task_id"] for r in results(af, BACK_PRESSURE, run_id).values()}) == 20


def test_the_api_key_is_in_no_log_file_no_table_but_connection_no_redis_traffic_and_no_database_file(
    production: ProductionAirflow, fake: FakeReveServer, api_key: str, timed: None
) -> None:
    af = production
    reset(fake)  # the tasks wait until released, so that what exists only while they wait is read
    places: dict[str, str] = {}
    with RedisMonitor(af.redis.port, af.redis.password) as traffic:
        run_id = af.trigger(SECRETS_DAG)
        waiting = wait_until_all_wait_in_triggerers(af, SECRETS_DAG, run_id, 1)

        def polling_in_a_worker() -> bool | None:
            rows = task_rows(af, SECRETS_DAG, run_id)
            return any(ti["task_id"] == "polled" and ti["state"] == "running" for ti in rows) or None

        af.wait_until("the polled generation to poll in a worker", polling_in_a_worker, timeout=300)
        # Trigger rows are deleted once their task resumes: read them (kwargs and all) now.
        for table in ("trigger", "task_instance", "task_state_store", "xcom"):
            places[f"table {table}, while the tasks wait"] = af.table_text(table)
        waited_for = next(iter(waiting.values()))["kwargs"]["reve_task_id"]
        assert waited_for in places["table trigger, while the tasks wait"]
        fake.set_async_seconds(0)
        assert af.wait_for_run(SECRETS_DAG, run_id, timeout=300) == "success"
    assert fake.submissions == 2  # the key was used, by a worker and by a triggerer
    # Every command sent to Redis, Celery's messages with their decoded bodies among them.
    places["redis traffic (MONITOR)"] = traffic.text
    assert SECRETS_DAG in traffic.text, "no Celery message to this DAG's tasks was seen"

    files = [p for p in af.home.rglob("*") if p.is_file()]
    assert any(p.name.startswith("worker-") for p in files) and any(".trigger." in p.name for p in files)
    for path in files:
        places[f"file {path.relative_to(af.home)}"] = path.read_bytes().decode("utf-8", errors="replace")

    tables = af.table_names()
    assert {"connection", "task_instance", "trigger", "xcom", "task_state_store", "log"} <= set(tables)
    for table in tables:
        if table != "connection":
            places[f"table {table}"] = af.table_text(table)
    # Stored, but encrypted: the one table where the key lives.
    assert af.table_text("connection") and api_key not in af.table_text("connection")
    # PostgreSQL's own files: heap pages with the deleted and updated rows no SELECT shows, and
    # the write-ahead log with every change made.
    assert af.postgres.root is not None
    database_files = [p for p in af.postgres.root.rglob("*") if p.is_file()]
    assert any("pg_wal" in p.parts for p in database_files)
    for path in database_files:
        places[f"postgres {path.relative_to(af.postgres.root)}"] = path.read_bytes().decode("latin-1")
    assert any(waited_for in text for place, text in places.items() if place.startswith("postgres ")), (
        "the database files show no row data: the scan would miss a key too"
    )

    redis = af.redis.client()
    try:
        keys = list(redis.scan_iter(count=1000))
        assert keys, "the broker holds nothing: Celery did not use this Redis"
        for key in keys:
            places[f"redis {key!r}"] = key.decode("latin-1") + "\n" + _redis_value(redis, key)
    finally:
        redis.close()

    assert leak_report(places, api_key) == {}


class RedisMonitor:
    """Records every command any client sends to Redis (``MONITOR``) from ``__enter__`` to
    ``__exit__``. ``text``: the raw stream, then each base64 run in it decoded (kombu keeps a
    Celery message's body in base64)."""

    def __init__(self, port: int, password: str) -> None:
        self._address, self._password = ("127.0.0.1", port), password
        self._chunks: list[bytes] = []
        self.text = ""

    def __enter__(self) -> RedisMonitor:
        self._socket = socket.create_connection(self._address, timeout=10)
        self._socket.sendall(_resp("AUTH", self._password) + _resp("MONITOR"))
        received = b""
        while received.count(b"+OK\r\n") < 2:  # MONITOR is on: no later command is missed
            chunk = self._socket.recv(65536)
            assert chunk, f"Redis refused MONITOR: {received[:200]!r}"
            received += chunk
        self._chunks.append(received.split(b"+OK\r\n", 2)[2])
        self._socket.settimeout(None)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        return self

    def _read(self) -> None:
        with contextlib.suppress(OSError):
            while chunk := self._socket.recv(65536):
                self._chunks.append(chunk)

    def __exit__(self, *exc: object) -> None:
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._reader.join(30)
        self._socket.close()
        raw = b"".join(self._chunks).decode("latin-1")
        decoded = [_lenient_b64(run) for run in re.findall(r"[A-Za-z0-9+/]{16,}={0,2}", raw)]
        self.text = "\n".join([raw, *decoded])


def _resp(*words: str) -> bytes:
    """One Redis command in the wire protocol (no quoting rules to get wrong)."""
    encoded = [word.encode() for word in words]
    return b"".join([f"*{len(encoded)}\r\n".encode(), *(b"$%d\r\n%s\r\n" % (len(w), w) for w in encoded)])


def _lenient_b64(run: str) -> str:
    try:
        return base64.b64decode(run + "=" * (-len(run) % 4)).decode("utf-8", errors="replace")
    except ValueError:
        return ""


def _redis_value(redis: Any, key: bytes) -> str:
    kind = redis.type(key).decode()
    if kind == "string":
        values = [redis.get(key)]
    elif kind == "list":
        values = redis.lrange(key, 0, -1)
    elif kind == "hash":
        values = [part for pair in redis.hgetall(key).items() for part in pair]
    elif kind == "set":
        values = list(redis.smembers(key))
    elif kind == "zset":
        values = redis.zrange(key, 0, -1)
    else:
        raise AssertionError(f"unexpected Redis type {kind} of {key!r}")
    texts = [v.decode("latin-1") for v in values if v is not None]
    return "\n".join([*texts, *(_kombu_body(text) for text in texts)])


def _kombu_body(text: str) -> str:
    """The body of a Celery message as kombu stores it in Redis (base64 inside a JSON envelope)."""
    try:
        message = json.loads(text)
        if message["properties"]["body_encoding"] == "base64":
            return base64.b64decode(message["body"]).decode("utf-8", errors="replace")
    except (ValueError, KeyError, TypeError):
        pass
    return ""
