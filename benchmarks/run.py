"""Benchmarks, printed as tables (never asserted in the test suite): `make bench`.

1. Status polls from one ``ReveHook``: one keep-alive connection vs. a new session per call.
2. Many ``ReveTaskTrigger`` s on one event loop (as in the triggerer): wall time, polls and TCP
   connections with our shared per-loop session, vs. a new ``aiohttp`` session per poll (what
   providers-http's triggers do).

Everything runs against the offline fake Reve API on loopback.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import tempfile
import time

os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="reve-bench-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")

import aiohttp

from airflow_provider_reve.hooks.reve import ReveHook
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer
from airflow_provider_reve.triggers.reve import ReveTaskTrigger


def _table(title: str, header: list[str], rows: list[list[object]]) -> None:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows, strict=False)]
    print(f"\n{title}")
    print("  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print("  ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=False)))


def bench_sync_polls(server: FakeReveServer, calls: int = 300) -> None:
    rows = []
    for label, fresh in (("one ReveHook (keep-alive)", False), ("new hook per call", True)):
        server.reset()
        task_id = ReveHook().generate("reve-2.0", prompt="bench").task_id
        before = server.connections
        hook = ReveHook()
        started = time.perf_counter()
        for _ in range(calls):
            if fresh:
                hook.close()
                hook = ReveHook()
            hook.get_status(task_id)
        elapsed = time.perf_counter() - started
        hook.close()
        rows.append([label, calls, f"{elapsed:.2f}", f"{calls / elapsed:.0f}", server.connections - before])
    _table("Sync status polls", ["client", "calls", "seconds", "calls/s", "TCP connections"], rows)


async def _poll_with_new_session_each_time(url: str, task_id: str, interval: float) -> None:
    while True:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"{url}/api/v1/status",
                params={"task_id": task_id},
                headers={"Authorization": f"Bearer {DEFAULT_API_KEY}"},
            ) as response,
        ):
            body = json.loads(await response.read())
        if body["data"]["status"] != "IN_PROGRESS":
            return
        await asyncio.sleep(interval)


def bench_triggers(server: FakeReveServer, counts: tuple[int, ...] = (100, 500, 1000)) -> None:
    rows = []
    for count in counts:
        for label in ("shared per-loop session", "new session per poll"):
            server.reset()
            server.set_async_seconds(2.0)
            hook = ReveHook()
            task_ids = [hook.generate("seedream-5", prompt=f"t{i}").task_id for i in range(count)]
            hook.close()
            polls_before, conns_before = server.requests_to("status"), server.connections

            async def run_all(label: str = label, task_ids: list[str] = task_ids) -> int:
                if label.startswith("shared"):
                    triggers = [ReveTaskTrigger(t, poll_interval=0.5) for t in task_ids]
                    events = await asyncio.gather(*(_first_event(tr) for tr in triggers))
                    return sum(1 for e in events if e["outcome"] == "success")
                await asyncio.gather(
                    *(_poll_with_new_session_each_time(server.url, t, 0.5) for t in task_ids)
                )
                return len(task_ids)

            started = time.perf_counter()
            done = asyncio.run(run_all())
            elapsed = time.perf_counter() - started
            rows.append(
                [
                    count,
                    label,
                    done,
                    f"{elapsed:.2f}",
                    server.requests_to("status") - polls_before,
                    server.connections - conns_before,
                ]
            )
    _table(
        "Triggers on one event loop (tasks finish after 2 s, poll every 0.5 s)",
        ["triggers", "client", "succeeded", "seconds", "status polls", "TCP connections"],
        rows,
    )


async def _first_event(trigger: ReveTaskTrigger) -> dict:
    async for event in trigger.run():
        return event.payload
    raise RuntimeError("trigger yielded nothing")


def main() -> int:
    with FakeReveServer(async_seconds=2.0) as server:
        conn = {"conn_type": "reve", "host": server.url, "password": DEFAULT_API_KEY}
        os.environ["AIRFLOW_CONN_REVE_DEFAULT"] = json.dumps(conn)
        bench_sync_polls(server)
        bench_triggers(server, tuple(int(a) for a in sys.argv[1:]) or (100, 500, 1000))
    return 0


if __name__ == "__main__":
    sys.exit(main())
