"""``make stress``: N mapped deferrable generations through a real scheduler and triggerer.

One DAG (``benchmarks/_stress_dag.py``) maps a deferrable ``ReveGenerateOperator`` over N
prompts. A real ``LocalAirflow`` (api-server, scheduler, dag-processor, triggerer, LocalExecutor,
SQLite) runs it against the shipped fake Reve API, which answers a share of all requests with a
transient 503 (``SERVICE_UNAVAILABLE``), ends a share of tasks ``FAILED`` with the transient
``GENERATION_FAILED`` (refunded, so an Airflow retry resubmits), and refuses tasks beyond an
in-flight limit with ``TOO_MANY_TASKS`` (back-pressure: a timer deferral, then a new submission).

It then checks, and prints (``benchmarks/_stress_report.py``): every task ends SUCCESS or failed
with the API's error; the fake's ledger equals the credits in XCom; Reve tasks created = N + the
FAILED ones retried; the triggerer's ``triggers.blocked_main_thread`` count is 0. Exit status 1
when a check fails, 2 when the run does not finish within ``--timeout``.

    .venv/bin/python benchmarks/stress.py --n 1000
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _stress_report import Figures, collect, render  # noqa: E402

from airflow_provider_reve.testing._cluster_processes import session_members  # noqa: E402
from airflow_provider_reve.testing.cluster import LocalAirflow, LocalAirflowError  # noqa: E402
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer  # noqa: E402

DAG_ID = "reve_stress"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="mapped generations (default 1000)")
    parser.add_argument("--transient", type=float, default=0.05, help="share of requests answered 503")
    parser.add_argument("--failed", type=float, default=0.02, help="share of tasks ending FAILED")
    parser.add_argument("--in-flight", type=int, default=20, help="the fake's TOO_MANY_TASKS limit")
    parser.add_argument("--async-seconds", type=float, default=10.0, help="how long a Reve task runs")
    parser.add_argument("--parallelism", type=int, default=16, help="[core] parallelism (worker slots)")
    parser.add_argument("--retries", type=int, default=3, help="Airflow retries per task")
    parser.add_argument("--timeout", type=float, default=840.0, help="give up after this many seconds")
    parser.add_argument("--home", type=Path, default=None, help="keep AIRFLOW_HOME (logs, DB) here")
    parser.add_argument(
        "--asyncio-debug",
        action="store_true",
        help="PYTHONASYNCIODEBUG=1 in Airflow: the triggerer log names each callback that ran > 0.1 s",
    )
    parser.add_argument("--json", action="store_true", help="also print the figures as one JSON line")
    return parser.parse_args(argv)


def airflow_settings(args: argparse.Namespace, fake: FakeReveServer) -> dict[str, str]:
    """Environment of every Airflow process: the connection, N, and limits raised for N tasks."""
    conn = {"conn_type": "reve", "host": fake.url, "password": DEFAULT_API_KEY}
    n = str(max(1024, args.n))
    debug = {"PYTHONASYNCIODEBUG": "1"} if args.asyncio_debug else {}
    return {
        **debug,
        "AIRFLOW_CONN_REVE_DEFAULT": json.dumps(conn),
        "REVE_STRESS_N": str(args.n),
        "REVE_STRESS_RETRIES": str(args.retries),
        "AIRFLOW__CORE__PARALLELISM": str(args.parallelism),
        "AIRFLOW__CORE__MAX_ACTIVE_TASKS_PER_DAG": n,
        "AIRFLOW__CORE__MAX_MAP_LENGTH": n,
        "AIRFLOW__CORE__DEFAULT_POOL_TASK_SLOT_COUNT": n,
        "AIRFLOW__TRIGGERER__CAPACITY": n,
        "AIRFLOW__SCHEDULER__MAX_TIS_PER_QUERY": "64",
        # Task logs at INFO, not DEBUG: 1,000 tasks' logs are written to this machine's disk.
        "AIRFLOW__LOGGING__LOGGING_LEVEL": "INFO",
    }


class Sampler(threading.Thread):
    """Once a second: RSS of the triggerer's session (the triggerer and its trigger-runner
    subprocess, summed) and the number of deferred task instances; keeps the peaks."""

    def __init__(self, airflow: LocalAirflow, run_id: str) -> None:
        super().__init__(name="stress-sampler", daemon=True)
        self.airflow, self.run_id = airflow, run_id
        self.peak_rss = 0
        self.peak_deferred = 0
        self.done = threading.Event()

    def run(self) -> None:
        triggerer = self.airflow.pids["triggerer"]
        while not self.done.wait(1.0):
            rss = 0
            for pid in session_members([triggerer]):
                try:
                    rss += psutil.Process(pid).memory_info().rss
                except psutil.Error:
                    continue
            self.peak_rss = max(self.peak_rss, rss)
            try:
                rows = self.airflow.query(
                    "SELECT COUNT(*) AS c FROM task_instance"
                    " WHERE dag_id = ? AND run_id = ? AND state = 'deferred'",
                    (DAG_ID, self.run_id),
                )
                self.peak_deferred = max(self.peak_deferred, int(rows[0]["c"]))
            except Exception:  # a locked DB only costs one sample
                continue


def progress(airflow: LocalAirflow, run_id: str) -> str:
    rows = airflow.query(
        "SELECT state, COUNT(*) AS c FROM task_instance WHERE dag_id = ? AND run_id = ? GROUP BY state",
        (DAG_ID, run_id),
    )
    return ", ".join(f"{r['state']}={r['c']}" for r in rows)


def run(args: argparse.Namespace) -> tuple[Figures, int]:
    fig = Figures(n=args.n, load_before=os.getloadavg())
    with tempfile.TemporaryDirectory(prefix="reve-stress-") as tmp:
        dags = Path(tmp) / "dags"
        dags.mkdir()
        shutil.copy(HERE / "_stress_dag.py", dags / "reve_stress.py")
        home = args.home or Path(tmp) / "home"
        with FakeReveServer(async_seconds=args.async_seconds, max_in_flight=args.in_flight) as fake:
            # Before processing, so nothing is created or charged: the hook reads or sends again.
            transient = {"kind": "error", "code": "SERVICE_UNAVAILABLE", "endpoint": "any"}
            fake.add_fault(**transient, times=None, probability=args.transient)
            fake.add_fault(kind="fail_task", endpoint="generate", times=None, probability=args.failed)
            with LocalAirflow(dags, home=home, env=airflow_settings(args, fake)) as airflow:
                airflow.wait_for_dag(DAG_ID, timeout=180)
                started = time.monotonic()
                run_id = airflow.trigger(DAG_ID)
                sampler = Sampler(airflow, run_id)
                sampler.start()
                code = 0
                try:
                    fig.run_state = wait(airflow, run_id, started, args.timeout)
                except LocalAirflowError as error:
                    fig.failures.append(str(error).splitlines()[0])
                    fig.run_state = "timed out"
                    code = 2
                fig.wall_seconds = time.monotonic() - started
                sampler.done.set()
                sampler.join()
                fig.peak_triggerer_rss_mib = sampler.peak_rss / 2**20
                fig.peak_deferred = sampler.peak_deferred
                fig.load_after = os.getloadavg()
                collect(fig, airflow, fake, DAG_ID, run_id)
    return fig, code or (1 if fig.failures else 0)


def wait(airflow: LocalAirflow, run_id: str, started: float, timeout: float) -> str:
    """Wait for the run, printing progress every 30 s (a 15-minute silence looks like a hang)."""
    last = started
    while True:
        state = airflow.dag_run_state(DAG_ID, run_id)
        if state in ("success", "failed"):
            return state
        airflow._check_alive()
        now = time.monotonic()
        if now - started > timeout:
            raise LocalAirflowError(f"the run did not finish in {timeout:.0f} s: {progress(airflow, run_id)}")
        if now - last >= 30:
            last = now
            print(f"  [{now - started:4.0f} s] {progress(airflow, run_id)}", flush=True)
        time.sleep(1.0)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # SIGTERM, and SIGINT even when started in the background (where it is ignored), unwind
    # through the ``with`` blocks, so Airflow and its task processes are stopped, never orphaned.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    print(
        f"Starting Airflow; {args.n} generations, {args.transient:.0%} 503s, {args.failed:.0%} FAILED, "
        f"in-flight limit {args.in_flight}, parallelism {args.parallelism}, timeout {args.timeout:.0f} s",
        flush=True,
    )
    fig, code = run(args)
    print(render(fig))
    if args.json:
        print("Raw: " + fig.as_json())
    return code


if __name__ == "__main__":
    sys.exit(main())
