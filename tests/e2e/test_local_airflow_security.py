"""A LocalAirflow is no open door: its own secrets, and nothing listening beyond loopback.

It used to sign every token with a secret published in this repository and let the scheduler
and triggerer log servers listen on every interface: anyone on the network could mint an admin
token and read task logs. These tests attack the session's running deployment.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import jwt
import requests

from airflow_provider_reve.testing.cluster import LocalAirflow

OLD_JWT_SECRET = "airflow-provider-reve-local-airflow-jwt-secret-not-for-production"
OLD_API_SECRET_KEY = "airflow-provider-reve-local-airflow-api-secret-not-for-production"
DAG_ID = "smoke_dag"  # touches a worker and the triggerer, so every kind of process has run
TCP_LISTEN = "0A"


def _listening_sockets() -> dict[int, tuple[str, int]]:
    """Inode -> (address, port) of every listening TCP socket, from ``/proc/net/tcp{,6}``."""
    found: dict[int, tuple[str, int]] = {}
    for name, width in (("tcp", 8), ("tcp6", 32)):
        lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], int(fields[9])
            if state != TCP_LISTEN:
                continue
            address_hex, port_hex = local.split(":")
            assert len(address_hex) == width
            found[inode] = (_address(address_hex), int(port_hex, 16))
    return found


def _address(address_hex: str) -> str:
    """The kernel prints addresses as 32-bit words in host (little-endian) byte order."""
    words = [bytes.fromhex(address_hex[i : i + 8])[::-1] for i in range(0, len(address_hex), 8)]
    raw = b"".join(words)
    if len(raw) == 4:
        return ".".join(str(b) for b in raw)
    import ipaddress

    return str(ipaddress.IPv6Address(raw))


def _socket_inodes(pid: int) -> set[int]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except (FileNotFoundError, PermissionError):
        return inodes  # gone meanwhile
    for fd in fds:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


def test_every_server_of_the_cluster_listens_on_loopback_only(local_airflow: LocalAirflow) -> None:
    af = local_airflow
    af.wait_for_dag(DAG_ID, timeout=60)
    run_id = af.trigger(DAG_ID)
    af.wait_for_ti_state(DAG_ID, run_id, "wait", state="deferred", timeout=60)
    assert af.wait_for_run(DAG_ID, run_id, timeout=90) == "success"

    listening = _listening_sockets()
    ours = {
        (pid, listening[inode])
        for pid in af.process_ids()
        for inode in _socket_inodes(pid)
        if inode in listening
    }

    assert ("127.0.0.1", af.port) in {address for _, address in ours}, "the api-server was not found at all"
    exposed = {(pid, address) for pid, address in ours if address[0] not in ("127.0.0.1", "::1")}
    assert exposed == set(), f"listening beyond loopback (pid, (address, port)): {exposed}"


def test_a_token_signed_with_the_old_published_secret_is_rejected(local_airflow: LocalAirflow) -> None:
    af = local_airflow
    issued = requests.get(f"{af.base_url}/auth/token", timeout=30).json()["access_token"]
    header = jwt.get_unverified_header(issued)
    claims = jwt.decode(issued, options={"verify_signature": False})

    def call_with(secret: str) -> int:
        token = jwt.encode(claims, secret, algorithm=header["alg"], headers={"kid": header["kid"]})
        resp = requests.get(
            f"{af.base_url}/api/v2/dags", headers={"Authorization": f"Bearer {token}"}, timeout=30
        )
        return resp.status_code

    assert call_with(OLD_JWT_SECRET) in (401, 403)
    # The same recipe with this deployment's own secret works: the refusal is the secret's doing.
    assert call_with(af.secrets.jwt_secret) == 200


def test_secrets_are_per_cluster_owner_only_and_never_the_published_ones(
    local_airflow: LocalAirflow, tmp_path: Path
) -> None:
    af = local_airflow
    keys = af.secrets
    values = {
        "fernet_key": keys.fernet_key,
        "api_secret_key": keys.api_secret_key,
        "jwt_secret": keys.jwt_secret,
    }

    # What the processes run with is what is kept in the home.
    assert af.env["AIRFLOW__API_AUTH__JWT_SECRET"] == keys.jwt_secret
    assert af.env["AIRFLOW__API__SECRET_KEY"] == keys.api_secret_key
    assert af.env["AIRFLOW__CORE__FERNET_KEY"] == keys.fernet_key
    assert keys.jwt_secret != OLD_JWT_SECRET and keys.api_secret_key != OLD_API_SECRET_KEY
    assert len(set(values.values())) == 3 and all(len(v) >= 32 for v in values.values())

    assert keys.directory == af.home / "secrets"
    assert stat.S_IMODE(keys.directory.stat().st_mode) == 0o700
    for name, value in values.items():
        path = keys.directory / name
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, name
        assert path.read_text() == value
    assert not any(value in repr(keys) for value in values.values())

    # Another cluster (not started: its keys exist from construction) shares none of them.
    dags = tmp_path / "dags"
    dags.mkdir()
    other = LocalAirflow(dags, home=tmp_path / "other-home")
    assert {other.secrets.fernet_key, other.secrets.api_secret_key, other.secrets.jwt_secret}.isdisjoint(
        values.values()
    )
    # The same home again keeps its keys: what its database encrypted stays readable.
    again = LocalAirflow(dags, home=tmp_path / "other-home")
    assert again.secrets == other.secrets

    # Any file of the deployment that holds the JWT secret is readable by its owner only.
    for path in af.home.rglob("*"):
        if path.is_file() and keys.jwt_secret.encode() in path.read_bytes():
            assert stat.S_IMODE(path.stat().st_mode) & 0o077 == 0, path
