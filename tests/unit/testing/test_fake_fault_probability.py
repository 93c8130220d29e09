"""The fake's probabilistic fault rules, which ``make stress`` uses for its 5% of 503s."""

from __future__ import annotations

import pytest
import requests

from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer, Fault

AUTH = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}


def test_a_rule_with_probability_hits_some_requests_and_spares_the_rest_without_using_up_times():
    with FakeReveServer() as server:
        server.add_fault(
            kind="error", code="SERVICE_UNAVAILABLE", endpoint="status", times=None, probability=0.3
        )
        server.add_fault(kind="error", code="RATE_LIMITED", endpoint="status", times=1, probability=0.5)
        with requests.Session() as http:
            codes = [
                http.get(
                    f"{server.url}/api/v1/status", params={"task_id": "x"}, headers=AUTH, timeout=10
                ).json()["message"]
                for _ in range(300)
            ]

    unavailable = codes.count("SERVICE_UNAVAILABLE")
    assert 30 <= unavailable <= 150  # ~90 expected; the bounds fail only on a broken draw
    # The second rule fired once (times=1), however many requests it spared before that; every
    # request no rule hit got the real answer for an unknown task.
    assert codes.count("RATE_LIMITED") == 1
    assert codes.count("TASK_NOT_FOUND") == len(codes) - unavailable - 1
    assert server.faults == [
        Fault(kind="error", code="SERVICE_UNAVAILABLE", endpoint="status", times=None, probability=0.3)
    ]


@pytest.mark.parametrize("probability", [0, -0.1, 1.5, "0.5", True])
def test_a_probability_outside_zero_to_one_is_refused(probability):
    with pytest.raises(ValueError, match="probability"):
        Fault(kind="error", code="SERVICE_UNAVAILABLE", probability=probability)
