"""Apache Airflow provider for the Reve generation API.

The public names (hook, operators, sensor, trigger, ``ReveTask``, the exceptions, ``RetryPolicy``,
``estimate_credits``, ``validate_request``) are re-exported here and load on first use (PEP 562):
``import airflow_provider_reve`` stays free at DAG-parse time. ``__version__`` is the one version
source; the build backend reads it from this file.

Rooms: ``client/`` speaks the Reve API, ``results/`` turns a finished task into stored files and
lineage, ``mixins/`` is the operators' glue; ``hooks``, ``operators``, ``sensors``, ``triggers``,
``decorators``, ``plugins`` and ``testing`` are where Airflow meets them.

The private root modules of 0.1 (``airflow_provider_reve._retry``, ``._catalog``, ...) moved into
the rooms. Importing an old path still works for this release and raises a ``DeprecationWarning``
naming the new one; no file is left at the old path (``_MovedModuleFinder`` answers for it).
"""

from __future__ import annotations

import importlib
import importlib.machinery
import sys
import types
import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from airflow_provider_reve._lazy import lazy_exports

__version__ = "0.1.0"

if TYPE_CHECKING:
    from airflow_provider_reve.client.catalog import estimate_credits, validate_request
    from airflow_provider_reve.client.retry import RetryPolicy
    from airflow_provider_reve.exceptions import (
        ReveAmbiguousSubmissionError,
        ReveAPIError,
        ReveAuthenticationError,
        ReveBadRequestError,
        ReveConfigurationError,
        ReveConnectionError,
        ReveContentPolicyError,
        ReveDownloadError,
        ReveDownloadTooLargeError,
        ReveError,
        ReveInsufficientCreditsError,
        ReveMalformedResponseError,
        ReveNotFoundError,
        ReveRateLimitError,
        ReveServerError,
        ReveTaskFailedError,
        ReveUnsafeURLError,
        ReveValidationError,
        ReveWaitTimeoutError,
    )
    from airflow_provider_reve.hooks.reve import ReveAsyncHook, ReveHook
    from airflow_provider_reve.models import ReveTask
    from airflow_provider_reve.operators.download import ReveDownloadResultsOperator
    from airflow_provider_reve.operators.reve import ReveGenerateOperator
    from airflow_provider_reve.sensors.reve import ReveTaskSensor
    from airflow_provider_reve.triggers.reve import ReveTaskTrigger

_EXCEPTIONS = (
    "ReveAmbiguousSubmissionError",
    "ReveAPIError",
    "ReveAuthenticationError",
    "ReveBadRequestError",
    "ReveConfigurationError",
    "ReveConnectionError",
    "ReveContentPolicyError",
    "ReveDownloadError",
    "ReveDownloadTooLargeError",
    "ReveError",
    "ReveInsufficientCreditsError",
    "ReveMalformedResponseError",
    "ReveNotFoundError",
    "ReveRateLimitError",
    "ReveServerError",
    "ReveTaskFailedError",
    "ReveUnsafeURLError",
    "ReveValidationError",
    "ReveWaitTimeoutError",
)
_HOME: dict[str, str] = {
    **dict.fromkeys(_EXCEPTIONS, "exceptions"),
    "RetryPolicy": "client.retry",
    "estimate_credits": "client.catalog",
    "validate_request": "client.catalog",
    "ReveHook": "hooks.reve",
    "ReveAsyncHook": "hooks.reve",
    "ReveTask": "models",
    "ReveDownloadResultsOperator": "operators.download",
    "ReveGenerateOperator": "operators.reve",
    "ReveTaskSensor": "sensors.reve",
    "ReveTaskTrigger": "triggers.reve",
}

__all__ = [
    "RetryPolicy",
    "ReveAPIError",
    "ReveAmbiguousSubmissionError",
    "ReveAsyncHook",
    "ReveAuthenticationError",
    "ReveBadRequestError",
    "ReveConfigurationError",
    "ReveConnectionError",
    "ReveContentPolicyError",
    "ReveDownloadError",
    "ReveDownloadResultsOperator",
    "ReveDownloadTooLargeError",
    "ReveError",
    "ReveGenerateOperator",
    "ReveHook",
    "ReveInsufficientCreditsError",
    "ReveMalformedResponseError",
    "ReveNotFoundError",
    "ReveRateLimitError",
    "ReveServerError",
    "ReveTask",
    "ReveTaskFailedError",
    "ReveTaskSensor",
    "ReveTaskTrigger",
    "ReveUnsafeURLError",
    "ReveValidationError",
    "ReveWaitTimeoutError",
    "__version__",
    "estimate_credits",
    "validate_request",
]


__getattr__, __dir__ = lazy_exports(globals(), _HOME)


# -- the old private paths -----------------------------------------------------------------------
#: Old module -> (new module, the path to tell users). The README of 0.1 documented three of them
#: (``_retry``, ``_catalog``, ``_deadline``); the others answer too, so that nothing breaks.
MOVED_MODULES: dict[str, tuple[str, str]] = {
    "_catalog": ("client.catalog", "airflow_provider_reve.client"),
    "_connection": ("client.settings", "airflow_provider_reve.client.settings"),
    "_envelope": ("client.envelope", "airflow_provider_reve.client.envelope"),
    "_polling": ("client.polling", "airflow_provider_reve.client.polling"),
    "_ratelimit": ("client.ratelimit", "airflow_provider_reve.client.ratelimit"),
    "_redact": ("client.redact", "airflow_provider_reve.client.redact"),
    "_retry": ("client.retry", "airflow_provider_reve.client"),
    "_transport": ("client.transport", "airflow_provider_reve.client.transport"),
    "_download": ("results.download", "airflow_provider_reve.results.download"),
    "_storage": ("results.storage", "airflow_provider_reve.results.storage"),
    "_lineage": ("results.lineage", "airflow_provider_reve.results.lineage"),
    "_lineage_facets": ("results.lineage_facets", "airflow_provider_reve.results.lineage_facets"),
    "_finish": ("mixins.finish", "airflow_provider_reve.mixins.finish"),
    "_outcomes": ("mixins.outcomes", "airflow_provider_reve.mixins.outcomes"),
    "_reattach": ("mixins.reattach", "airflow_provider_reve.mixins.reattach"),
    "_deadline": ("mixins.deadline", "airflow_provider_reve.mixins.deadline"),
    "_rendered": ("mixins.rendered", "airflow_provider_reve.mixins.rendered"),
    "_defaults": ("defaults", "airflow_provider_reve.defaults"),
}


class _MovedModuleFinder:
    """Answers ``import airflow_provider_reve._retry`` with a module that forwards to the new one.

    The forwarding module is a fresh module object (the new module keeps its own ``__spec__``);
    every attribute read goes to the new module, so monkeypatching the old name is not supported.
    A plain class (a finder and loader by protocol): ``importlib.abc`` costs a DAG parse 30 ms.
    """

    def find_spec(
        self, fullname: str, path: Sequence[str] | None, target: types.ModuleType | None = None
    ) -> importlib.machinery.ModuleSpec | None:
        package, _, old = fullname.rpartition(".")
        if package != __name__ or old not in MOVED_MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, self)  # type: ignore[arg-type]  # a Loader by protocol

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> types.ModuleType | None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        old = module.__name__.rpartition(".")[2]
        new, told = MOVED_MODULES[old]
        warnings.warn(
            f"{module.__name__} is deprecated and will be removed; import from {told} instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        target = importlib.import_module(f"{__name__}.{new}")

        def forward(name: str) -> Any:
            return getattr(target, name)

        module.__dict__["__getattr__"] = forward  # PEP 562: every read goes to the new module
        module.__dict__["__all__"] = list(getattr(target, "__all__", ()))
        module.__doc__ = f"Moved to {told}."


if not any(isinstance(finder, _MovedModuleFinder) for finder in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())
