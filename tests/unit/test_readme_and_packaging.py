"""What a new user copies from the README and the docs, and what ``pip install`` gives them (issue
22, item 7).

* Every ``download_to`` / ``destination`` template in the README and the docs site renders on a run without a
  logical date (a manual run from the UI, CLI or REST API in Airflow 3), through ``dag.test()``.
* The example DAGs ship inside the package, with their prompts, and load from a DAGs folder that
  links to them.
* The distribution names a documentation URL: what ``airflow providers get
  airflow-provider-reve --full`` shows as ``documentation-url`` (Airflow reads it from the
  ``Documentation`` project URL).
"""

from __future__ import annotations

import re
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from reve_test_helpers import return_values

REPO = Path(__file__).resolve().parents[2]
README = (REPO / "README.md").read_text()
#: The README is a front door; the guides it links to hold the rest (docs/, issue 24).
DOCS_PAGES = {
    path.relative_to(REPO).as_posix(): path.read_text() for path in sorted((REPO / "docs").rglob("*.md"))
}
EXAMPLE_DAG_IDS = {
    "example_reve_content_pipeline",
    "example_reve_publish_contact_sheet",
    "example_reve_video_pipeline",
    "example_reve_review_video",
    "example_reve_retry_policies",
}


def readme_storage_templates() -> list[str]:
    """The templated strings the README and the docs give to ``download_to=`` or ``destination=``."""
    text = "\n".join([README, *DOCS_PAGES.values()])
    found = re.findall(r"""(?:download_to|destination)=["']([^"']*\{\{[^"']*)["']""", text)
    return sorted(set(found))


def test_the_readme_has_storage_templates_to_check() -> None:
    assert readme_storage_templates(), "the README shows templated download_to/destination values"


def test_every_storage_template_in_the_readme_renders_on_a_manual_run_without_a_logical_date(
    use_dags_folder: Any, tmp_path: Path
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    templates = readme_storage_templates()
    dag_file = textwrap.dedent(
        f"""
        from datetime import datetime

        from airflow.sdk import DAG, BaseOperator


        class Render(BaseOperator):
            template_fields = ("value",)

            def __init__(self, *, value, **kwargs):
                super().__init__(**kwargs)
                self.value = value

            def execute(self, context):
                return self.value


        with DAG("reve_test_readme_templates", schedule=None, start_date=datetime(2025, 1, 1)):
            for index, template in enumerate({templates!r}):
                Render(task_id=f"template_{{index}}", value=template)
        """
    )
    folder = use_dags_folder(tmp_path)
    (folder / "readme_templates.py").write_text(dag_file)
    dag = DagBag(dag_folder=str(folder)).dags["reve_test_readme_templates"]

    dag_run = dag.test(logical_date=None)

    states = {ti.task_id: ti.state for ti in dag_run.get_task_instances()}
    assert set(states.values()) == {"success"}, states
    for index, template in enumerate(templates):
        rendered = return_values(dag_run, f"template_{index}")[-1]
        assert "{{" not in rendered and "None" not in rendered, (template, rendered)


def test_the_example_dags_ship_inside_the_package_with_their_prompts() -> None:
    import airflow_provider_reve.example_dags as examples

    folder = Path(examples.__file__).parent
    assert folder.parent == Path(sys.modules["airflow_provider_reve"].__file__ or "").parent
    assert (folder / "prompts" / "content_pipeline.txt").read_text().strip()
    assert {path.name for path in folder.glob("example_reve_*.py")} == {
        "example_reve_content_pipeline.py",
        "example_reve_retry_policies.py",
        "example_reve_video_pipeline.py",
    }


def test_the_shipped_example_dags_load_from_a_dags_folder_that_links_to_them(tmp_path: Path) -> None:
    # What the README tells a user to do to see them in `airflow dags list`.
    from airflow.dag_processing.dagbag import DagBag

    import airflow_provider_reve.example_dags as examples

    dags_folder = tmp_path / "dags"
    dags_folder.mkdir()
    (dags_folder / "reve_examples").symlink_to(Path(examples.__file__).parent, target_is_directory=True)

    bag = DagBag(dag_folder=str(dags_folder))

    assert bag.import_errors == {}
    assert set(bag.dag_ids) == EXAMPLE_DAG_IDS


def test_the_distribution_names_the_documentation_url_airflow_shows_for_the_provider() -> None:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - 3.10
        pytest.importorskip("tomli")
        import tomli as tomllib

    urls = tomllib.loads((REPO / "pyproject.toml").read_text())["project"].get("urls", {})
    # Airflow's provider discovery takes the Project-URL named "Documentation" (any case).
    documentation = {name.lower(): url for name, url in urls.items()}.get("documentation", "")
    assert documentation.startswith("https://")


def test_the_docs_testing_page_says_dag_test_needs_a_migrated_database_and_its_own_home() -> None:
    section = (
        DOCS_PAGES["docs/testing.md"].split("## Your DAG under `dag.test()`", 1)[-1].split("\n## ", 1)[0]
    )
    assert "airflow db migrate" in section
    assert "AIRFLOW_HOME" in section
    assert "AIRFLOW__WORKERS__MIN_HEARTBEAT_INTERVAL=0" in section
