"""The generate request an operator sends: its fields, read from the (rendered) operator, checked.

Everything here runs before any paid call, so every refusal says "nothing was submitted" and is
permanent (``AirflowFailException``): bad input never spends an Airflow retry. The catalog
(validation, prices) is imported where a task runs, never when a DAG file imports the operator.
"""

from __future__ import annotations

from typing import Any, Protocol

from airflow.providers.common.compat.sdk import AirflowFailException

__all__ = ["REQUEST_FIELDS", "RequestHost", "ReveRequestMixin"]

# The documented request fields, as operator arguments (and template fields).
REQUEST_FIELDS = (
    "prompt",
    "image_urls",
    "aspect_ratio",
    "num_images",
    "output_format",
    "resolution",
    "duration",
    "generate_audio",
)

# Fields the operator sets itself: in extra_params they would clash with its own arguments.
_NOT_IN_EXTRA_PARAMS = frozenset({"model", "prompt"})


class RequestHost(Protocol):
    """What :class:`ReveRequestMixin` needs: the request fields as attributes (``REQUEST_FIELDS``,
    read with ``getattr``), ``extra_params``, ``model``, ``max_credits`` and a ``log``."""

    @property
    def log(self) -> Any: ...

    model: str
    output_format: str | None
    extra_params: dict[str, Any] | None
    max_credits: int | None

    def _validated_params(self) -> dict[str, Any]: ...


class ReveRequestMixin:
    """Builds and checks the request from the operator's fields before anything is paid for."""

    def budget_request_params(self: RequestHost) -> dict[str, Any]:
        return self._validated_params()

    def _validated_params(self: RequestHost) -> dict[str, Any]:
        from airflow_provider_reve.client.catalog import validate_request
        from airflow_provider_reve.exceptions import ReveValidationError
        from airflow_provider_reve.mixins.rendered import coerce_extra_params, coerce_rendered

        try:
            fields = coerce_rendered({name: getattr(self, name) for name in REQUEST_FIELDS})
            extra = coerce_extra_params(self.extra_params) or {}
            if not isinstance(extra, dict):
                raise ReveValidationError(f"extra_params must be a dict, got {type(extra).__name__}")
            reserved = sorted(name for name in extra if name in _NOT_IN_EXTRA_PARAMS)
            if reserved:
                raise ReveValidationError(
                    f"extra_params may not set {reserved}: pass them as the operator's own arguments"
                )
            clash = sorted(name for name in extra if fields.get(name) is not None)
            if clash:
                raise ReveValidationError(f"{clash} given both as arguments and in extra_params")
            # Arguments left at None must not erase the same field given in extra_params.
            given = {name: value for name, value in fields.items() if value is not None}
            params = {k: v for k, v in {**coerce_rendered(extra), **given}.items() if v is not None}
            validate_request(self.model, params)
        except ReveValidationError as error:
            raise AirflowFailException(f"Invalid Reve request (nothing was submitted): {error}") from error
        return params

    def _output_format(self: RequestHost) -> str | None:
        """The requested ``output_format`` (names a file the server sends untyped), for a task that
        is paid: a request that no longer validates (a DAG file changed since) must not fail it
        as "nothing was submitted"."""
        try:
            return self._validated_params().get("output_format")
        except AirflowFailException:
            return self.output_format if isinstance(self.output_format, str) else None

    def _sent_request(self: RequestHost) -> dict[str, Any] | None:
        """The request fields sent, for a task that is paid; ``None`` when they no longer validate
        (a DAG file changed since): that must not fail it as "nothing was submitted"."""
        try:
            return self._validated_params()
        except AirflowFailException:
            return None

    def _check_budget(self: RequestHost, params: dict[str, Any]) -> None:
        """``max_credits``: refuse a request that costs more, or whose cost cannot be known."""
        from airflow_provider_reve.client.catalog import estimate_credits

        if self.max_credits is None:
            return
        estimate = estimate_credits(self.model, **params)
        if estimate is None:
            raise AirflowFailException(
                f"max_credits={self.max_credits} is set, but the cost of this {self.model!r} request "
                "cannot be estimated (unknown model, or a video without duration/resolution); "
                "nothing was submitted."
            )
        if estimate > self.max_credits:
            raise AirflowFailException(
                f"This request would cost about {estimate} credits, more than max_credits="
                f"{self.max_credits}; nothing was submitted."
            )
        self.log.info("Estimated cost %d credits (max_credits=%d)", estimate, self.max_credits)
