"""Finding pieces of an API key in text, in any letter case: shared by the key-never-leaves tests."""

from __future__ import annotations

import re
from collections.abc import Mapping

from airflow_provider_reve.client.redact import MIN_RUN


def key_pieces(key: str, size: int = MIN_RUN) -> set[str]:
    """Every ``size``-character piece of ``key``, lower-cased."""
    return {key[i : i + size].lower() for i in range(len(key) - size + 1)}


def leaks(text: str, key: str, size: int = MIN_RUN) -> list[str]:
    """Every ``size``-character piece of ``key`` found in ``text``, in any letter case."""
    folded = text.lower()
    return sorted(piece for piece in key_pieces(key, size) if piece in folded)


def leak_report(texts: Mapping[str, str], key: str, size: int = MIN_RUN) -> dict[str, list[str]]:
    """Where pieces of ``key`` appear: each place with the text around every hit, key hidden.

    The report never shows the key itself (a failure message is a log too): each piece is
    replaced by ``<KEY>``, so what is left is the surrounding text that says where it came from.
    """
    pieces = key_pieces(key, size)
    hide = re.compile("|".join(re.escape(p) for p in sorted(pieces)), re.IGNORECASE)
    report: dict[str, list[str]] = {}
    for place, text in texts.items():
        folded = text.lower()
        starts = sorted({folded.find(p) for p in pieces} - {-1})
        if starts:
            around = [text[max(0, i - 120) : i + len(key) + 120] for i in starts[:3]]
            report[place] = [hide.sub("<KEY>", snippet) for snippet in around]
    return report
