"""What we know for certain about Reve's models: allowed values and credit prices.

Source: ``models.md`` (the public Image Models / Video Models pages). The catalog is data that
changes, so unknown models and unknown fields pass through untouched; only values that are
documented for a known model are checked, before any paid call. The one exception is an id that
is a near miss of a known one (:func:`looks_like_a_typo`: ``seedream5``, ``Seedream-5``,
``nano-bananna``): it is refused naming the closest known ids, since sending it could only fail
at the API or, worse, run a model nobody meant. An id that differs in its digits or by more
than a letter (``seedream-6``, ``nano-banana-2``, ``kling3-pro-text-to-video-hd``) may be a new
model and passes through.

Some input is refused for every model, known or not, because no API could make use of it and
sending it could only cost money or leak something: a request that is not JSON, parameter names
that are not strings, an empty or whitespace prompt (for models that take one, and for models the
catalog does not know), source media URLs that are not absolute ``http(s)`` URLs (a ``file://``
URL or a local path hands a private path to a third party; a URL with ``user:password@`` hands
over the password), and a request body larger than :data:`MAX_REQUEST_BYTES`.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_reve import defaults
from airflow_provider_reve.exceptions import ReveValidationError

__all__ = [
    "DEFAULT_MODEL",
    "IMAGE_ASPECT_RATIOS",
    "IMAGE_OUTPUT_FORMATS",
    "IMAGE_RESOLUTIONS",
    "MAX_REQUEST_BYTES",
    "MODELS",
    "SOURCE_URL_FIELDS",
    "ModelSpec",
    "closest_models",
    "estimate_credits",
    "get_spec",
    "is_synchronous",
    "looks_like_a_typo",
    "validate_request",
]

IMAGE_ASPECT_RATIOS = frozenset({"1:1", "16:9", "3:2", "4:3", "3:4", "2:3", "9:16"})
IMAGE_OUTPUT_FORMATS = frozenset({"png", "jpeg", "webp"})
IMAGE_RESOLUTIONS = frozenset({"1K", "2K", "4K"})
#: The largest request body the provider sends (JSON, as sent). No documented field needs more:
#: a prompt is a few thousand characters, a signed image URL one or two KiB. A larger body is a
#: mistake (a file's content templated into the prompt, say) and is refused before it is paid for.
MAX_REQUEST_BYTES = 256 * 1024
#: Request fields that hold URLs of source media for the API to fetch (``video_urls``: the
#: motion-control models' input video, a field the reference does not name).
SOURCE_URL_FIELDS = ("image_urls", "video_urls")


@dataclass(frozen=True)
class ModelSpec:
    """One model id and what the public docs say about it.

    :param model_id: the id requests name (``reve-2.0``, ``seedance-1.0-pro``...).
    :param kind: ``"image"`` or ``"video"``: what the model makes.
    :param needs_prompt: a request without a ``prompt`` is refused.
    :param synchronous: the API answers with the result at once instead of a task id to poll.
    :param aspect_ratios: the ``aspect_ratio`` values it accepts; empty: not checked.
    :param resolutions: the ``resolution`` values it accepts; empty: not checked.
    :param durations: the ``(shortest, longest)`` video ``duration`` in seconds; ``None``: any.
    :param duration_choices: the only ``duration`` values it accepts; empty: any in ``durations``.
    :param supports_audio: it takes the ``audio`` option.
    :param supports_edit: it takes reference images to edit.
    """

    model_id: str
    kind: str  # "image" | "video"
    needs_prompt: bool = True
    synchronous: bool = False
    aspect_ratios: frozenset[str] = field(default_factory=frozenset)
    resolutions: frozenset[str] = field(default_factory=frozenset)
    durations: tuple[float, float] | None = None  # inclusive range in seconds
    duration_choices: frozenset[int] = field(default_factory=frozenset)
    supports_audio: bool = False
    supports_edit: bool = True


def _image(model_id: str, **kw: Any) -> ModelSpec:
    kw.setdefault("aspect_ratios", IMAGE_ASPECT_RATIOS)
    return ModelSpec(model_id, "image", **kw)


def _video(model_id: str, **kw: Any) -> ModelSpec:
    return ModelSpec(model_id, "video", **kw)


_SPECS = [
    _image("reve-2.0", synchronous=True, aspect_ratios=IMAGE_ASPECT_RATIOS | {"auto"}),
    _image("nano-banana", resolutions=IMAGE_RESOLUTIONS, supports_edit=False),
    _image("nano-banana-pro", resolutions=IMAGE_RESOLUTIONS),
    _image("seedream-5", resolutions=IMAGE_RESOLUTIONS),
]
for _scene in ("text-to-video", "image-to-video"):
    _SPECS += [
        _video(
            f"happyhorse-1.0-{_scene}",
            durations=(4, 12),
            resolutions=frozenset({"720p", "1080p"}),
            supports_audio=True,
        ),
        _video(f"kling3-pro-{_scene}", durations=(3, 15), supports_audio=True),
        _video(f"kling3-standard-{_scene}", durations=(3, 15), supports_audio=True),
        _video(f"kling26-{_scene}", durations=(5, 10), supports_audio=True),
        _video(f"grok-imagine-{_scene}", duration_choices=frozenset({6, 10})),
    ]
_SPECS += [
    _video("kling26-motion-control-720p", needs_prompt=False, durations=(3, 30)),
    _video("kling26-motion-control-1080p", needs_prompt=False, durations=(3, 30)),
]
MODELS: Mapping[str, ModelSpec] = {spec.model_id: spec for spec in _SPECS}

DEFAULT_MODEL = defaults.DEFAULT_MODEL


def get_spec(model: str) -> ModelSpec | None:
    """What the catalog knows of ``model``.

    :param model: the model id.
    :return: its :class:`ModelSpec`, or ``None`` for a model the catalog does not know.
    """
    return MODELS.get(model)


def is_synchronous(model: str) -> bool:
    """Whether ``model`` answers with its result at once (no task to poll).

    :param model: the model id.
    :return: ``True`` for a synchronous model; ``False`` for any other, an unknown one included.
    """
    spec = MODELS.get(model)
    return bool(spec and spec.synchronous)


def validate_request(model: Any, params: Mapping[str, Any]) -> None:
    """Raise :class:`.ReveValidationError` for input that is certain to be refused (or billed wrongly).

    :param model: the model id (anything else is refused as a model id).
    :param params: the request's fields.
    :raises ReveValidationError: naming the field to fix.
    """
    if not isinstance(model, str) or not model.strip():
        raise ReveValidationError(f"model must be a non-empty string, got {_shown(model)}")
    if model != model.strip() or not model.isprintable():
        raise ReveValidationError(
            f"model {_shown(model)} has surrounding spaces or control characters; no model id does"
        )
    names = [name for name in params if not isinstance(name, str) or not name.strip()]
    if names:
        raise ReveValidationError(f"parameter names must be non-empty strings, got {_shown(names[0])}")
    _check_json_serialisable(params)
    spec = MODELS.get(model)
    if spec is None and looks_like_a_typo(model):
        raise ReveValidationError(
            f"unknown model id {model!r}; did you mean {_or_list(closest_models(model))}? Known "
            f"ids: {', '.join(sorted(MODELS))}"
        )

    prompt = params.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ReveValidationError(f"prompt must be a string, got {type(prompt).__name__}")
    if spec is not None and spec.needs_prompt and (prompt is None or not prompt.strip()):
        raise ReveValidationError(f"model {model!r} needs a prompt, and the prompt is empty")
    if spec is None and prompt is not None and not prompt.strip():
        # Every documented model but video-to-video needs a prompt; leave it out (None) for a
        # model that takes none rather than sending an empty one.
        raise ReveValidationError(f"the prompt is empty or only whitespace (model {model!r})")

    image_urls = params.get("image_urls")
    for name in SOURCE_URL_FIELDS:
        _check_source_urls(name, params.get(name))
    if spec is not None and not spec.supports_edit and image_urls:
        raise ReveValidationError(f"model {model!r} is text-to-image only; it takes no image_urls")

    if spec is not None:
        if spec.kind == "image":
            _validate_image(spec, params)
        else:
            _validate_video(spec, params)
    # Last: a value refused above says more than "too large" does.
    _check_size(params)


def _validate_image(spec: ModelSpec, params: Mapping[str, Any]) -> None:
    _one_of(spec, params, "aspect_ratio", spec.aspect_ratios)
    _one_of(spec, params, "output_format", IMAGE_OUTPUT_FORMATS)
    if spec.resolutions:
        _one_of(spec, params, "resolution", spec.resolutions)
    num_images = params.get("num_images")
    if num_images is not None and (not _is_int(num_images) or num_images < 1):
        raise ReveValidationError(f"num_images must be a whole number >= 1, got {_shown(num_images)}")
    if spec.model_id == "reve-2.0":
        tts = params.get("test_time_scaling")
        if tts is not None and (not _is_int(tts) or not 1 <= tts <= 15):
            raise ReveValidationError(
                f"test_time_scaling must be a whole number from 1 to 15, got {_shown(tts)}"
            )


def _validate_video(spec: ModelSpec, params: Mapping[str, Any]) -> None:
    if spec.resolutions:
        _one_of(spec, params, "resolution", spec.resolutions)
    ratio = params.get("aspect_ratio")
    if ratio is not None and (not isinstance(ratio, str) or not ratio.strip()):
        # The allowed ratios of video models are not published; that it is a string is certain.
        raise ReveValidationError(f"aspect_ratio must be a string such as '16:9', got {_shown(ratio)}")
    duration = params.get("duration")
    if duration is not None:
        if (
            isinstance(duration, bool)
            or not isinstance(duration, (int, float))
            or not math.isfinite(duration)
        ):
            raise ReveValidationError(f"duration must be a number of seconds, got {_shown(duration)}")
        if spec.duration_choices and duration not in spec.duration_choices:
            allowed = " or ".join(str(d) for d in sorted(spec.duration_choices))
            raise ReveValidationError(f"model {spec.model_id!r} takes duration {allowed} s, got {duration!r}")
        if spec.durations and not spec.durations[0] <= duration <= spec.durations[1]:
            low, high = spec.durations
            raise ReveValidationError(
                f"model {spec.model_id!r} takes duration {low:g}-{high:g} s, got {duration!r}"
            )
    audio = params.get("generate_audio")
    if audio is not None:
        if not isinstance(audio, bool):
            raise ReveValidationError(f"generate_audio must be true or false, got {_shown(audio)}")
        if audio and not spec.supports_audio:
            raise ReveValidationError(f"model {spec.model_id!r} cannot generate audio")


def _one_of(spec: ModelSpec, params: Mapping[str, Any], name: str, allowed: frozenset[str]) -> None:
    value = params.get(name)
    if value is not None and value not in allowed:
        raise ReveValidationError(
            f"{name} {_shown(value)} is not valid for model {spec.model_id!r}; use one of {sorted(allowed)}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_json_serialisable(params: Mapping[str, Any]) -> None:
    for name, value in params.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError, RecursionError) as error:
            # RecursionError: a structure nested thousands deep (or one that contains itself).
            why = "it is nested too deeply" if isinstance(error, RecursionError) else str(error)
            raise ReveValidationError(f"parameter {name!r} is not JSON-serialisable: {why}") from None


def _check_size(params: Mapping[str, Any]) -> None:
    # Measured as the hook sends it (json.dumps' defaults: non-ASCII escaped).
    size = len(json.dumps(dict(params), allow_nan=False))
    if size <= MAX_REQUEST_BYTES:
        return
    largest = max(params, key=lambda name: len(json.dumps(params[name])))
    raise ReveValidationError(
        f"the request is {size // 1024} KiB of JSON, more than the {MAX_REQUEST_BYTES // 1024} KiB "
        f"the provider sends; the largest field is {largest!r} "
        f"({len(json.dumps(params[largest])) // 1024} KiB). Shorten it."
    )


def _check_source_urls(name: str, urls: Any) -> None:
    """``urls`` must be a list of absolute http(s) URLs: the API fetches them from the internet."""
    if urls is None:
        return
    if isinstance(urls, str) or not isinstance(urls, (list, tuple)):
        raise ReveValidationError(f"{name} must be a list of URL strings, got {type(urls).__name__}")
    for index, url in enumerate(urls):
        where = f"{name}[{index}]"
        if not isinstance(url, str) or not url.strip():
            raise ReveValidationError(f"{where} must be a non-empty URL string, got {_shown(url)}")
        try:
            parts = urlsplit(url)
            hostname, has_userinfo = parts.hostname, "@" in parts.netloc
            parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
        except ValueError:
            raise ReveValidationError(f"{where} is not a valid URL: {_shown(url)}") from None
        if parts.scheme.lower() not in ("http", "https") or not hostname:
            hint = (
                "a data: URL is not a documented input"
                if parts.scheme.lower() == "data"
                else "upload a local file somewhere the API can fetch it (e.g. a signed https URL)"
            )
            raise ReveValidationError(
                f"{where} must be an absolute http:// or https:// URL, got {_shown(url)}: {hint}"
            )
        if has_userinfo:
            # Never quoted: the password would go into the task log.
            raise ReveValidationError(
                f"{where} holds a user name or password (user:password@host), which the API would "
                "receive and keep; use a signed URL instead"
            )
        if not url.isprintable() or any(c.isspace() for c in url):
            raise ReveValidationError(
                f"{where} contains spaces or control characters; percent-encode them: {_shown(url)}"
            )


def _spelling(model_id: str) -> str:
    """The id without case and separators: ``Seedream_5`` and ``seedream5`` are ``seedream5``."""
    return re.sub(r"[^0-9a-z]", "", model_id.lower())


def closest_models(model: str, limit: int = 3) -> list[str]:
    """The known model ids nearest to ``model`` in spelling, best first.

    :param model: the model id that is not in the catalog.
    :param limit: how many ids to return at most.
    :return: up to ``limit`` known model ids.
    """
    by_spelling = {_spelling(known): known for known in MODELS}
    matches = difflib.get_close_matches(_spelling(model), list(by_spelling), n=limit, cutoff=0.6)
    return [by_spelling[match] for match in matches]


def looks_like_a_typo(model: str) -> bool:
    """Whether an unknown ``model`` is a known id misspelt rather than a model we do not know yet.

    A typo: the same id but for case and separators, or one slip of a letter (dropped, doubled,
    swapped or wrong) with the same digits. A new model almost always differs in its digits
    (``seedream-6``) or by a word (``-hd``): that passes through, as the catalog promises.

    :param model: a model id the catalog does not know.
    :return: ``True`` when it is a misspelt known id.
    """
    spelling = _spelling(model)
    for known in MODELS:
        known_spelling = _spelling(known)
        if spelling == known_spelling:
            return True
        same_digits = re.findall(r"\d+", spelling) == re.findall(r"\d+", known_spelling)
        if (
            same_digits
            and abs(len(spelling) - len(known_spelling)) <= 1
            and difflib.SequenceMatcher(None, spelling, known_spelling).ratio() >= 0.85
        ):
            return True
    return False


def _or_list(names: list[str]) -> str:
    quoted = [repr(name) for name in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " or " + quoted[-1]


def _shown(value: Any) -> str:
    """``repr(value)``, cut short: a hostile value must not make the message (and log) huge."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def estimate_credits(model: str, **params: Any) -> int | None:
    """Credits a request will cost, from the published prices; ``None`` when that is not known.

    ``None`` for an unknown model, a video without ``duration`` (or a happyhorse video without
    ``resolution``), and Reve post-processing, whose price is not published.

    :param model: the model id.
    :param params: the request's fields (``num_images``, ``duration``, ``resolution``...).
    :return: the credits, or ``None`` when the price is not known.
    """
    spec = MODELS.get(model)
    if spec is None:
        return None
    if spec.kind == "image":
        return _image_credits(spec, params)
    return _video_credits(spec, params)


def _image_credits(spec: ModelSpec, params: Mapping[str, Any]) -> int | None:
    count = params.get("num_images") or 1
    if not _is_int(count):
        return None
    edit = bool(params.get("image_urls"))
    if spec.model_id == "reve-2.0":
        if params.get("postprocessing"):
            return None
        scaling = params.get("test_time_scaling") or 1
        return (20 if edit else 12) * scaling * count
    if spec.model_id == "nano-banana-pro":
        return 70 * (2 if params.get("resolution") == "4K" else 1) * count
    per_image = {"nano-banana": 20, "seedream-5": 25}[spec.model_id]
    return per_image * count


def _video_credits(spec: ModelSpec, params: Mapping[str, Any]) -> int | None:
    model = spec.model_id
    if model.startswith("kling26-motion-control"):
        return 300 if model.endswith("1080p") else 200
    duration = params.get("duration")
    if duration is None:
        return None
    audio_factor = 2 if params.get("generate_audio") else 1
    if model.startswith("grok-imagine"):
        return 35 if duration == 10 else 25
    if model.startswith("happyhorse"):
        per_second = {"720p": 40, "1080p": 75}.get(params.get("resolution") or "")
        if per_second is None:
            return None
        return math.ceil(per_second * duration)
    per_second = 48 if model.startswith("kling3-pro") else 36 if model.startswith("kling3-standard") else 9
    return math.ceil(per_second * duration * audio_factor)
