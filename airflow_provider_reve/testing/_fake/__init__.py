"""The fake Reve API's parts; the public face is :mod:`airflow_provider_reve.testing.fake_server`.

* :mod:`.contract` -- what the API reference fixes: statuses, machine codes, the envelopes.
* :mod:`.models` -- the fake's own model table (written from ``models.md``, not from the
  provider's catalog, so that the two can be held against each other).
* :mod:`.faults` -- :class:`~.faults.Fault`, the injectable failures.
* :mod:`.state` -- keys, balances, tasks, the ledger, settings; thread-safe.
* :mod:`.app` -- the aiohttp application: the API, the result files, the error pages.
* :mod:`.control` -- the ``/_fake/...`` control API (loopback clients only).
* :mod:`.tls` -- a throw-away certificate authority and server certificate.
* :mod:`.cli` -- ``python -m airflow_provider_reve.testing.fake_server``.
"""
