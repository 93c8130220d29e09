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
            "unknown_tasks": [],
            "exceeded": True,
            "cannot_tell": False,
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


def test_a_task_reve_function_reading_xcom_with_the_documented_idioms_is_priced(
    estimate_env: dict[str, str],
):
    code, estimated = estimate(estimate_env, "budget_estimate_from_xcom", folder=ESTIMATE_DAGS)

    assert code == 0  # no budget covers it: nothing to tell
    tasks = {task["task_id"]: task for task in estimated["runs"][0]["tasks"]}
    # results[:], results[0], .get(...).items(), iteration: the XCom is a placeholder that answers
    # them, and the prompt does not change the price.
    assert (tasks["banner"]["credits_each"], tasks["banner"]["unknown"]) == ([12], None)
    assert tasks["like_the_first"]["credits_each"] == [40]  # 2 nano-banana images
    assert tasks["edit_each"]["credits_each"] == [20]  # a reve-2.0 edit: image URLs were given
    # num_images=len(results[:]): the price depends on the XCom, and it says so.
    assert tasks["one_per_result"]["credits_each"] == [None]
    assert "depends on how much another task's XCom holds" in tasks["one_per_result"]["unknown"]
    assert tasks["heroes"]["instances"] is None
    assert estimated["total_credits"] == 12 + 40 + 20


def test_a_budget_whose_need_only_the_run_knows_is_not_reported_as_fitting(estimate_env: dict[str, str]):
    airflow(estimate_env, "reve", "budget", "set", "everything", "--limit", "1000")
    airflow(estimate_env, "reve", "budget", "set", "banners", "--limit", "100", "--model", "reve-2.0")

    code, estimated = estimate(estimate_env, "budget_estimate_from_xcom", folder=ESTIMATE_DAGS)

    assert code == 2  # cannot tell: neither 0 ("fits") nor 1 ("exceeded")
    budgets = {budget["name"]: budget for budget in estimated["budgets"]}
    assert budgets["everything"]["needed_credits"] == 72
    assert budgets["everything"]["unknown_tasks"] == ["heroes", "one_per_result"]
    assert (budgets["everything"]["cannot_tell"], budgets["everything"]["exceeded"]) == (True, False)
    # reve-2.0's two tasks are both priced: that budget can tell.
    assert budgets["banners"]["needed_credits"] == 32
    assert (budgets["banners"]["cannot_tell"], budgets["banners"]["exceeded"]) == (False, False)
    text = airflow(
        estimate_env, "reve", "estimate", "budget_estimate_from_xcom", "--subdir", str(ESTIMATE_DAGS),
        check=False,
    )  # fmt: skip
    assert text.returncode == 2
    assert (
        "Budget everything: needs at least 72 of 1000 remaining (limit 1000 per day, spent 0, reserved 0): "
        "CANNOT TELL: only the run knows what heroes, one_per_result would need"
    ) in text.stdout
    assert "Budget banners: needs 32 of 100 remaining" in text.stdout

    # What is known already passes a budget: exceeded (1), whatever the rest would add.
    airflow(estimate_env, "reve", "budget", "set", "everything", "--limit", "50")
    code, estimated = estimate(estimate_env, "budget_estimate_from_xcom", folder=ESTIMATE_DAGS)
    assert code == 1
    assert estimated["budgets"][1]["exceeded"] is True
