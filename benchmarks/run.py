"""Benchmarks, printed as Markdown tables (never asserted in the test suite): ``make bench``.

1. N waits on one event loop, as the triggerer runs them, for N = 100, 1,000 and 5,000:
   ``ReveTaskTrigger.run()`` vs. a baseline trigger that opens an ``aiohttp`` session per poll
   (providers-http's ``HttpSensorTrigger``). Each run is a fresh process (``_trigger_run.py``);
   the fake Reve API runs in another process, so its CPU is not counted as ours. Columns: peak
   RSS per trigger beyond the idle process, TCP connections opened (counted by the fake), status
   requests per task, CPU ms per status request, detection latency (the fake's finish time ->
   the event) p50/p99, event-loop lag p99.
2. The operator module's import cost beside ``import airflow.sdk``, and the parse time of a DAG
   file of 50 Reve operators vs. the same file of ``EmptyOperator`` s (``_import_parse.py``).
3. The Reve gallery's pages with 10,000 generations in the metadata DB, alone and beside 100,000
   other task instances, through Airflow's own API app (``_gallery.py``).

``--smoke`` runs everything at toy size (the test suite does, so this script never rots).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="reve-bench-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import requests  # noqa: E402
from _gallery import gallery_bench  # noqa: E402
from _import_parse import import_cost, parse_cost  # noqa: E402

from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY  # noqa: E402

CLIENTS = ("reve", "reve-frozen", "session-per-poll")
CLIENT_LABELS = {
    "reve": "ReveTaskTrigger",
    "reve-frozen": "ReveTaskTrigger, `gc.freeze()` at start-up",
    "session-per-poll": "session per poll (baseline)",
}
TARGETS = {
    "rss": 10.0,  # KiB per trigger
    "connections": 64,
    "detect_slack": 0.25,  # seconds beyond the poll interval, p99
    "cpu": 0.5,  # ms per poll
    "import": 30.0,  # ms beyond airflow.sdk
    "parse_ratio": 1.2,
}


def _table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def _post(url: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        url,
        data=json.dumps(body or {}).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@contextmanager
def fake_api_process() -> Iterator[str]:
    """The fake Reve API in its own process; yields its URL."""
    process = subprocess.Popen(
        [sys.executable, "-m", "airflow_provider_reve.testing.fake_server", "--async-seconds", "3600"],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if "listening on" not in line:
            raise RuntimeError(f"the fake API did not start: {line!r}")
        yield line.rsplit(" ", 1)[1].strip()
    finally:
        process.terminate()
        process.wait(timeout=30)


def _create_tasks(url: str, count: int) -> tuple[list[str], float, str]:
    """``count`` running tasks on a freshly reset fake: their ids, when the first was made, and
    one finished task for the warm-up."""
    _post(f"{url}/_fake/reset")
    with requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {DEFAULT_API_KEY}"

        def create(model: str, prompt: str) -> str:
            answer = session.post(f"{url}/api/v1/generate", json={"model": model, "prompt": prompt})
            return str(answer.json()["data"]["task_id"])

        warm = create("reve-2.0", "warm-up")  # synchronous: finished at once
        first_created_at = time.time()
        ids = [create("seedream-5", f"t{i}") for i in range(count)]
    return ids, first_created_at, warm


def _percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[round(fraction * (len(ordered) - 1))] if ordered else float("nan")


def bench_one(url: str, client: str, count: int, args: argparse.Namespace) -> dict[str, Any]:
    task_ids, first_created_at, warm = _create_tasks(url, count)
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as ids_file:
        json.dump(task_ids, ids_file)
    try:
        out = subprocess.run(
            [
                sys.executable,
                str(HERE / "_trigger_run.py"),
                f"--url={url}",
                f"--client={client}",
                f"--tasks-file={ids_file.name}",
                f"--interval={args.interval}",
                f"--settle={args.settle}",
                f"--task-seconds={args.task_seconds}",
                f"--first-created-at={first_created_at}",
                f"--warm-task-id={warm}",
            ],
            capture_output=True,
            text=True,
            check=False,
            timeout=3600,
        )
    finally:
        os.unlink(ids_file.name)
    if out.returncode != 0:
        raise RuntimeError(f"{client} x {count} failed:\n{out.stderr[-4000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    created = {task_id: task["created_at"] for task_id, task in _get(f"{url}/_fake/tasks").items()}
    latencies = [at - (created[t] + result["async_seconds"]) for t, at in result["events"].items()]
    polls = result["status_requests"]
    return {
        "count": count,
        "client": client,
        "succeeded": result["succeeded"],
        "errors": result["errors"],
        "rss_per_trigger_kib": max(0, result["peak_kib"] - result["idle_kib"]) / count,
        "connections": result["connections"],
        "polls_per_task": polls / count,
        "cpu_ms_per_poll": result["cpu_seconds"] * 1000 / max(1, polls),
        "detect_p50": _percentile(latencies, 0.50),
        "detect_p99": _percentile(latencies, 0.99),
        "lag_p99_ms": result["lag_p99"] * 1000,
    }


def trigger_rows(url: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    rows = []
    for count in args.counts:
        for client in args.clients:
            row = bench_one(url, client, count, args)
            print(f"  ... {count} x {client}: done", file=sys.stderr, flush=True)
            rows.append(row)
    return rows


def render(rows: list[dict[str, Any]], imports: dict[str, float], parse: dict[str, float], args: Any) -> str:
    header = [
        "N",
        "client",
        "ok",
        "RSS / trigger (KiB)",
        "TCP conns",
        "polls / task",
        "CPU ms / poll",
        "detect p50 (s)",
        "detect p99 (s)",
        "loop lag p99 (ms)",
    ]
    table = [
        [
            f"{row['count']:,}",
            CLIENT_LABELS[row["client"]],
            f"{row['succeeded']}/{row['count']}" + (f" ({row['errors']} errors)" if row["errors"] else ""),
            f"{row['rss_per_trigger_kib']:.1f}",
            row["connections"],
            f"{row['polls_per_task']:.1f}",
            f"{row['cpu_ms_per_poll']:.2f}",
            f"{row['detect_p50']:.2f}",
            f"{row['detect_p99']:.2f}",
            f"{row['lag_p99_ms']:.0f}",
        ]
        for row in rows
    ]
    ratio = parse["reve_ms"] / parse["empty_ms"]
    scale = [
        ["`import airflow.sdk`", f"{imports['sdk_ms']:.0f} ms", ""],
        [
            "`import airflow_provider_reve.operators.reve` on top",
            f"{imports['operator_ms']:.0f} ms",
            f"<= {TARGETS['import']:.0f} ms",
        ],
        ["parse a DAG file of 50 `EmptyOperator`s", f"{parse['empty_ms']:.0f} ms", ""],
        [
            "parse the same file with 50 `ReveGenerateOperator`s",
            f"{parse['reve_ms']:.0f} ms ({ratio:.2f}x)",
            f"<= {TARGETS['parse_ratio']}x",
        ],
        [
            "... of which the 50 operators, our module already imported",
            f"{parse['reve_preloaded_ms']:.0f} ms ({parse['reve_preloaded_ms'] / parse['empty_ms']:.2f}x)",
            "",
        ],
    ]
    machine = (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
        f"{platform.python_version()}, {platform.system()} {platform.release()}"
    )
    return "\n\n".join(
        [
            f"Machine: {machine}.",
            f"Waits: tasks run {args.task_seconds:g} s after a {args.settle:g} s settle delay "
            f"(`not_before`), polled every {args.interval:g} s; fake API in another process.",
            _table(header, table),
            f"DAG-parse cost (median of {args.import_runs} fresh interpreters each):",
            _table(["what", "time", "target"], scale),
        ]
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--counts", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--interval", type=float, default=2.0, help="poll interval (s)")
    parser.add_argument("--settle", type=float, default=6.0, help="not_before delay (s), as after a deferral")
    parser.add_argument(
        "--task-seconds", type=float, default=30.0, help="how long each task runs after settling"
    )
    parser.add_argument("--import-runs", type=int, default=5)
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS))
    parser.add_argument("--smoke", action="store_true", help="toy sizes, for the test suite")
    args = parser.parse_args(argv)
    if args.smoke:
        args.counts, args.interval, args.settle, args.task_seconds, args.import_runs = [5], 0.2, 0.2, 0.6, 1
    with fake_api_process() as url:
        rows = trigger_rows(url, args)
    imports = import_cost(args.import_runs)
    parse = parse_cost(args.import_runs)
    print(render(rows, imports, parse, args))
    gallery, gallery_table = gallery_bench(smoke=args.smoke)
    print("\n" + gallery_table)
    print("\nRaw: " + json.dumps({"triggers": rows, "imports": imports, "parse": parse, "gallery": gallery}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
