"""Test your Reve DAGs offline: a fake Reve API that runs on loopback.

:class:`FakeReveServer` speaks the Reve API as its reference describes it (``POST /api/v1/generate``,
``GET /api/v1/status``, the envelope, the error codes, validation and prices from the public model
pages, credits and refunds) and serves real PNG, JPEG, WebP and MP4 bytes for its result URLs, over
HTTP or HTTPS. It can inject the failures a network, a proxy and an API produce (:class:`Fault`)
and counts what it received, so a test can assert "submitted exactly once"::

    from airflow_provider_reve.testing import DEFAULT_API_KEY, FakeReveServer, Fault

    with FakeReveServer(async_seconds=0.2) as server:
        # point the ``reve_default`` connection at server.url, key DEFAULT_API_KEY, then run your task
        server.add_fault(kind="drop_after", endpoint="generate")  # the answer to a paid call is lost
        ...
        assert server.submissions == 1

With pytest, the fixtures ``fake_reve_server``, ``session_fake_reve_server`` and
``reve_connection_env`` are available as soon as this package is installed (see
:mod:`airflow_provider_reve.testing.pytest_plugin`). For real Airflow processes, start it from
the command line::

    python -m airflow_provider_reve.testing.fake_server --port 8765 --async-seconds 1

and steer it over HTTP (``/_fake/...``, see :mod:`airflow_provider_reve.testing.fake_server`).

The names are imported lazily so that importing this package (the pytest plugin does, in every
test run) stays cheap.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from airflow_provider_reve.testing.fake_server import DEFAULT_API_KEY, FakeReveServer, Fault

__all__ = ["DEFAULT_API_KEY", "FakeReveServer", "Fault"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from airflow_provider_reve.testing import fake_server

        return getattr(fake_server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
