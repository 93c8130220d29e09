"""``airflow reve estimate`` as a user runs it (the real ``airflow`` command in a subprocess),
checked against what the example DAGs then really spend in ``dag.test()`` on the fake API."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
from test_budget_cli import airflow

from airflow_provider_reve.budgets import Ledger
from airflow_provider_reve.testing import FakeReveServer

REPO = Path(__file__).resolve().parents[3]
EXAMPLE_DAGS = REPO / "airflow_provider_reve" / "example_dags"
ESTIMATE_DAGS = Path(__file__).resolve().parents[2] / "dags" / "estimate"


@pytest.fixture
def estimate_env(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example_output_root: Path
) -> dict[str, str]:
    """A throw-away AIRFLOW_HOME for the CLI, and an SQLite ledger it shares with this process."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("AIRFLOW_CONN_REVE_LEDGER", f"sqlite:///{tmp_path / 'ledger.db'}")
    monkeypatch.setenv("AIRFLOW__REVE__LEDGER_CONN_ID", "reve_ledger")
    monkeypatch.setenv("REVE_EXAMPLE_OUTPUT_DIR", str(example_output_root))
    env = {
        **os.environ,
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": f"sqlite:///{home / 'airflow.db'}",
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    env.pop("AIRFLOW__CORE__UNIT_TEST_MODE", None)
    return env


def estimate(env: dict[str, str], dag_id: str, *args: str, folder: Path = EXAMPLE_DAGS) -> tuple[int, dict]:
    done = airflow(env, "reve", "estimate", dag_id, "--subdir", str(folder), "--json", *args, check=False)
    assert done.returncode in (0, 1, 2), done.stderr[-3000:]
    return done.returncode, json.loads(done.stdout)  # stdout is the JSON and nothing else


def test_json_on_stdout_is_the_estimate_alone_and_the_dagbag_log_goes_to_stderr(
    estimate_env: dict[str, str],
):
    done = airflow(
        estimate_env, "reve", "estimate", "example_reve_content_pipeline", "--subdir", str(EXAMPLE_DAGS),
        "--json", check=False,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout)["total_credits"] == 100  # `airflow ... --json | jq` works
    assert "Filling up the DagBag" in done.stderr


@pytest.fixture
def run_examples(
    estimate_env: dict[str, str],
    use_dags_folder: Callable[[Path], Path],
    fake_reve_server: FakeReveServer,
    reve_connection_env: str,
) -> Callable[[str], int]:
    """Run an example DAG with ``dag.test()``; return the credits the fake API charged for it."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.models.pool import Pool

    fake_reve_server.set_async_seconds(0.2)
    use_dags_folder(EXAMPLE_DAGS)
    Pool.create_or_update_pool("reve_generations", slots=4, description="test", include_deferred=True)

    def run(dag_id: str) -> int:
        before = -sum(entry["delta"] for entry in fake_reve_server.ledger)
        dag_run = DagBag(dag_folder=str(EXAMPLE_DAGS)).dags[dag_id].test(logical_date=None)
        assert dag_run.state == "success"
        return -sum(entry["delta"] for entry in fake_reve_server.ledger) - before

    return run


@pytest.mark.parametrize(
    "dag_id", ["example_reve_content_pipeline", "example_reve_video_pipeline", "example_reve_retry_policies"]
)
def test_the_estimate_of_each_example_dag_is_what_its_run_then_spends(
    estimate_env: dict[str, str], run_examples: Callable[[str], int], dag_id: str
):
    airflow(estimate_env, "reve", "budget", "set", "everything", "--limit", "1000")

    code, estimated = estimate(estimate_env, dag_id)

    assert code == 0
    assert estimated["fully_known"] is True
    (budget,) = estimated["budgets"]
    assert (budget["name"], budget["remaining_credits"], budget["exceeded"]) == ("everything", 1000, False)
    assert budget["needed_credits"] == estimated["total_credits"] > 0

    charged = run_examples(dag_id)

    assert estimated["total_credits"] == charged
    # The run reserved the same credits in the budget (a task submitted with
    # wait_for_completion=False stays reserved until reconciled: its operator never sees the end).
    status = Ledger.configured().status("everything")
    assert status.spent_credits + status.reserved_credits == charged


def test_the_estimate_exits_1_and_names_the_budget_a_run_would_exceed(estimate_env: dict[str, str]):
    airflow(estimate_env, "reve", "budget", "set", "small", "--limit", "50")
    airflow(
        estimate_env,
        "reve",
        "budget",
        "set",
        "videos",
        "--limit",
        "1000",
        "--model",
        "kling26-image-to-video",
    )

    code, estimated = estimate(estimate_env, "example_reve_content_pipeline")

    assert code == 1
    assert estimated["total_credits"] == 100  # four seedream-5 images
    assert estimated["budgets"] == [
        {
            "name": "small",
            "remaining_credits": 50,
            "needed_credits": 100,
            "refused_tasks": [],
            "exceeded": True,
        }
    ]
    text = airflow(
        estimate_env,
        "reve",
        "estimate",
        "example_reve_content_pipeline",
        "--subdir",
        str(EXAMPLE_DAGS),
        check=False,
    )
    assert text.returncode == 1
    assert "Budget small: needs 100 of 50 remaining" in text.stdout
    assert "WOULD BE EXCEEDED" in text.stdout


def test_a_backfill_estimate_renders_every_run_it_would_create(estimate_env: dict[str, str]):
    code, estimated = estimate(
        estimate_env, "example_reve_content_pipeline", "--backfill", "2026-03-01", "2026-03-03"
    )

    assert code == 0  # no ledger budget covers it: nothing to exceed
    assert [run["logical_date"][:10] for run in estimated["runs"]] == [
        "2026-03-01",
        "2026-03-02",
        "2026-03-03",
    ]
    assert estimated["total_credits"] == 3 * 100


def test_conf_params_and_literal_expand_inputs_are_rendered_and_xcom_counts_are_named_unknown(
    estimate_env: dict[str, str],
):
    code, estimated = estimate(
        estimate_env, "budget_estimate_shapes", "--conf", json.dumps({"images": 3}), folder=ESTIMATE_DAGS
    )

    assert code == 0
    tasks = {task["task_id"]: task for task in estimated["runs"][0]["tasks"]}
    # num_images="{{ params.images }}" with --conf images=3: 3 x 12 credits.
    assert tasks["from_params"]["credits_each"] == [36]
    # expand over two literal lists: the product, each priced by its own resolution.
    assert sorted(tasks["product"]["credits_each"]) == [70, 70, 140, 140]
    # expand over another task's XCom: how many is not known before the run, and it says so.
    assert tasks["over_xcom"]["instances"] is None
    assert "XCom of 'prompts'" in tasks["over_xcom"]["unknown"]
    # A mapped @task.reve: its function is called once per literal argument, each request priced.
    assert tasks["mapped_function"]["credits_each"] == [40, 40, 40]  # 2 nano-banana images each
    # A duration read from XCom: the price is not known, and is left out of the total.
    assert tasks["duration_from_xcom"]["credits_each"] == [None]
    assert estimated["total_credits"] == 36 + 420 + 120
    assert estimated["fully_known"] is False
