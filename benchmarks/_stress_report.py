"""What ``make stress`` checks and prints, read from the metadata DB, the logs and the fake's ledger.

Separate from ``stress.py`` (which starts things) so the checks read as one list: every check
appends a failure message instead of stopping at the first one, so a broken run still prints
every figure.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_reve.testing.cluster import LocalAirflow
from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer

# Airflow 3.3's triggerer logs this and increments ``triggers.blocked_main_thread`` together
# (airflow/jobs/triggerer_job_runner.py, ``block_watchdog``): one line is one count.
BLOCKED_LINE = re.compile(r"async thread was blocked for ([0-9.]+) seconds")


@dataclass
class Figures:
    n: int
    run_state: str = "unknown"
    wall_seconds: float = 0.0
    ti_states: dict[str, int] = field(default_factory=dict)
    tries: dict[int, int] = field(default_factory=dict)
    submissions: int = 0
    fake_tasks: dict[str, int] = field(default_factory=dict)
    generate_requests: int = 0
    status_requests: int = 0
    polls_per_task: float = 0.0
    charged: int = 0
    refunded: int = 0
    xcom_credits: int = 0
    blocked: list[float] = field(default_factory=list)
    peak_triggerer_rss_mib: float = 0.0
    peak_deferred: int = 0
    load_before: tuple[float, float, float] = (0.0, 0.0, 0.0)
    load_after: tuple[float, float, float] = (0.0, 0.0, 0.0)
    failures: list[str] = field(default_factory=list)

    def as_json(self) -> str:
        data = dict(self.__dict__)
        data["tries"] = {str(k): v for k, v in self.tries.items()}
        return json.dumps(data, sort_keys=True)


def collect(fig: Figures, airflow: LocalAirflow, fake: FakeReveServer, dag_id: str, run_id: str) -> None:
    """Fill ``fig`` from what the run left behind and record every broken promise in ``fig.failures``."""
    tis = airflow.query(
        "SELECT map_index, state, try_number FROM task_instance WHERE dag_id = ? AND run_id = ?"
        " AND task_id = 'generate'",
        (dag_id, run_id),
    )
    fig.ti_states = dict(Counter(str(ti["state"]) for ti in tis))
    fig.tries = dict(sorted(Counter(int(ti["try_number"]) for ti in tis).items()))
    stats = fake.stats()
    fig.submissions = stats["submissions"]
    fig.fake_tasks = stats["tasks_by_status"]
    fig.generate_requests = stats["requests"]["generate"]
    fig.status_requests = stats["requests"]["status"]
    fig.polls_per_task = fig.status_requests / max(1, fig.submissions)
    ledger = [e for e in stats["ledger"] if e["key"] == DEFAULT_API_KEY]
    fig.charged = -sum(e["delta"] for e in ledger if e["reason"] == "charge")
    fig.refunded = sum(e["delta"] for e in ledger if e["reason"] == "refund")
    fig.blocked = [float(m.group(1)) for m in BLOCKED_LINE.finditer(_read(airflow, "triggerer"))]

    if len(tis) != fig.n:
        fig.failures.append(f"{len(tis)} mapped task instances, expected {fig.n}")
    _check_outcomes(fig, airflow, dag_id, run_id, tis)
    _check_credits(fig, airflow, dag_id, run_id)
    # Every FAILED Reve task is refunded and resubmitted by the next Airflow try, except the
    # last one of a task instance that ran out of retries. Nothing else may create a task:
    # 503s and TOO_MANY_TASKS are refusals (nothing created), never re-sent after a paid POST.
    failed_tis = fig.ti_states.get("failed", 0)
    expected = fig.n + fig.fake_tasks.get("FAILED", 0) - failed_tis
    if fig.submissions != expected:
        fig.failures.append(
            f"submissions {fig.submissions} != tasks {fig.n} + FAILED-and-resubmitted "
            f"{fig.fake_tasks.get('FAILED', 0) - failed_tis} = {expected}"
        )
    if fig.fake_tasks.get("IN_PROGRESS", 0):
        fig.failures.append(f"{fig.fake_tasks['IN_PROGRESS']} Reve tasks were left IN_PROGRESS")
    if fig.blocked:
        fig.failures.append(
            f"triggers.blocked_main_thread = {len(fig.blocked)} (seconds: {fig.blocked[:10]})"
        )


def _check_outcomes(
    fig: Figures, airflow: LocalAirflow, dag_id: str, run_id: str, tis: list[dict[str, Any]]
) -> None:
    """Every task instance ends SUCCESS, or failed with the API's own error in its last log."""
    for ti in tis:
        state = ti["state"]
        if state == "success":
            continue
        if state != "failed":
            fig.failures.append(f"generate[{ti['map_index']}] ended {state!r}")
            continue
        log = airflow.task_log(dag_id, run_id, "generate", int(ti["try_number"]), int(ti["map_index"]))
        if "GENERATION_FAILED" not in log:
            fig.failures.append(f"generate[{ti['map_index']}] failed without the API's error in its log")


def _check_credits(fig: Figures, airflow: LocalAirflow, dag_id: str, run_id: str) -> None:
    """The fake's net charge equals the ``consumed_credits`` the successful tasks put in XCom."""
    rows = airflow.query(
        "SELECT map_index, value FROM xcom WHERE dag_id = ? AND run_id = ? AND task_id = 'generate'"
        " AND key = 'return_value'",
        (dag_id, run_id),
    )
    total = 0
    for row in rows:
        value = json.loads(row["value"]) if isinstance(row["value"], (str, bytes)) else row["value"]
        if value.get("status") != "SUCCESS" or not value.get("result_urls"):
            fig.failures.append(f"generate[{row['map_index']}] XCom is not a SUCCESS with results: {value}")
        total += int(value.get("consumed_credits") or 0)
    fig.xcom_credits = total
    if len(rows) != fig.ti_states.get("success", 0):
        fig.failures.append(f"{len(rows)} XComs for {fig.ti_states.get('success', 0)} successful tasks")
    if fig.charged - fig.refunded != total:
        fig.failures.append(
            f"ledger: charged {fig.charged} - refunded {fig.refunded} = {fig.charged - fig.refunded}"
            f" credits, XCom reports {total}"
        )


def _read(airflow: LocalAirflow, component: str) -> str:
    try:
        return airflow.component_log(component).read_text(errors="replace")
    except FileNotFoundError:
        return ""


def render(fig: Figures) -> str:
    """The human-readable report."""
    ok = "PASS" if not fig.failures else "FAIL"
    lines = [
        f"make stress: {fig.n} mapped deferrable generations -- {ok}",
        f"  dag run                 {fig.run_state} in {fig.wall_seconds:.0f} s wall time",
        f"  task instances          {fig.ti_states}",
        f"  tries (try -> TIs)      {fig.tries}",
        f"  Reve tasks created      {fig.submissions} ({fig.fake_tasks})",
        f"  generate requests       {fig.generate_requests} (refusals: 503 faults and TOO_MANY_TASKS)",
        f"  status polls            {fig.status_requests} = {fig.polls_per_task:.2f} per Reve task",
        f"  credits                 charged {fig.charged}, refunded {fig.refunded}, XCom {fig.xcom_credits}",
        f"  blocked_main_thread     {len(fig.blocked)}",
        f"  peak triggerer RSS      {fig.peak_triggerer_rss_mib:.0f} MiB (triggerer + its trigger runner)",
        f"  peak deferred TIs       {fig.peak_deferred}",
        "  load average            before {:.2f} {:.2f} {:.2f}, after {:.2f} {:.2f} {:.2f}".format(
            *fig.load_before, *fig.load_after
        ),
    ]
    lines += [f"  FAILED CHECK: {failure}" for failure in fig.failures]
    return "\n".join(lines)
