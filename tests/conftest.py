"""Test-wide setup: an isolated AIRFLOW_HOME so no test reads or writes the user's Airflow."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Must happen before anything imports airflow: its configuration is read at import time.
_HOME = Path(tempfile.mkdtemp(prefix="reve-tests-airflow-home-"))
os.environ["AIRFLOW_HOME"] = str(_HOME)
os.environ["AIRFLOW__CORE__LOAD_EXAMPLES"] = "False"
os.environ["AIRFLOW__CORE__DAGS_FOLDER"] = str(Path(__file__).resolve().parent.parent / "example_dags")
os.environ["AIRFLOW__CORE__UNIT_TEST_MODE"] = "True"
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_HOME / 'airflow.db'}")
