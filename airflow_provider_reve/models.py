"""``ReveTask``: the one description of a Reve generation task.

The hook returns it, the trigger's event carries ``to_dict()`` of it, and XCom holds
``to_dict()`` of it. There is no second, slightly different dict anywhere.

``to_dict()`` carries the id twice: ``reve_task_id`` (the name to use) and ``task_id`` (deprecated:
it reads like Airflow's own task id; kept for one release). ``prompt``, ``request`` (the request
fields sent, prompt included, model excluded) and ``metadata`` (the caller's own JSON) are set by
the operator that knows them: the API's answers never carry them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

IN_PROGRESS: Final = "IN_PROGRESS"
SUCCESS: Final = "SUCCESS"
FAILED: Final = "FAILED"
TASK_STATUSES: Final = frozenset({IN_PROGRESS, SUCCESS, FAILED})
TERMINAL_STATUSES: Final = frozenset({SUCCESS, FAILED})


@dataclass(frozen=True)
class ReveTask:
    """A Reve generation task as the API last described it.

    :param task_id: the Reve task id.
    :param status: ``"IN_PROGRESS"``, ``"SUCCESS"`` or ``"FAILED"``.
    :param result_urls: the result files' URLs (``SUCCESS`` only); short-lived CDN links.
    :param consumed_credits: what the task cost, when the API said so.
    :param error_code: the API's machine code of a ``FAILED`` task.
    :param error_message: the API's message of a ``FAILED`` task (scrubbed of the key).
    :param model: the model id (the status API omits it; the operator remembers it).
    :param prompt: the prompt sent (the API's answers omit it; the operator remembers it).
    :param request: the request fields sent, prompt included, model excluded.
    :param metadata: the caller's own JSON dict (the operators' ``metadata``), carried as is.
    """

    task_id: str
    status: str
    result_urls: tuple[str, ...] = field(default=())
    consumed_credits: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    model: str | None = None
    prompt: str | None = None
    request: dict[str, Any] | None = None
    metadata: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.task_id, str) or not self.task_id:
            raise ValueError(f"ReveTask.task_id must be a non-empty string, got {self.task_id!r}")
        if self.status not in TASK_STATUSES:
            raise ValueError(f"ReveTask.status must be one of {sorted(TASK_STATUSES)}, got {self.status!r}")
        # Accept any sequence (a list from JSON) but store a tuple so the task stays immutable.
        object.__setattr__(self, "result_urls", tuple(self.result_urls))

    @property
    def is_finished(self) -> bool:
        """Whether the task has ended, ``SUCCESS`` or ``FAILED``."""
        return self.status in TERMINAL_STATUSES

    @property
    def succeeded(self) -> bool:
        """Whether the task ended ``SUCCESS``."""
        return self.status == SUCCESS

    @property
    def failed(self) -> bool:
        """Whether the task ended ``FAILED`` (the API refunds it)."""
        return self.status == FAILED

    def with_model(self, model: str | None) -> ReveTask:
        """Return a copy that remembers ``model`` (the status endpoint does not say it).

        :param model: the model id; ``None`` keeps the task as it is.
        :return: this task, or a copy with ``model`` set.
        """
        if model is None or self.model == model:
            return self
        return ReveTask(**{**self._fields(), "model": model})

    def with_caller_data(
        self, *, request: dict[str, Any] | None = None, metadata: dict[str, Any] | None = None
    ) -> ReveTask:
        """Return a copy that remembers the request sent and the caller's ``metadata``.

        :param request: the request fields sent (its ``prompt`` becomes :attr:`prompt`), or ``None``
            to keep what the task has.
        :param metadata: the caller's JSON dict, or ``None`` to keep what the task has.
        :return: the copy.
        """
        fields = self._fields()
        if request is not None:
            fields["request"] = dict(request)
            prompt = request.get("prompt")
            fields["prompt"] = prompt if isinstance(prompt, str) else self.prompt
        if metadata is not None:
            fields["metadata"] = dict(metadata)
        return ReveTask(**fields)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict: the shape of XCom values and trigger event payloads.

        :return: ``reve_task_id``, ``task_id`` (the same id; deprecated), ``status``,
            ``result_urls`` (a list), ``consumed_credits``, ``error_code``, ``error_message``,
            ``model``, ``prompt``, ``request`` and ``metadata``.
        """
        data = {"reve_task_id": self.task_id, **self._fields()}
        data["result_urls"] = list(self.result_urls)
        return data

    @classmethod
    def from_dict(cls, data: Any) -> ReveTask:
        """Inverse of :meth:`to_dict`; raises ``ValueError`` for anything that is not one.

        :param data: a dict as :meth:`to_dict` makes it (from XCom or a trigger event).
        :return: the task.
        """
        if not isinstance(data, dict):
            raise ValueError(f"expected a ReveTask dict, got {type(data).__name__}")
        if "reve_task_id" in data:
            data = dict(data)
            reve_task_id = data.pop("reve_task_id")
            if data.setdefault("task_id", reve_task_id) != reve_task_id:
                raise ValueError("a ReveTask dict's 'reve_task_id' and 'task_id' differ")
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unexpected ReveTask fields: {sorted(unknown)}")
        if "task_id" not in data or "status" not in data:
            raise ValueError("a ReveTask dict needs at least 'task_id' and 'status'")
        urls = data.get("result_urls") or []
        if not isinstance(urls, (list, tuple)) or not all(isinstance(u, str) for u in urls):
            raise ValueError("ReveTask.result_urls must be a list of strings")
        for name in ("error_code", "error_message", "model", "prompt"):
            if data.get(name) is not None and not isinstance(data[name], str):
                raise ValueError(f"ReveTask.{name} must be a string or null")
        for name in ("request", "metadata"):
            if data.get(name) is not None and not isinstance(data[name], dict):
                raise ValueError(f"ReveTask.{name} must be a dict or null")
        credits = data.get("consumed_credits")
        if credits is not None and (isinstance(credits, bool) or not isinstance(credits, int)):
            raise ValueError("ReveTask.consumed_credits must be an integer or null")
        return cls(**{**data, "result_urls": tuple(urls)})

    def _fields(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "status": self.status,
            "result_urls": self.result_urls,
            "consumed_credits": self.consumed_credits,
            "error_code": self.error_code,
            "error_message": self.error_message,
            "model": self.model,
            "prompt": self.prompt,
            "request": self.request,
            "metadata": self.metadata,
        }
