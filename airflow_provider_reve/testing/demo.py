"""``make demo``: the example pipeline through a real Airflow, against the offline fake Reve API.

Starts :class:`FakeReveServer`, a throw-away Airflow (api-server, scheduler, dag-processor,
triggerer; SQLite + LocalExecutor) with ``AIRFLOW_CONN_REVE_DEFAULT`` pointing at the fake,
triggers ``example_reve_content_pipeline``, and prints what each task did (including which
ones waited in the triggerer), what it cost, and where the generated files are.

    python -m airflow_provider_reve.testing.demo [--dags-folder example_dags] [--out .demo]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

DEMO_DAG_ID = "example_reve_content_pipeline"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dags-folder", type=Path, default=Path("example_dags"))
    parser.add_argument("--dag-id", default=DEMO_DAG_ID)
    parser.add_argument("--out", type=Path, default=Path(".demo"), help="demo state and generated files")
    parser.add_argument("--async-seconds", type=float, default=6.0, help="how long fake async tasks run")
    args = parser.parse_args(argv)

    out = args.out.resolve()
    shutil.rmtree(out, ignore_errors=True)
    files_dir = out / "generated"
    files_dir.mkdir(parents=True)
    started = time.monotonic()

    with FakeReveServer(async_seconds=args.async_seconds) as api:
        _say(f"Fake Reve API listening on {api.url} (key {DEFAULT_API_KEY[:7]}..., no credits spent)")
        connection = {"conn_type": "reve", "host": api.url, "password": DEFAULT_API_KEY}
        env = {
            "AIRFLOW_CONN_REVE_DEFAULT": json.dumps(connection),
            "REVE_EXAMPLE_OUTPUT_DIR": str(files_dir),
        }
        _say("Starting Airflow: api-server, scheduler, dag-processor, triggerer (about 30 s) ...")
        with LocalAirflow(args.dags_folder.resolve(), home=out / "airflow-home", env=env) as airflow:
            _say(f"Airflow is up at {airflow.base_url} (ready after {time.monotonic() - started:.0f} s)")
            airflow.wait_for_dag(args.dag_id, timeout=120)
            run_id = airflow.trigger(args.dag_id)
            _say(f"Triggered {args.dag_id} run {run_id}; waiting for it to finish ...")
            state = airflow.wait_for_run(args.dag_id, run_id, timeout=600)
            _report(airflow, args.dag_id, run_id, state, api)
            if state != "success":
                print(airflow.dump_logs(tail=60), file=sys.stderr)
                return 1
            collected = airflow.xcom(args.dag_id, run_id, "collect_files")
    _say(f"Done in {time.monotonic() - started:.0f} s.")
    print(f"\nGenerated files ({len(collected['files'])}) are in: {collected['output_dir']}")
    for path in collected["files"]:
        print(f"  {path}")
    return 0


def _report(airflow: LocalAirflow, dag_id: str, run_id: str, state: str, api: FakeReveServer) -> None:
    print(f"\nRun {run_id}: {state.upper()}\n")
    print(f"{'task':<20} {'map':>3}  {'state':<10} {'tries':>5}  waited in triggerer")
    for ti in airflow.task_instances(dag_id, run_id):
        evidence = airflow.deferral_evidence(dag_id, run_id, ti["task_id"], ti["map_index"])
        deferred = "yes" if evidence["deferred"] else "no"
        index = "" if ti["map_index"] < 0 else str(ti["map_index"])
        print(f"{ti['task_id']:<20} {index:>3}  {ti['state'] or '-':<10} {ti['try_number']:>5}  {deferred}")
    stats = api.stats()
    spent = -sum(entry["delta"] for entry in stats["ledger"])
    print(
        f"\nReve API: {stats['submissions']} paid submissions, "
        f"{stats['requests']['status']} status polls, {spent} credits spent"
    )


def _say(message: str) -> None:
    print(f"[demo] {message}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
