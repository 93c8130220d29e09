"""One benchmark run, in its own process so that its memory and CPU are its own: N waits on one
event loop, as the triggerer runs them. Started by ``run.py``; prints one JSON line.

``--client reve``: ``ReveTaskTrigger.run()`` built as the operator defers (``not_before`` =
now + settle, an absolute deadline).
``--client session-per-poll``: the baseline -- a trigger that opens an ``aiohttp.ClientSession``
for every poll and polls at once, then every interval, as providers-http's ``HttpSensorTrigger``
does (its connection resolved once, which flatters it). It has no jitter of its own, so each one
starts at a random moment of the first interval after ``not_before``, as deferrals arrive in a
real triggerer: otherwise all N would poll in lockstep, which no real deployment sees.

``--client reve-frozen``: ``ReveTaskTrigger`` again, in a process that called ``gc.freeze()``
right after ``import airflow`` -- what ``import gc; gc.freeze()`` in ``airflow_local_settings.py``
does to a triggerer (README, "Scale"): CPython's full collections then skip Airflow's few hundred
thousand start-up objects.

Before the idle memory is measured, one wait runs to completion on a finished task, so that what
is loaded or cached on first use (connection lookup, session, parsers) counts as idle.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import sys
import tempfile
import time
import urllib.request
from typing import Any

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="reve-bench-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

if "--client=reve-frozen" in sys.argv:
    import gc

    import airflow  # noqa: F401 -- what airflow_local_settings.py sees when Airflow imports it

    gc.freeze()

import aiohttp

from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY
from airflow_provider_reve.triggers.reve import ReveTaskTrigger

MODEL = "seedream-5"
LAG_SAMPLE_SECONDS = 0.05


def _kib(field: str) -> int:
    """A ``VmRSS``/``VmHWM`` line of /proc/self/status, in KiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _post(url: str, body: dict[str, Any]) -> Any:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}, method="POST"
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


async def _reve(task_id: str, interval: float, not_before: float, deadline: float) -> tuple[str, float]:
    trigger = ReveTaskTrigger(
        task_id, poll_interval=interval, deadline=deadline, model=MODEL, not_before=not_before
    )
    async for event in trigger.run():
        return event.payload["outcome"], time.time()
    raise RuntimeError("the trigger fired no event")


async def _session_per_poll(
    url: str, task_id: str, interval: float, not_before: float, errors: list[int]
) -> tuple[str, float]:
    await asyncio.sleep(max(0.0, not_before + random.random() * interval - time.time()))
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    while True:
        try:
            async with (
                aiohttp.ClientSession() as session,
                session.get(f"{url}/api/v1/status", params={"task_id": task_id}, headers=headers) as answer,
            ):
                status = json.loads(await answer.read())["data"]["status"]
            if status != "IN_PROGRESS":
                return ("success" if status == "SUCCESS" else status), time.time()
        except (aiohttp.ClientError, OSError, ValueError, KeyError, TypeError):
            errors[0] += 1  # HttpSensorTrigger would end the wait; we count it and keep going
        await asyncio.sleep(interval)


async def _watch_lag(lags: list[float], stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        expected = loop.time() + LAG_SAMPLE_SECONDS
        await asyncio.sleep(LAG_SAMPLE_SECONDS)
        lags.append(max(0.0, loop.time() - expected))


async def _run(args: argparse.Namespace, task_ids: list[str]) -> dict[str, Any]:
    lags: list[float] = []
    stop = asyncio.Event()
    watcher = asyncio.ensure_future(_watch_lag(lags, stop))
    now = time.time()
    not_before, deadline = now + args.settle, now + args.settle + args.task_seconds + 600
    errors = [0]
    if args.client.startswith("reve"):
        waits = [_reve(t, args.interval, not_before, deadline) for t in task_ids]
    else:
        waits = [_session_per_poll(args.url, t, args.interval, not_before, errors) for t in task_ids]
    results = await asyncio.gather(*waits)
    stop.set()
    await watcher
    lags.sort()
    return {
        "events": {task_id: at for task_id, (_, at) in zip(task_ids, results, strict=True)},
        "succeeded": sum(outcome == "success" for outcome, _ in results),
        "errors": errors[0],
        "lag_p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
        "lag_max": lags[-1] if lags else 0.0,
    }


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


async def _warm_up(args: argparse.Namespace, task_id: str) -> None:
    if args.client.startswith("reve"):
        await _reve(task_id, 0.01, time.time(), time.time() + 60)
    else:
        await _session_per_poll(args.url, task_id, 0.01, time.time() - 0.01, [0])


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--client", choices=("reve", "reve-frozen", "session-per-poll"), required=True)
    parser.add_argument("--tasks-file", required=True)
    parser.add_argument("--interval", type=float, required=True)
    parser.add_argument("--settle", type=float, required=True)
    parser.add_argument("--task-seconds", type=float, required=True)
    parser.add_argument("--first-created-at", type=float, required=True)
    parser.add_argument("--warm-task-id", required=True, help="a finished task, for the warm-up")
    args = parser.parse_args()
    with open(args.tasks_file) as tasks:
        task_ids = json.load(tasks)
    connection = {"conn_type": "reve", "host": args.url, "password": DEFAULT_API_KEY}
    os.environ["AIRFLOW_CONN_REVE_DEFAULT"] = json.dumps(connection)
    asyncio.run(_warm_up(args, args.warm_task_id))
    # Every task runs until settle + task_seconds from now (later-created ones a little longer).
    async_seconds = time.time() - args.first_created_at + args.settle + args.task_seconds
    _post(f"{args.url}/_fake/settings", {"async_seconds": async_seconds})
    idle_kib = _kib("VmRSS")
    # The control API is not counted by the fake: these reads do not change what they measure.
    before = _get(f"{args.url}/_fake/stats")
    cpu_before, started = _cpu_seconds(), time.perf_counter()
    result = asyncio.run(_run(args, task_ids))
    cpu_seconds, wall_seconds = _cpu_seconds() - cpu_before, time.perf_counter() - started
    after = _get(f"{args.url}/_fake/stats")
    result.update(
        {
            "status_requests": after["requests"]["status"] - before["requests"]["status"],
            "connections": after["connections"] - before["connections"],
            "async_seconds": async_seconds,
            "idle_kib": idle_kib,
            "peak_kib": _kib("VmHWM"),
            "cpu_seconds": cpu_seconds,
            "wall_seconds": wall_seconds,
        }
    )
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
