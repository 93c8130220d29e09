"""The fake's own model table, written from ``models.md`` (the public Image / Video Models pages).

Deliberately independent of the provider's ``client.catalog``: a test holds the two against each
other (``tests/unit/testing/test_fake_catalog_agreement.py``), which it could not do if one were
built from the other.

What the fake does with a request, field by field:

* A documented field a model does not take (``duration`` on an image model, ``test_time_scaling``
  on ``seedream-5``, ``resolution`` on ``reve-2.0`` or a Kling model, ``image_urls`` on a
  text-to-video id) is refused with ``INVALID_PARAMETER``. A field no page documents is ignored:
  what the real API does with it is not known.
* Where the pages give no default (a video's ``duration``, happyhorse's ``resolution``), a request
  without the field is charged the documented minimum: the shortest duration, the cheapest
  resolution. ``postprocessing`` on ``reve-2.0`` is charged the base price: it "raises the cost"
  by an amount nobody published.
* Limits the pages do not give are the fake's guesses, named here so they can be changed:
  :data:`MAX_NUM_IMAGES`, a video ``aspect_ratio`` of the form ``W:H``, and ``video_urls`` as the
  motion-control models' input video (the reference names no field for it).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from airflow_provider_reve.testing._fake.contract import ApiError

#: The fake's cap on ``num_images`` (the pages only say "default 1").
MAX_NUM_IMAGES = 4
IMAGE_ASPECT_RATIOS = frozenset({"1:1", "16:9", "3:2", "4:3", "3:4", "2:3", "9:16"})
OUTPUT_FORMATS = frozenset({"png", "jpeg", "webp"})
IMAGE_RESOLUTIONS = frozenset({"1K", "2K", "4K"})
_RATIO = re.compile(r"[1-9][0-9]{0,3}:[1-9][0-9]{0,3}")

#: Every field a page documents; anything else is ignored.
DOCUMENTED_FIELDS = frozenset(
    {
        "prompt",
        "image_urls",
        "aspect_ratio",
        "num_images",
        "output_format",
        "resolution",
        "test_time_scaling",
        "version",
        "postprocessing",
        "duration",
        "generate_audio",
        "video_urls",
    }
)

_IMAGE_FIELDS = frozenset({"prompt", "aspect_ratio", "num_images", "output_format"})
_VIDEO_FIELDS = frozenset({"prompt", "aspect_ratio", "duration"})

Pricer = Callable[["FakeModel", Mapping[str, Any]], int]


@dataclass(frozen=True)
class FakeModel:
    """One model id as the pages describe it."""

    model_id: str
    kind: str  # "image" | "video"
    scene: str  # "image", "text-to-video", "image-to-video" or "video-to-video"
    fields: frozenset[str]
    price: Pricer
    synchronous: bool = False
    prompt_required: bool = True
    aspect_ratios: frozenset[str] | None = None  # None: any "W:H"
    resolutions: tuple[str, ...] = ()  # cheapest first
    durations: tuple[int, int] | None = None  # inclusive range, seconds
    duration_choices: tuple[int, ...] = ()  # shortest first
    audio: bool = False

    @property
    def min_duration(self) -> int:
        if self.duration_choices:
            return self.duration_choices[0]
        return self.durations[0] if self.durations else 0


# ------------------------------------------------------------------------------ prices


def _count(params: Mapping[str, Any]) -> int:
    return int(params.get("num_images") or 1)


def _reve_price(model: FakeModel, params: Mapping[str, Any]) -> int:
    base = 20 if params.get("image_urls") else 12
    return base * int(params.get("test_time_scaling") or 1) * _count(params)


def _per_image(credits: int) -> Pricer:
    return lambda model, params: credits * _count(params)


def _nano_banana_pro_price(model: FakeModel, params: Mapping[str, Any]) -> int:
    return 70 * (2 if params.get("resolution") == "4K" else 1) * _count(params)


def _seconds(model: FakeModel, params: Mapping[str, Any]) -> float:
    duration = params.get("duration")
    return float(duration) if duration is not None else float(model.min_duration)


def _per_second(credits: int) -> Pricer:
    def price(model: FakeModel, params: Mapping[str, Any]) -> int:
        audio = 2 if params.get("generate_audio") is True else 1
        return math.ceil(credits * _seconds(model, params) * audio)

    return price


def _happyhorse_price(model: FakeModel, params: Mapping[str, Any]) -> int:
    per_second = 75 if params.get("resolution") == "1080p" else 40
    return math.ceil(per_second * _seconds(model, params))


def _grok_price(model: FakeModel, params: Mapping[str, Any]) -> int:
    return 35 if _seconds(model, params) == 10 else 25


def _flat(credits: int) -> Pricer:
    return lambda model, params: credits


# ------------------------------------------------------------------------------ the table


def _image(model_id: str, price: Pricer, *extra: str, edit: bool = True, **kw: Any) -> FakeModel:
    fields = _IMAGE_FIELDS | set(extra) | ({"image_urls"} if edit else set())
    kw.setdefault("aspect_ratios", IMAGE_ASPECT_RATIOS)
    return FakeModel(model_id, "image", "image", frozenset(fields), price, **kw)


def _video_pair(family: str, price: Pricer, *extra: str, **kw: Any) -> list[FakeModel]:
    return [
        FakeModel(
            f"{family}-text-to-video", "video", "text-to-video", _VIDEO_FIELDS | set(extra), price, **kw
        ),
        FakeModel(
            f"{family}-image-to-video",
            "video",
            "image-to-video",
            _VIDEO_FIELDS | set(extra) | {"image_urls"},
            price,
            **kw,
        ),
    ]


_RESOLUTIONS = ("resolution",)
_AUDIO = ("generate_audio",)
_TABLE: list[FakeModel] = [
    _image(
        "reve-2.0",
        _reve_price,
        "test_time_scaling",
        "version",
        "postprocessing",
        synchronous=True,
        aspect_ratios=IMAGE_ASPECT_RATIOS | {"auto"},
    ),
    _image("nano-banana", _per_image(20), *_RESOLUTIONS, edit=False, resolutions=("1K", "2K", "4K")),
    _image("nano-banana-pro", _nano_banana_pro_price, *_RESOLUTIONS, resolutions=("1K", "2K", "4K")),
    _image("seedream-5", _per_image(25), *_RESOLUTIONS, resolutions=("1K", "2K", "4K")),
    *_video_pair(
        "happyhorse-1.0",
        _happyhorse_price,
        *_RESOLUTIONS,
        *_AUDIO,
        durations=(4, 12),
        resolutions=("720p", "1080p"),
        audio=True,
    ),
    *_video_pair("kling3-pro", _per_second(48), *_AUDIO, durations=(3, 15), audio=True),
    *_video_pair("kling3-standard", _per_second(36), *_AUDIO, durations=(3, 15), audio=True),
    *_video_pair("kling26", _per_second(9), *_AUDIO, durations=(5, 10), audio=True),
    *_video_pair("grok-imagine", _grok_price, *_AUDIO, duration_choices=(6, 10)),
    *(
        FakeModel(
            f"kling26-motion-control-{quality}",
            "video",
            "video-to-video",
            _VIDEO_FIELDS | {"video_urls", "image_urls", "generate_audio"},
            _flat(credits),
            prompt_required=False,
            durations=(3, 30),
        )
        for quality, credits in (("720p", 200), ("1080p", 300))
    ),
]
MODELS: Mapping[str, FakeModel] = {model.model_id: model for model in _TABLE}


def price(model_id: str, params: Mapping[str, Any]) -> int:
    """Credits a *valid* request costs (call :func:`validate` first)."""
    model = MODELS[model_id]
    return model.price(model, params)


# ------------------------------------------------------------------------------ validation


def _refuse(detail: str) -> ApiError:
    return ApiError("INVALID_PARAMETER", detail)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _check_urls(name: str, value: Any, *, required: bool) -> None:
    if value is None or value == []:
        if required:
            raise _refuse(f"{name} is required for this model: a list of http(s) URLs.")
        return
    if not isinstance(value, list):
        raise _refuse(f"{name} must be a list of URL strings.")
    for url in value:
        parts = urlsplit(url) if isinstance(url, str) else None
        if (
            parts is None
            or parts.scheme not in ("http", "https")
            or not parts.hostname
            or any(ch.isspace() or ord(ch) < 32 for ch in url)
        ):
            raise _refuse(f"{name} must hold absolute http(s) URLs, got {url!r}.")


def validate(body: Any) -> tuple[FakeModel, dict[str, Any]]:
    """The model and the request's parameters (without ``model``), or :class:`ApiError`."""
    if not isinstance(body, dict):
        raise _refuse("The body must be a JSON object.")
    model_id = body.get("model")
    model = MODELS.get(model_id) if isinstance(model_id, str) else None
    if model is None:
        raise ApiError("INVALID_MODEL", f"Unknown or missing model: {model_id!r}.")
    params = {name: value for name, value in body.items() if name != "model"}

    prompt = params.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ApiError("INVALID_PROMPT", "prompt must be a string.")
    if model.prompt_required and not (prompt or "").strip():
        raise ApiError("INVALID_PROMPT")

    for name in sorted(DOCUMENTED_FIELDS & set(params) - model.fields):
        if params[name] is not None:
            raise _refuse(f"Model {model.model_id!r} does not take {name!r}.")
    _check_urls("image_urls", params.get("image_urls"), required=model.scene == "image-to-video")
    if model.scene == "video-to-video":
        _check_urls("video_urls", params.get("video_urls"), required=True)
    _check_aspect_ratio(model, params.get("aspect_ratio"))
    _check_choice(model, "resolution", params.get("resolution"), model.resolutions)
    if model.kind == "image":
        _check_image(model, params)
    else:
        _check_video(model, params)
    return model, params


def _check_choice(model: FakeModel, name: str, value: Any, allowed: Any) -> None:
    if value is not None and (not isinstance(value, str) or value not in allowed):
        raise _refuse(f"{name} {value!r} is not valid for {model.model_id!r}; use one of {sorted(allowed)}.")


def _check_aspect_ratio(model: FakeModel, value: Any) -> None:
    if value is None:
        return
    if model.aspect_ratios is not None:
        _check_choice(model, "aspect_ratio", value, model.aspect_ratios)
    elif not isinstance(value, str) or not _RATIO.fullmatch(value):
        raise _refuse(f"aspect_ratio must look like '16:9', got {value!r}.")


def _check_image(model: FakeModel, params: Mapping[str, Any]) -> None:
    _check_choice(model, "output_format", params.get("output_format"), OUTPUT_FORMATS)
    count = params.get("num_images")
    if count is not None and (not _is_int(count) or not 1 <= count <= MAX_NUM_IMAGES):
        raise _refuse(f"num_images must be a whole number from 1 to {MAX_NUM_IMAGES}, got {count!r}.")
    scaling = params.get("test_time_scaling")
    if scaling is not None and (not _is_int(scaling) or not 1 <= scaling <= 15):
        raise _refuse(f"test_time_scaling must be a whole number from 1 to 15, got {scaling!r}.")
    version = params.get("version")
    if version is not None and (not isinstance(version, str) or not version.strip()):
        raise _refuse(f"version must be a non-empty string, got {version!r}.")
    steps = params.get("postprocessing")
    if steps is not None and (
        not isinstance(steps, list)
        or not all(isinstance(step, dict) and isinstance(step.get("process"), str) for step in steps)
    ):
        raise _refuse('postprocessing must be a list of objects like {"process": "upscale"}.')


def _check_video(model: FakeModel, params: Mapping[str, Any]) -> None:
    duration = params.get("duration")
    if duration is not None:
        if not _is_number(duration):
            raise _refuse(f"duration must be a number of seconds, got {duration!r}.")
        if model.duration_choices and duration not in model.duration_choices:
            choices = " or ".join(str(choice) for choice in model.duration_choices)
            raise _refuse(f"{model.model_id!r} takes duration {choices}, got {duration!r}.")
        if model.durations and not model.durations[0] <= duration <= model.durations[1]:
            low, high = model.durations
            raise _refuse(f"{model.model_id!r} takes duration {low}-{high} s, got {duration!r}.")
    audio = params.get("generate_audio")
    if audio is not None:
        if not isinstance(audio, bool):
            raise _refuse(f"generate_audio must be true or false, got {audio!r}.")
        if audio and not model.audio:
            raise _refuse(f"{model.model_id!r} cannot generate audio.")
