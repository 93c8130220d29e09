"""A local destination spelled as a URL is held to the rules of a plain path.

``"data/reve"`` is refused (each process would resolve it against its own working directory, and
the try that defers and the one that resumes may differ). ``"file://data/reve"`` and
``"local://data/reve"``, in any case, are the same relative path and are refused the same way,
before anything is paid for; three slashes (``file:///data/reve``) name an absolute folder.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from airflow.providers.common.compat.sdk import AirflowFailException

from airflow_provider_reve.exceptions import ReveValidationError
from airflow_provider_reve.operators.reve import ReveGenerateOperator
from airflow_provider_reve.results.storage import resolve_destination
from airflow_provider_reve.testing import FakeReveServer

RELATIVE_URLS = ["file://data/reve", "local://data/reve", "FILE://data/reve", "Local://data/reve", "file://"]


@pytest.mark.parametrize("spelling", RELATIVE_URLS)
def test_a_relative_destination_spelled_as_a_url_is_refused_like_a_relative_path(spelling: str) -> None:
    with pytest.raises(ReveValidationError, match="must be an absolute path"):
        resolve_destination(spelling)


@pytest.mark.parametrize("scheme", ["file", "FILE", "local", "Local"])
def test_an_absolute_local_url_in_any_case_names_that_folder(tmp_path: Path, scheme: str) -> None:
    assert resolve_destination(f"{scheme}://{tmp_path}/reve").local == tmp_path / "reve"
    assert resolve_destination(f"{scheme}://localhost{tmp_path}/reve").local == tmp_path / "reve"


@pytest.mark.parametrize("spelling", RELATIVE_URLS)
def test_the_generate_operator_refuses_a_relative_url_before_paying(
    fake_reve_server: FakeReveServer, reve_connection_env: str, spelling: str
) -> None:
    operator = ReveGenerateOperator(task_id="t", model="reve-2.0", prompt="a fox", download_to=spelling)

    with pytest.raises(AirflowFailException, match="must be an absolute path"):
        operator.execute({})

    assert fake_reve_server.submissions == 0


@pytest.mark.parametrize("spelling", ["/tmp/reve\x00/out", "file:///tmp/reve\x00/out", "~/reve\x00"])
def test_a_destination_with_a_nul_character_is_refused_clearly_before_paying(
    fake_reve_server: FakeReveServer, reve_connection_env: str, spelling: str
) -> None:
    operator = ReveGenerateOperator(task_id="t", model="reve-2.0", prompt="a fox", download_to=spelling)

    with pytest.raises(AirflowFailException, match="NUL character"):
        operator.execute({})

    assert fake_reve_server.submissions == 0
