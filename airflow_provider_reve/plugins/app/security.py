"""Who is asking and which DAGs they may read -- Airflow's own rules, nothing of ours.

A plugin's FastAPI app inherits no authentication from the API server, so every route of the
gallery depends on :func:`current_user`: Airflow's ``get_user`` (the JWT from the
``Authorization: Bearer`` header, else from the UI's ``_token`` cookie; expired, revoked and
forged tokens are refused by Airflow's validator). What a user sees is then limited to the DAGs
the configured auth manager lets them read, with the same checks Airflow's own XCom and task
instance endpoints make (``GET`` on the DAG, for its ``XCOM`` and ``TASK_INSTANCE`` entities).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

if TYPE_CHECKING:
    from airflow.api_fastapi.auth.managers.models.base_user import BaseUser

__all__ = [
    "Forbidden",
    "NotAuthenticated",
    "User",
    "current_user",
    "login_url",
    "readable_dag_ids",
    "require_dag",
]

_bearer = HTTPBearer(auto_error=False)


class NotAuthenticated(Exception):
    """No usable Airflow token: the app answers 401 with a link to Airflow's login page."""


class Forbidden(Exception):
    """The user may not read this DAG's task instances and XComs: 403."""


async def current_user(
    request: Request, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]
) -> BaseUser:
    """The user behind the request's Airflow JWT, or :class:`NotAuthenticated`."""
    from airflow.api_fastapi.core_api.security import get_user

    try:
        return await get_user(request, None, credentials)
    except HTTPException as error:
        # Airflow answers 401 (no token, expired) or 403 (invalid, revoked): for a page
        # both mean "log in again", never "you are logged in but may not see this".
        raise NotAuthenticated(str(error.detail)) from None


#: A route's user, as a dependency: ``def page(user: User)``. 401 (a page) when there is none.
User = Annotated[Any, Depends(current_user)]


def _auth_manager() -> Any:
    from airflow.api_fastapi.app import get_auth_manager

    return get_auth_manager()


def _may_read_entities(user: BaseUser, details: Any) -> bool:
    from airflow.api_fastapi.auth.managers.models.resource_details import DagAccessEntity

    manager = _auth_manager()
    return all(
        manager.is_authorized_dag(method="GET", access_entity=entity, details=details, user=user)
        for entity in (DagAccessEntity.TASK_INSTANCE, DagAccessEntity.XCOM)
    )


def readable_dag_ids(user: BaseUser) -> set[str]:
    """The DAGs whose task instances and XComs ``user`` may read (possibly none).

    The same two steps as Airflow's own "all DAGs" (``~``) task instance and XCom lists: the
    entity check without a DAG id, then the auth manager's readable DAG ids.
    """
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails

    if not _may_read_entities(user, DagDetails(id=None)):
        return set()
    return set(_auth_manager().get_authorized_dag_ids(user=user, method="GET"))


def require_dag(user: BaseUser, dag_id: str) -> None:
    """Raise :class:`Forbidden` unless ``user`` may read this DAG's task instances and XComs."""
    from airflow.api_fastapi.auth.managers.models.resource_details import DagDetails
    from airflow.models.dag import DagModel

    details = DagDetails(id=dag_id, team_name=DagModel.get_team_name(dag_id))
    if not _may_read_entities(user, details):
        raise Forbidden(dag_id)


def login_url(request: Request) -> str:
    """Airflow's login page, coming back to this page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    try:
        return str(_auth_manager().get_url_login(next_url=target))
    except Exception:  # an auth manager without a login page: the UI's root will offer one
        return "/"
