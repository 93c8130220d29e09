"""Credit budgets reserved before paying, counted in a ledger database shared by the deployment.

Budgets are off unless ``[reve] ledger_conn_id`` names an Airflow connection (sqlite or postgres).
Read them from Python with :class:`.Ledger` (``Ledger.configured()``); define them with
``airflow reve budget set`` or :meth:`.Ledger.set_budget`. ``approval`` asks a person before an
expensive generation; ``estimate`` is ``airflow reve estimate``, a run's cost before it runs.
The ledger (SQLAlchemy) loads on first use, never when a DAG file imports the operator.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from airflow_provider_reve._lazy import lazy_exports

if TYPE_CHECKING:
    from airflow_provider_reve.budgets.approval import ApprovalHost, ReveApprovalMixin
    from airflow_provider_reve.budgets.ledger import BudgetStatus, Ledger, Reservation
    from airflow_provider_reve.budgets.mixin import ON_BUDGET_EXHAUSTED_CHOICES, BudgetHost, ReveBudgetMixin
    from airflow_provider_reve.budgets.model import Budget, BudgetExhaustedError, BudgetRefusal, Scope
    from airflow_provider_reve.budgets.windows import WINDOWS, Window, window_at

__all__ = [
    "ON_BUDGET_EXHAUSTED_CHOICES",
    "WINDOWS",
    "ApprovalHost",
    "Budget",
    "BudgetExhaustedError",
    "BudgetHost",
    "BudgetRefusal",
    "BudgetStatus",
    "Ledger",
    "Reservation",
    "ReveApprovalMixin",
    "ReveBudgetMixin",
    "Scope",
    "Window",
    "window_at",
]

# Loaded on first use: the ledger needs SQLAlchemy, the mixin Airflow; neither is needed to
# read a budget's window arithmetic, nor by the racing processes of the tests. And a DAG file
# imports the operator mixins (``budgets.mixin``, ``budgets.approval``) at every parse, which
# runs this module first: it imports nothing until a name is read.
_HOME = {
    "Budget": "model",
    "BudgetExhaustedError": "model",
    "BudgetRefusal": "model",
    "Scope": "model",
    "WINDOWS": "windows",
    "Window": "windows",
    "window_at": "windows",
    "BudgetStatus": "ledger",
    "Ledger": "ledger",
    "Reservation": "ledger",
    "ON_BUDGET_EXHAUSTED_CHOICES": "mixin",
    "BudgetHost": "mixin",
    "ReveBudgetMixin": "mixin",
    "ApprovalHost": "approval",
    "ReveApprovalMixin": "approval",
}

__getattr__, __dir__ = lazy_exports(globals(), _HOME)
