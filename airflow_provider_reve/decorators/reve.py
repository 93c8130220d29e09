"""``@task.reve``: a TaskFlow function writes the request, ``ReveGenerateOperator`` runs it.

The function's return value is the request: a ``str`` is the prompt; a dict holds request fields
(``prompt``, ``image_urls``, ``aspect_ratio``, ``num_images``, ``output_format``, ``resolution``,
``duration``, ``generate_audio``), any other key goes to ``extra_params``, except the operator's
own arguments (``download_to``, ``timeout``, ...), which are refused: they are the task's options,
and sent as request fields they would be silently ignored as options. Everything after that is
the operator's own flow (validation before any paid call, re-attach, deferral, XCom shape).

A run of tries sends one request. The first try whose function returns a usable one keeps it
in ``task_state_store`` before anything is submitted (a try whose function raised keeps nothing),
and every later entry point of this run of tries reads it back instead of calling the function:

* a deferred task resumes in a new process (``execute_complete`` / ``execute_after_backoff``),
  where the fields the function returned are gone;
* a retry: called again, a function whose request is not byte-identical (a timestamp, a random
  seed) would no longer match the task an earlier try paid for, and would pay for a new one.

A clear starts a new run of tries (see ``mixins.reattach``): the function is called afresh.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import TYPE_CHECKING, Any, ClassVar

from airflow.providers.common.compat.sdk import (
    AirflowException,
    AirflowFailException,
    DecoratedOperator,
    TaskDecorator,
    context_merge,
    determine_kwargs,
    task_decorator_factory,
)
from airflow.sdk.bases.operator import TRIGGER_FAIL_REPR

from airflow_provider_reve.exceptions import ReveValidationError
from airflow_provider_reve.mixins.reattach import cleared_since, run_of_tries
from airflow_provider_reve.mixins.rendered import coerce_extra_params
from airflow_provider_reve.operators.reve import REQUEST_FIELDS, ReveGenerateOperator

if TYPE_CHECKING:
    from airflow.sdk import Context

__all__ = ["reve_task"]

# One entry per task instance (the store is scoped to dag, run, task and map index).
REQUEST_STATE_KEY = "reve_taskflow_request"
_KEPT_FIELDS = (*REQUEST_FIELDS, "extra_params")

# Keys a returned dict may not hold, and why: each says where the value belongs instead.
_REFUSED_KEYS = {
    "model": "the model is the task's own argument: @task.reve(model=...) or <function>.override(model=...)",
    "extra_params": "put extra request fields at the top level of the dict; unknown keys go to extra_params",
}


def _operator_arguments() -> frozenset[str]:
    """The operator's own arguments that are not request fields: taken from its signature, so an
    argument added later is refused too instead of reaching the paid API as a request field."""
    parameters = inspect.signature(ReveGenerateOperator.__init__).parameters.values()
    named = {p.name for p in parameters if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    return frozenset(named - {"self", *REQUEST_FIELDS, *_REFUSED_KEYS})


_OPERATOR_ARGUMENTS = _operator_arguments()


class _ReveDecoratedOperator(DecoratedOperator, ReveGenerateOperator):
    """Calls the TaskFlow function and sends what it returns as a :class:`ReveGenerateOperator`.

    :param python_callable: the function; it returns the prompt (``str``) or a dict of request
        fields.
    :param op_args: positional arguments for the function (templated).
    :param op_kwargs: keyword arguments for the function (templated).

    Every other argument is :class:`ReveGenerateOperator`'s, except ``prompt``. Request fields
    given here (``aspect_ratio="16:9"``) are defaults: the same key in the returned dict wins.
    """

    template_fields: Sequence[str] = (
        *DecoratedOperator.template_fields,
        *ReveGenerateOperator.template_fields,
    )
    template_fields_renderers: ClassVar[dict[str, str]] = {
        **DecoratedOperator.template_fields_renderers,
        **ReveGenerateOperator.template_fields_renderers,
    }
    custom_operator_name: str = "@task.reve"
    # The UI's "Rendered Template" then shows the request the function returned, not None.
    overwrite_rtif_after_execution: bool = True

    def __init__(
        self,
        *,
        python_callable: Callable[..., Any],
        op_args: Collection[Any] | None = None,
        op_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        if kwargs.get("prompt") is not None:
            raise TypeError("@task.reve takes the prompt from the function's return value; remove prompt=")
        super().__init__(python_callable=python_callable, op_args=op_args, op_kwargs=op_kwargs, **kwargs)

    # -- entry points ------------------------------------------------------------------------
    def execute(self, context: Context) -> Any:
        if not self._reuse_request(context):
            context_merge(context, self.op_kwargs)
            kwargs = determine_kwargs(self.python_callable, self.op_args, context)
            self._take_request(self.python_callable(*self.op_args, **kwargs))
            self._validated_params()  # refuse bad input (a non-JSON value, say) before keeping it
            self._keep_request(context)
        return super().execute(context)

    def resume_execution(self, next_method: str, next_kwargs: dict[str, Any] | None, context: Context) -> Any:
        # A new process: the template fields were rendered afresh, so the request fields hold the
        # decorator's values, not the function's. Put the function's back; never call it again.
        if next_method != TRIGGER_FAIL_REPR:
            self._restore_request(context)
        return super().resume_execution(next_method, next_kwargs, context)

    def render_request_for_estimate(self, context: Mapping[str, Any]) -> None:
        """Call the function and take its request as ``execute`` would, keeping nothing
        (``airflow reve estimate``: the price of what this task would send)."""
        merged = dict(context)
        context_merge(merged, self.op_kwargs)  # type: ignore[arg-type]
        kwargs = determine_kwargs(self.python_callable, self.op_args, merged)
        self._take_request(self.python_callable(*self.op_args, **kwargs))

    # -- the function's answer ---------------------------------------------------------------
    def _function_name(self) -> str:
        return getattr(self.python_callable, "__name__", repr(self.python_callable))

    def _refuse(self, reason: str) -> AirflowFailException:
        return AirflowFailException(
            f"@task.reve function {self._function_name()!r} {reason}; nothing was submitted."
        )

    def _take_request(self, returned: Any) -> None:
        if isinstance(returned, str):
            if not returned.strip():
                raise self._refuse("returned an empty prompt")
            self.prompt = returned
            return
        if not isinstance(returned, Mapping):
            raise self._refuse(
                f"must return the prompt (a str) or a dict of request fields, but returned "
                f"{type(returned).__name__}"
            )
        odd_keys = sorted(repr(key) for key in returned if not isinstance(key, str))
        if odd_keys:
            raise self._refuse(f"returned a dict with keys that are not strings: {', '.join(odd_keys)}")
        for key, why in _REFUSED_KEYS.items():
            if key in returned:
                raise self._refuse(f"returned a dict with {key!r} ({why})")
        options = sorted(key for key in returned if key in _OPERATOR_ARGUMENTS)
        if options:
            example = f"{options[0]}=..."
            raise self._refuse(
                f"returned a dict with the task's own argument(s) {', '.join(map(repr, options))}: they "
                f"are options of the task, not request fields; set them with @task.reve({example}) or "
                f"<function>.override({example})"
            )
        prompt = returned.get("prompt")
        if prompt is not None and not isinstance(prompt, str):
            raise self._refuse(f"returned a dict whose 'prompt' is {type(prompt).__name__}, not a str")
        for name in REQUEST_FIELDS:
            if name in returned:
                setattr(self, name, returned[name])
        extra = {key: value for key, value in returned.items() if key not in REQUEST_FIELDS}
        if extra:
            try:
                given = coerce_extra_params(self.extra_params) or {}
            except ReveValidationError as error:
                raise self._refuse(f"cannot be merged with the task's extra_params: {error}") from error
            if not isinstance(given, dict):
                raise self._refuse(f"cannot be merged with extra_params of type {type(given).__name__}")
            self.extra_params = {**given, **extra}

    # -- across a deferral and across retries ------------------------------------------------
    def _keep_request(self, context: Context) -> None:
        store = context.get("task_state_store")
        if store is None:  # before Airflow 3.3; the operator already warns that nothing is remembered
            return
        request = {name: getattr(self, name) for name in _KEPT_FIELDS}
        entry: dict[str, Any] = {
            "run": run_of_tries(context),
            "try": _try_number(context),
            "request": request,
        }
        try:
            store.set(REQUEST_STATE_KEY, {k: v for k, v in entry.items() if v is not None})
        except Exception as error:
            # Submitting anyway would leave a retry to call the function again, which may return
            # another request and pay for a second task.
            raise AirflowException(
                f"Could not keep the request in task_state_store ({type(error).__name__}); nothing "
                "was submitted. Airflow's retries apply."
            ) from error

    def _kept_request(self, context: Context) -> dict[str, Any] | None:
        """The request kept by this run of tries, or ``None`` (none kept, or before a clear)."""
        store = context.get("task_state_store")
        entry = store.get(REQUEST_STATE_KEY) if store is not None else None
        if not isinstance(entry, dict):
            return None
        request = entry.get("request")
        if not isinstance(request, dict):
            return None
        if cleared_since(entry, context):
            return None
        if entry.get("run") is not None and run_of_tries(context) is not None:
            return request
        # Kept before runs of tries were recorded (a deferral across an upgrade): this try's only.
        return request if entry.get("try") == _try_number(context) else None

    def _put_back(self, request: dict[str, Any]) -> None:
        for name in _KEPT_FIELDS:
            setattr(self, name, request.get(name))

    def _reuse_request(self, context: Context) -> bool:
        request = self._kept_request(context)
        if request is None:
            return False
        self._put_back(request)
        self.log.info(
            "Retry: sending the request @task.reve function %r returned in an earlier try of this run "
            "(kept in task_state_store), without calling it again, so a task already paid for is "
            "re-attached to. A clear calls the function afresh.",
            self._function_name(),
        )
        return True

    def _restore_request(self, context: Context) -> None:
        request = self._kept_request(context)
        if request is not None:
            self._put_back(request)
            return
        # Not even to finish a named task: the operator re-validates the request on the way out,
        # and the unset fields would read as an invalid request. Retryable: a retry re-attaches.
        raise AirflowException(
            f"Resumed after a deferral, but the request @task.reve function {self._function_name()!r} "
            "returned in this run of tries was not found in task_state_store, and it is not called "
            "again within one. Nothing was submitted now; a retry calls the function again (and "
            "re-attaches to a task it already submitted when it returns the same request)."
        )


def _try_number(context: Context) -> int | None:
    return getattr(context.get("ti"), "try_number", None)


def reve_task(
    python_callable: Callable[..., Any] | None = None,
    multiple_outputs: bool = False,
    **kwargs: Any,
) -> TaskDecorator:
    """``@task.reve``: the function returns the request, a
    :class:`~airflow_provider_reve.operators.reve.ReveGenerateOperator` sends it.

    Keyword arguments are the operator's (``model``, ``deferrable``, ``download_to``, ...).
    ``multiple_outputs`` is off whatever the function's return annotation says: that annotation
    describes the request, while the XCom is the Reve task's dict.

    :param python_callable: the function to wrap.
    :param multiple_outputs: ignored (always off): the XCom is one ``ReveTask`` dict.
    :param kwargs: the operator's arguments.
    :return: the decorator (or the decorated task, when called with the function).

    .. seealso::
        The how-to guide: :ref:`howto/decorator:reve`.
    """
    return task_decorator_factory(
        python_callable=python_callable,
        multiple_outputs=multiple_outputs,
        decorated_operator_class=_ReveDecoratedOperator,
        **kwargs,
    )
