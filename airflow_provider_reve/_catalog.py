"""What we know for certain about Reve's models: allowed values and credit prices.

Source: ``models.md`` (the public Image Models / Video Models pages). The catalog is data that
changes, so unknown models and unknown fields pass through untouched; only values that are
documented for a known model are checked, before any paid call.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from airflow_provider_reve.exceptions import ReveValidationError

IMAGE_ASPECT_RATIOS = frozenset({"1:1", "16:9", "3:2", "4:3", "3:4", "2:3", "9:16"})
IMAGE_OUTPUT_FORMATS = frozenset({"png", "jpeg", "webp"})
IMAGE_RESOLUTIONS = frozenset({"1K", "2K", "4K"})


@dataclass(frozen=True)
class ModelSpec:
    """One model id and what the public docs say about it."""

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

DEFAULT_MODEL = "reve-2.0"


def get_spec(model: str) -> ModelSpec | None:
    return MODELS.get(model)


def is_synchronous(model: str) -> bool:
    spec = MODELS.get(model)
    return bool(spec and spec.synchronous)


def validate_request(model: Any, params: Mapping[str, Any]) -> None:
    """Raise :class:`ReveValidationError` for input that is certain to be refused (or billed wrongly)."""
    if not isinstance(model, str) or not model.strip():
        raise ReveValidationError(f"model must be a non-empty string, got {model!r}")
    _check_json_serialisable(params)
    spec = MODELS.get(model)

    prompt = params.get("prompt")
    if prompt is not None and not isinstance(prompt, str):
        raise ReveValidationError(f"prompt must be a string, got {type(prompt).__name__}")
    if spec is not None and spec.needs_prompt and (prompt is None or not prompt.strip()):
        raise ReveValidationError(f"model {model!r} needs a prompt, and the prompt is empty")

    image_urls = params.get("image_urls")
    if image_urls is not None:
        if isinstance(image_urls, str) or not isinstance(image_urls, (list, tuple)):
            raise ReveValidationError("image_urls must be a list of URL strings")
        if not all(isinstance(u, str) and u.strip() for u in image_urls):
            raise ReveValidationError("image_urls must contain only non-empty URL strings")
        if spec is not None and not spec.supports_edit and image_urls:
            raise ReveValidationError(f"model {model!r} is text-to-image only; it takes no image_urls")

    if spec is None:
        return  # unknown model: pass everything through
    if spec.kind == "image":
        _validate_image(spec, params)
    else:
        _validate_video(spec, params)


def _validate_image(spec: ModelSpec, params: Mapping[str, Any]) -> None:
    _one_of(spec, params, "aspect_ratio", spec.aspect_ratios)
    _one_of(spec, params, "output_format", IMAGE_OUTPUT_FORMATS)
    if spec.resolutions:
        _one_of(spec, params, "resolution", spec.resolutions)
    num_images = params.get("num_images")
    if num_images is not None and (not _is_int(num_images) or num_images < 1):
        raise ReveValidationError(f"num_images must be a whole number >= 1, got {num_images!r}")
    if spec.model_id == "reve-2.0":
        tts = params.get("test_time_scaling")
        if tts is not None and (not _is_int(tts) or not 1 <= tts <= 15):
            raise ReveValidationError(f"test_time_scaling must be a whole number from 1 to 15, got {tts!r}")


def _validate_video(spec: ModelSpec, params: Mapping[str, Any]) -> None:
    if spec.resolutions:
        _one_of(spec, params, "resolution", spec.resolutions)
    duration = params.get("duration")
    if duration is not None:
        if (
            isinstance(duration, bool)
            or not isinstance(duration, (int, float))
            or not math.isfinite(duration)
        ):
            raise ReveValidationError(f"duration must be a number of seconds, got {duration!r}")
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
            raise ReveValidationError(f"generate_audio must be true or false, got {audio!r}")
        if audio and not spec.supports_audio:
            raise ReveValidationError(f"model {spec.model_id!r} cannot generate audio")


def _one_of(spec: ModelSpec, params: Mapping[str, Any], name: str, allowed: frozenset[str]) -> None:
    value = params.get(name)
    if value is not None and value not in allowed:
        raise ReveValidationError(
            f"{name} {value!r} is not valid for model {spec.model_id!r}; use one of {sorted(allowed)}"
        )


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_json_serialisable(params: Mapping[str, Any]) -> None:
    for name, value in params.items():
        try:
            json.dumps(value, allow_nan=False)
        except (TypeError, ValueError) as error:
            raise ReveValidationError(f"parameter {name!r} is not JSON-serialisable: {error}") from None


def estimate_credits(model: str, **params: Any) -> int | None:
    """Credits a request will cost, from the published prices; ``None`` when that is not known.

    ``None`` for an unknown model, a video without ``duration`` (or a happyhorse video without
    ``resolution``), and Reve post-processing, whose price is not published.
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
