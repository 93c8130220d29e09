"""A :class:`LocalAirflow` where people log in, and where access is per DAG.

The shipped ``LocalAirflow`` runs with ``[core] simple_auth_manager_all_admins``: every visitor is
admin, so it cannot show what a user who may *not* read a DAG sees. Here the simple auth manager
has named users with passwords (``simple_auth_manager_users`` + a passwords file), and
``[core] multi_team`` is on so that access is decided per DAG:

* Airflow's simple auth manager has no per-DAG permissions. What it does have is teams: a DAG
  belongs to the team of its DAG bundle, and a non-admin user reads only the DAGs of their own
  teams (and team-less ones). So each folder of DAGs is its own bundle owned by one team, and a
  user of the other team is the user "without access to the DAG".
* In multi-team mode a triggerer serves either team-less triggers or one team's, so the triggerer
  is started for the team whose DAGs defer (``triggerer_team``).
* The teams must exist in the metadata DB before the api-server starts (it refuses users of
  unknown teams), so ``airflow teams sync`` runs right after the migration.

REST calls of the base class (unpause, trigger) are made as the admin user, with a token from
``POST /auth/token``, the same endpoint the login page uses.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from airflow_provider_reve.testing.cluster import LocalAirflow


@dataclass(frozen=True)
class Login:
    """A user of the simple auth manager; ``repr`` never shows the password."""

    username: str
    role: str  # viewer, user, op, admin
    team: str | None = None
    password: str = field(default_factory=lambda: secrets.token_urlsafe(16), repr=False)

    @property
    def config_entry(self) -> str:
        """``name:role[:team]``, as ``[core] simple_auth_manager_users`` spells a user."""
        return f"{self.username}:{self.role}" + (f":{self.team}" if self.team else "")


_LOCAL_BUNDLE = "airflow.dag_processing.bundles.local.LocalDagBundle"


class AirflowWithLogins(LocalAirflow):
    """``LocalAirflow`` with named users and one DAG bundle per team.

    :param bundles: ``{bundle name: (folder, owning team)}``; the first one's folder is also
        ``[core] dags_folder``.
    :param logins: the users; one must have the ``admin`` role (used for REST calls).
    :param triggerer_team: the team whose deferred tasks the triggerer runs.
    """

    def __init__(
        self,
        *,
        bundles: Mapping[str, tuple[Path, str]],
        logins: list[Login],
        triggerer_team: str,
        home: Path,
        env: Mapping[str, str],
    ) -> None:
        admins = [login for login in logins if login.role == "admin"]
        if not admins:
            raise ValueError("one login needs the admin role: the REST helpers act as that user")
        self.admin = admins[0]
        self.logins = {login.username: login for login in logins}
        self.triggerer_team = triggerer_team
        home.mkdir(parents=True, exist_ok=True)
        passwords = home / "simple_auth_manager_passwords.json"
        # 0600 from the first byte: the file holds every password in clear.
        fd = os.open(passwords, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump({login.username: login.password for login in logins}, fh)
        bundle_config = [
            {"name": name, "classpath": _LOCAL_BUNDLE, "kwargs": {"path": str(folder)}, "team_name": team}
            for name, (folder, team) in bundles.items()
        ]
        first_folder = next(iter(bundles.values()))[0]
        super().__init__(
            first_folder,
            home=home,
            env={
                **env,
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_ALL_ADMINS": "False",
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": ",".join(u.config_entry for u in logins),
                "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
                "AIRFLOW__CORE__MULTI_TEAM": "True",
                # A team's membership is cached for 30 s by default; nothing here changes it.
                "AIRFLOW__DAG_PROCESSOR__DAG_BUNDLE_CONFIG_LIST": json.dumps(bundle_config),
            },
        )

    # The base class's hooks are overridden rather than copied: start-up, health checks and
    # stopping stay exactly the shipped ones.

    def _migrate(self, deadline: float) -> None:
        super()._migrate(deadline)
        self.cli("teams", "sync")

    def _airflow_cmd(self, *args: str) -> list[str]:  # type: ignore[override]
        if args[:1] == ("triggerer",):
            args = (*args, "--team-name", self.triggerer_team)
        return LocalAirflow._airflow_cmd(*args)

    def token(self, username: str) -> str:
        """A JWT for ``username``, from the same endpoint the login form posts to."""
        login = self.logins[username]
        resp = self._http.post(
            f"{self.base_url}/auth/token",
            json={"username": login.username, "password": login.password},
            timeout=30,
        )
        resp.raise_for_status()
        return str(resp.json()["access_token"])

    def _auth_headers(self) -> dict[str, str]:
        if self._token is None:
            self._token = self.token(self.admin.username)
        return {"Authorization": f"Bearer {self._token}"}

    def get_as(self, username: str, path: str, **params: Any) -> Any:
        """``GET`` a public REST API path (relative to ``/api/v2``) as ``username``; the response."""
        return self._http.get(
            f"{self.base_url}/api/v2/{path.lstrip('/')}",
            params=params or None,
            headers={"Authorization": f"Bearer {self.token(username)}"},
            timeout=60,
        )
