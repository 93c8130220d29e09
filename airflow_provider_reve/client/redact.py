"""The one scrubber: removes the API key from any text a server sent us.

A server (or a proxy in front of it) may echo the ``Authorization`` header back anywhere: in an
error code, a detail, a failed task's message, a result URL, an HTML page. Exact matching is not
enough: the echo may be upper-cased, or cut off by a snippet. So a :class:`Redactor` replaces

* every ``Bearer <token>``, whatever the token is, and
* every run of :data:`MIN_RUN` or more consecutive characters of a secret, in any letter case

with ``***``. It runs on each string from the server *before* that string becomes part of an
exception, a :class:`~airflow_provider_reve.models.ReveTask`, a trigger event or a log line;
:mod:`airflow_provider_reve.client.envelope` is where that happens.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from urllib.parse import unquote

__all__ = [
    "MASK",
    "MIN_RUN",
    "Redactor",
]

MASK = "***"
#: Shortest piece of a secret that is redacted wherever it appears. Shorter pieces are too likely
#: to occur by chance (``"sk-"``, a word), and leak too little of a key to matter.
MIN_RUN = 8

_BEARER = re.compile(r"\bbearer\s+\S+", re.IGNORECASE)


def _fold(text: str) -> str:
    """Lower-case ``text`` character by character, so positions stay aligned with the original.

    (``"İ".lower()`` is two characters long; such characters are kept as they are.)
    """
    return "".join(c if len(c.lower()) != 1 else c.lower() for c in text)


class Redactor:
    """Callable that returns its argument with every trace of ``secrets`` replaced by ``***``.

    :param secrets: the secrets to hide (``None`` and empty ones are ignored).
    """

    def __init__(self, secrets: Iterable[str | None]) -> None:
        # Every MIN_RUN-long piece of every secret (the whole secret if it is shorter). A run of
        # MIN_RUN or more characters of a secret is exactly a chain of such pieces.
        self._pieces: dict[int, set[str]] = {}
        for secret in secrets:
            if not secret:
                continue
            folded = _fold(secret)
            size = min(MIN_RUN, len(folded))
            pieces = self._pieces.setdefault(size, set())
            pieces.update(folded[i : i + size] for i in range(len(folded) - size + 1))

    def __call__(self, text: str) -> str:
        if "%" in text:
            # A URL may carry the key percent-encoded ("%73%6B%2D..."): judge the decoded form,
            # and when it reveals a secret, return it decoded and scrubbed.
            decoded = unquote(text)
            if decoded != text and self._scrub(decoded) != decoded:
                return self._scrub(decoded)
        return self._scrub(text)

    def _scrub(self, text: str) -> str:
        text = _BEARER.sub(f"Bearer {MASK}", text)
        if not self._pieces:
            return text
        folded = _fold(text)
        hidden = [False] * len(text)
        for size, pieces in self._pieces.items():
            for start in range(len(folded) - size + 1):
                if folded[start : start + size] in pieces:
                    hidden[start : start + size] = [True] * size
        if not any(hidden):
            return text
        out: list[str] = []
        for i, char in enumerate(text):
            if not hidden[i]:
                out.append(char)
            elif i == 0 or not hidden[i - 1]:
                out.append(MASK)
        return "".join(out)

    def optional(self, text: str | None) -> str | None:
        return None if text is None else self(text)

    def reveals_secret(self, text: str) -> bool:
        """Whether ``text`` holds a ``Bearer`` token or a piece of a secret.

        :param text: any text.
        :return: ``True`` when it would be changed by redaction.
        """
        return self(text) != text
