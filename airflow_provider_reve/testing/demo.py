"""``make demo``: the example content pipeline through a real Airflow, against the offline fake Reve API.

Starts :class:`FakeReveServer`, a throw-away Airflow (api-server, scheduler, dag-processor,
triggerer; SQLite + LocalExecutor) with ``AIRFLOW_CONN_REVE_DEFAULT`` pointing at the fake, and
unpauses ``example_reve_content_pipeline``: being ``@daily`` without catchup, the scheduler
starts its run for the latest day at once. Then prints what each task did (including which ones
waited in the triggerer), what it cost, the manifest of the stored images, the contact sheet,
the Asset event it produced and the run of ``example_reve_publish_contact_sheet`` that this
event triggered.

Budgets: the demo's Airflow has an SQLite ledger in the demo folder (``[reve] ledger_conn_id``)
and a daily budget over ``reve_default``, so every generation reserves its credits before paying.
At the end it prints each budget's spent / reserved / remaining, and what a budget without room
answers before anything is paid (see docs/budgets.md).

    python -m airflow_provider_reve.testing.demo [--keep] [--out .demo]

``--keep`` (``make demo ARGS=--keep``) leaves Airflow and the fake running afterwards and prints
the UI's address, to click through the run, the "Reve result" links and the images; Ctrl-C
stops everything the demo started.
"""

from __future__ import annotations

import argparse
import json
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

DEMO_DAG_ID = "example_reve_content_pipeline"
PUBLISH_DAG_ID = "example_reve_publish_contact_sheet"
CONTACT_SHEET_ASSET = "reve_example_contact_sheet"
#: The example DAGs shipped in the package (so the demo runs from an installed wheel too).
PACKAGED_EXAMPLE_DAGS = Path(__file__).resolve().parent.parent / "example_dags"

RETRY_POLICIES_POOL = {
    "name": "reve_generations",
    "slots": 4,
    "description": "Reve generations in flight (example_reve_retry_policies)",
    "include_deferred": True,  # deferred tasks are the ones in flight
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dags-folder", type=Path, default=PACKAGED_EXAMPLE_DAGS)
    parser.add_argument("--out", type=Path, default=Path(".demo"), help="demo state and generated files")
    parser.add_argument("--async-seconds", type=float, default=6.0, help="how long fake async tasks run")
    parser.add_argument(
        "--keep", action="store_true", help="leave Airflow and the fake API running until Ctrl-C"
    )
    args = parser.parse_args(argv)

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    files_dir = out / "generated"
    files_dir.mkdir(parents=True)
    started = time.monotonic()
    code = 130  # interrupted before the run finished
    _stop_on_sigterm()

    try:
        with FakeReveServer(async_seconds=args.async_seconds) as api:
            _say(f"Fake Reve API listening on {api.url} (key {DEFAULT_API_KEY[:7]}..., no credits spent)")
            connection = {"conn_type": "reve", "host": api.url, "password": DEFAULT_API_KEY}
            env = {
                "AIRFLOW_CONN_REVE_DEFAULT": json.dumps(connection),
                "REVE_EXAMPLE_OUTPUT_DIR": str(files_dir),
                **_budget_env(out),
            }
            _say("Starting Airflow: api-server, scheduler, dag-processor, triggerer ...")
            with LocalAirflow(args.dags_folder.resolve(), home=out / "airflow-home", env=env) as airflow:
                _say(f"Airflow is up at {airflow.base_url} (ready after {time.monotonic() - started:.0f} s)")
                code = _run(airflow, api, started)
                if args.keep:
                    _keep(airflow, code)
                return code
    except KeyboardInterrupt:
        # Leaving the `with` blocks above has stopped every process the demo started.
        _say("Stopped Airflow and the fake Reve API.")
        return code


def _run(airflow: LocalAirflow, api: FakeReveServer, started: float) -> int:
    airflow.wait_for_dag(DEMO_DAG_ID, timeout=120)
    airflow.wait_for_dag(PUBLISH_DAG_ID, timeout=60)
    # example_reve_retry_policies caps generations in flight with this pool; with it, every
    # example can be triggered from the UI of a --keep demo.
    airflow.api("POST", "pools", RETRY_POLICIES_POOL)
    # The consumer first: a DAG starts paused, and a paused one is not run for new Asset events.
    airflow.unpause(PUBLISH_DAG_ID)
    airflow.unpause(DEMO_DAG_ID)
    run_id = wait_for_first_run(airflow, DEMO_DAG_ID, timeout=60)
    _say(f"Unpaused {DEMO_DAG_ID}; the scheduler started its @daily run {run_id}. Waiting ...")
    state = airflow.wait_for_run(DEMO_DAG_ID, run_id, timeout=600)
    _report_tasks(airflow, run_id, state, api)
    if state != "success":
        print(airflow.dump_logs(tail=60), file=sys.stderr)
        return 1
    _report_files(airflow, run_id)
    _report_budgets()

    publish_run = wait_for_first_run(airflow, PUBLISH_DAG_ID, timeout=120)
    publish_state = airflow.wait_for_run(PUBLISH_DAG_ID, publish_run, timeout=300)
    print(f"\nThe Asset event triggered {PUBLISH_DAG_ID} run {publish_run}: {publish_state.upper()}")
    if publish_state != "success":
        print(airflow.dump_logs(tail=60), file=sys.stderr)
        return 1
    for item in airflow.xcom(PUBLISH_DAG_ID, publish_run, "publish"):
        print(f"  web preview {item['size'][0]}x{item['size'][1]}, {item['bytes']} bytes: {item['preview']}")
    _say(f"Done in {time.monotonic() - started:.0f} s.")
    return 0


def wait_for_first_run(airflow: LocalAirflow, dag_id: str, timeout: float) -> str:
    """The run_id of the first run of ``dag_id`` the scheduler creates, once it exists."""

    def probe() -> str | None:
        rows = airflow.query("SELECT run_id FROM dag_run WHERE dag_id = ? ORDER BY id LIMIT 1", (dag_id,))
        return str(rows[0]["run_id"]) if rows else None

    return airflow._poll(f"a run of {dag_id}", timeout, probe, interval=0.5)


def asset_events(airflow: LocalAirflow, asset_name: str, run_id: str) -> list[dict[str, Any]]:
    """The events ``run_id`` produced for the Asset named ``asset_name``, with the DAG runs each
    one triggered (``triggered_runs``: ``[{dag_id, run_id, run_type}]``)."""
    events = airflow.query(
        "SELECT e.id, a.uri, e.extra, e.source_dag_id, e.source_task_id, e.source_map_index, e.timestamp"
        " FROM asset_event e JOIN asset a ON a.id = e.asset_id"
        " WHERE a.name = ? AND e.source_run_id = ? ORDER BY e.id",
        (asset_name, run_id),
    )
    for event in events:
        event["extra"] = json.loads(event["extra"]) if isinstance(event["extra"], str) else event["extra"]
        event["triggered_runs"] = airflow.query(
            "SELECT r.dag_id, r.run_id, r.run_type FROM dagrun_asset_event d"
            " JOIN dag_run r ON r.id = d.dag_run_id WHERE d.event_id = ?",
            (event["id"],),
        )
    return events


def _report_tasks(airflow: LocalAirflow, run_id: str, state: str, api: FakeReveServer) -> None:
    print(f"\nRun {run_id}: {state.upper()}\n")
    print(f"{'task':<16} {'map':>3}  {'state':<10} {'tries':>5}  waited in triggerer")
    for ti in airflow.task_instances(DEMO_DAG_ID, run_id):
        evidence = airflow.deferral_evidence(DEMO_DAG_ID, run_id, ti["task_id"], ti["map_index"])
        deferred = "yes" if evidence["deferred"] else "no"
        index = "" if ti["map_index"] < 0 else str(ti["map_index"])
        print(f"{ti['task_id']:<16} {index:>3}  {ti['state'] or '-':<10} {ti['try_number']:>5}  {deferred}")
    stats = api.stats()
    spent = -sum(entry["delta"] for entry in stats["ledger"])
    print(
        f"\nReve API: {stats['submissions']} paid submissions, "
        f"{stats['requests']['status']} status polls, {spent} credits spent"
    )


def _report_files(airflow: LocalAirflow, run_id: str) -> None:
    mapped = [ti for ti in airflow.task_instances(DEMO_DAG_ID, run_id) if ti["task_id"] == "generate"]
    print("\nManifest (the `files` of each generate instance's XCom):")
    for ti in mapped:
        for entry in airflow.xcom(DEMO_DAG_ID, run_id, "generate", map_index=ti["map_index"])["files"]:
            print(
                f"  [{ti['map_index']}] {Path(entry['path']).name}  {entry['bytes']} bytes  sha256 "
                f"{entry['sha256'][:16]}...  {entry['content_type']}  {entry['consumed_credits']} credits"
            )
    sheet = airflow.xcom(DEMO_DAG_ID, run_id, "contact_sheet")
    print(f"\nContact sheet ({sheet['image_count']} images): {sheet['path']}")
    for event in asset_events(airflow, CONTACT_SHEET_ASSET, run_id):
        print(f"\nAsset event on {CONTACT_SHEET_ASSET} ({event['uri']}), extra:")
        print("  " + json.dumps(event["extra"], indent=2).replace("\n", "\n  "))


DEMO_BUDGET = "demo-daily"
DEMO_VIDEO_BUDGET = "demo-videos"
LEDGER_CONN_ID = "reve_ledger"


def _budget_env(out: Path) -> dict[str, str]:
    """Point this process and the demo's Airflow at an SQLite ledger, with two budgets in it."""
    import os

    from airflow_provider_reve.budgets import Budget
    from airflow_provider_reve.budgets.ledger import Ledger
    from airflow_provider_reve.budgets.schema import engine_for_url

    path = out / "reve-ledger.db"
    env = {
        f"AIRFLOW_CONN_{LEDGER_CONN_ID.upper()}": f"sqlite:///{path}",
        "AIRFLOW__REVE__LEDGER_CONN_ID": LEDGER_CONN_ID,
    }
    os.environ.update(env)
    ledger = Ledger(engine_for_url(f"sqlite:///{path}"))
    ledger.set_budget(Budget(name=DEMO_BUDGET, limit_credits=2000, conn_id="reve_default", window="day"))
    # Room for no video at all: shows what a budget without room answers, before anything is paid.
    ledger.set_budget(
        Budget(
            name=DEMO_VIDEO_BUDGET,
            limit_credits=100,
            conn_id="reve_default",
            window="day",
            models=("kling26-image-to-video",),
        )
    )
    _say(
        f"Budgets: {DEMO_BUDGET} (2000 credits/day), {DEMO_VIDEO_BUDGET} (100/day for kling26 "
        f"videos), ledger {path}"
    )
    return env


def _report_budgets() -> None:
    from airflow_provider_reve.budgets import BudgetExhaustedError, Scope
    from airflow_provider_reve.budgets.ledger import Ledger
    from airflow_provider_reve.budgets.schema import engine_for_conn_id

    ledger = Ledger(engine_for_conn_id(LEDGER_CONN_ID))
    print("\nBudgets (airflow reve budget list):")
    for budget in ledger.list_budgets():
        status = ledger.status(budget.name)
        assert status is not None
        print(
            f"  {budget.name:<12} spent {status.spent_credits:>5}  reserved {status.reserved_credits:>4}  "
            f"remaining {status.remaining_credits:>5} of {budget.limit_credits}  (resets {status.resets_at})"
        )
    # What a 5 s kling26 video (about 150 credits) would meet: refused before any paid call.
    scope = Scope(conn_id="reve_default", dag_id="a_video_dag", model="kling26-image-to-video")
    try:
        reservation = ledger.reserve("demo-refusal-probe", scope, 150)
    except BudgetExhaustedError as refused:
        print(f"\nA 150-credit kling26 video would be refused before paying:\n  {refused}")
    else:
        if reservation is not None:
            ledger.release(reservation.id)


def _keep(airflow: LocalAirflow, code: int) -> None:
    run = wait_for_first_run(airflow, DEMO_DAG_ID, timeout=5)
    print(
        f"\nAirflow and the fake Reve API keep running{' (the demo failed)' if code else ''}:\n"
        f"  the run:  {airflow.base_url}/dags/{DEMO_DAG_ID}/runs/{run}\n"
        f"  Airflow:  {airflow.base_url}  (no login: every visitor is an admin, so it listens on\n"
        "            127.0.0.1 only)\n"
        f"  logs:     {airflow.log_dir}\n"
        "Press Ctrl-C to stop everything the demo started.",
        flush=True,
    )
    while True:
        time.sleep(3600)


def _stop_on_sigterm() -> None:
    """``kill <pid>`` of the demo stops it like Ctrl-C does: every process it started goes too."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
