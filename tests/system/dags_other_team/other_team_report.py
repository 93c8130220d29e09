"""A DAG of another team: what the outsider of the browser tests may read.

It proves the outsider is a working viewer who reads *some* DAGs, so that seeing none of the
Reve gallery's pictures comes from per-DAG access, not from being locked out of everything.
It is parsed, never run.
"""

from __future__ import annotations

from datetime import datetime

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG

with DAG(dag_id="other_team_report", schedule=None, start_date=datetime(2026, 1, 1), tags=["other-team"]):
    EmptyOperator(task_id="noop")
