"""The fake Reve API's model table and the provider's catalog, held against each other over HTTP.

Both are written from the public model pages (``models.md``) and neither is built from the other,
so a wrong price or a wrong limit in one shows up here as a disagreement with the other. The
provider validates only what is certain and leaves the rest to the API; the fake refuses what the
pages say the API refuses. So the one direction that must never happen is the provider refusing
a request the fake (the API, as documented) accepts.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from airflow_provider_reve.client import catalog as _catalog
from airflow_provider_reve.exceptions import ReveValidationError
from airflow_provider_reve.testing import FakeReveServer
from airflow_provider_reve.testing._fake import models as fake_models

KEY = "sk-agreement"

# Every model id on the public model pages (models.md), transcribed: both sides must know them all.
DOCUMENTED_MODELS = {
    "reve-2.0": "image",
    "nano-banana": "image",
    "nano-banana-pro": "image",
    "seedream-5": "image",
    **{
        f"{family}-{scene}": "video"
        for family in ("happyhorse-1.0", "kling3-pro", "kling3-standard", "kling26", "grok-imagine")
        for scene in ("text-to-video", "image-to-video")
    },
    "kling26-motion-control-720p": "video",
    "kling26-motion-control-1080p": "video",
}
SYNCHRONOUS = {"reve-2.0"}

IMAGE_URL = ["https://images.example/reference.png"]
VIDEO_URL = ["https://videos.example/moves.mp4"]

# The documented minimum the fake charges where the pages leave a price open, per field.
MINIMUM_DURATION = {
    "happyhorse-1.0": 4,
    "kling3-pro": 3,
    "kling3-standard": 3,
    "kling26": 5,
    "grok-imagine": 6,
    "kling26-motion-control": 3,
}


def minimal_request(model: str) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model}
    if "motion-control" in model:
        body["video_urls"] = VIDEO_URL
    else:
        body["prompt"] = "a lighthouse at dusk"
    if model.endswith("image-to-video"):
        body["image_urls"] = IMAGE_URL
    return body


# Values tried for each field, valid and invalid, on every model.
FIELD_VALUES: dict[str, list[Any]] = {
    "prompt": ["", "   ", 5],
    "aspect_ratio": ["1:1", "16:9", "9:16", "auto", "banana", 5],
    "num_images": [1, 2, 4, 0, 200, True, "2"],
    "output_format": ["png", "jpeg", "webp", "gif"],
    "resolution": ["1K", "2K", "4K", "8K", "720p", "1080p"],
    "test_time_scaling": [1, 3, 15, 0, 16, 2.5],
    "version": ["latest-fast", ""],
    "postprocessing": [[{"process": "upscale", "upscale_factor": 2}], "upscale"],
    "duration": [3, 4, 5, 6, 10, 12, 15, 30, -4, 0, 31, 5.5, "5", True],
    "generate_audio": [True, False, "yes"],
    "image_urls": [
        IMAGE_URL,
        ["/tmp/reference.png"],
        ["file:///etc/passwd"],
        "https://images.example/a.png",
        [],
    ],
}
# Combinations that change the price, by kind of model.
PRICE_FIELDS: dict[str, dict[str, list[Any]]] = {
    "image": {
        "num_images": [None, 1, 3],
        "resolution": [None, "1K", "4K"],
        "test_time_scaling": [None, 2],
        "image_urls": [None, IMAGE_URL],
    },
    "video": {
        "duration": [None, 3, 5, 6, 10, 12],
        "resolution": [None, "720p", "1080p"],
        "generate_audio": [None, True, False],
    },
}


def requests_for(model: str) -> Iterator[tuple[str, dict[str, Any]]]:
    base = minimal_request(model)
    yield "minimal", base
    for name, values in FIELD_VALUES.items():
        for value in values:
            yield f"{name}={value!r}", {**base, name: value}
    without = {key: value for key, value in base.items() if key not in ("image_urls", "video_urls")}
    yield "without source media", without
    price_fields = PRICE_FIELDS[DOCUMENTED_MODELS[model]]
    for combination in itertools.product(*price_fields.values()):
        chosen = {
            name: value for name, value in zip(price_fields, combination, strict=True) if value is not None
        }
        yield "price:" + ",".join(f"{name}={value!r}" for name, value in chosen.items()), {**base, **chosen}


def provider_verdict(body: dict[str, Any]) -> tuple[bool, int | None]:
    params = {name: value for name, value in body.items() if name != "model"}
    try:
        _catalog.validate_request(body["model"], params)
    except ReveValidationError:
        return False, None
    return True, _catalog.estimate_credits(body["model"], **params)


@pytest.fixture(scope="module")
def verdicts() -> dict[tuple[str, str], dict[str, Any]]:
    """Every request of :func:`requests_for`, sent to a real fake server, with both verdicts."""
    results: dict[tuple[str, str], dict[str, Any]] = {}
    with FakeReveServer(api_keys={KEY: 10**12}, async_seconds=3600) as server, requests.Session() as session:
        session.headers["Authorization"] = f"Bearer {KEY}"
        for model in DOCUMENTED_MODELS:
            for label, body in requests_for(model):
                before = server.balance(KEY)
                answer = session.post(f"{server.url}/api/v1/generate", json=body, timeout=10)
                provider_ok, estimate = provider_verdict(body)
                results[(model, label)] = {
                    "body": body,
                    "fake_ok": answer.status_code == 200,
                    "fake_message": answer.json()["message"],
                    "fake_cost": before - server.balance(KEY),
                    "provider_ok": provider_ok,
                    "estimate": estimate,
                }
    return results


def test_the_fake_and_the_provider_know_every_documented_model_and_no_other():
    assert set(fake_models.MODELS) == set(DOCUMENTED_MODELS)
    assert set(_catalog.MODELS) == set(DOCUMENTED_MODELS)
    for model, kind in DOCUMENTED_MODELS.items():
        assert fake_models.MODELS[model].kind == kind
        assert _catalog.MODELS[model].kind == kind


def test_the_fake_and_the_provider_agree_which_models_answer_at_once():
    for model in DOCUMENTED_MODELS:
        assert fake_models.MODELS[model].synchronous == (model in SYNCHRONOUS)
        assert _catalog.is_synchronous(model) == (model in SYNCHRONOUS)


def test_the_provider_never_refuses_a_request_the_fake_accepts(verdicts):
    refused_by_the_provider_only = sorted(
        key for key, verdict in verdicts.items() if verdict["fake_ok"] and not verdict["provider_ok"]
    )

    assert refused_by_the_provider_only == []


# What the pages say the API refuses but the provider leaves for the API to refuse (it validates
# only what is certain, before any paid call). A change on either side shows up here.
LEFT_TO_THE_API = {
    "aspect_ratio='banana'",  # video models: the provider checks ratios of image models only
    "aspect_ratio='auto'",  # documented for reve-2.0 only; the fake wants W:H on video models
    "aspect_ratio=5",
    "num_images=200",  # the fake's cap; the pages publish none
    "num_images='2'",
    "image_urls=['/tmp/reference.png']",
    "image_urls=['file:///etc/passwd']",
    "image_urls=[]",  # image-to-video without its source image
    "without source media",  # image-to-video without image_urls, motion control without video_urls
    "postprocessing='upscale'",
    "version=''",
    "test_time_scaling=2.5",
    "duration='5'",
    "duration=True",
    "generate_audio='yes'",
}
# A documented field sent to a model that does not take it (the provider passes these through).
FOREIGN_FIELDS = {
    "num_images",
    "output_format",
    "resolution",
    "test_time_scaling",
    "version",
    "postprocessing",
    "duration",
    "generate_audio",
    "image_urls",
}


def test_the_fake_refuses_only_documented_violations_the_provider_leaves_to_the_api(verdicts):
    refused_by_the_fake_only = {
        key: verdict for key, verdict in verdicts.items() if verdict["provider_ok"] and not verdict["fake_ok"]
    }

    unexplained = {}
    for (model, label), verdict in refused_by_the_fake_only.items():
        field = label.split("=", 1)[0].removeprefix("price:")
        foreign = field in FOREIGN_FIELDS and field not in fake_models.MODELS[model].fields
        price_combination_with_a_foreign_field = label.startswith("price:") and any(
            name not in fake_models.MODELS[model].fields for name in verdict["body"] if name != "model"
        )
        if label not in LEFT_TO_THE_API and not foreign and not price_combination_with_a_foreign_field:
            unexplained[(model, label)] = verdict["fake_message"]
    assert unexplained == {}
    assert {verdict["fake_message"] for verdict in refused_by_the_fake_only.values()} == {"INVALID_PARAMETER"}


def test_both_refuse_the_documented_limits_they_both_know(verdicts):
    for model, label in [
        ("reve-2.0", "num_images=0"),
        ("reve-2.0", "test_time_scaling=16"),
        ("seedream-5", "resolution='8K'"),
        ("kling26-text-to-video", "duration=-4"),
        ("kling26-text-to-video", "duration=31"),
        ("grok-imagine-text-to-video", "duration=5"),
        ("grok-imagine-text-to-video", "generate_audio=True"),
        ("happyhorse-1.0-text-to-video", "resolution='4K'"),
        ("nano-banana", f"image_urls={IMAGE_URL!r}"),
        ("reve-2.0", "prompt='   '"),
    ]:
        verdict = verdicts[(model, label)]
        assert (verdict["fake_ok"], verdict["provider_ok"]) == (False, False), (model, label)


def test_the_fake_charges_exactly_what_the_provider_estimates(verdicts):
    compared = set()
    for (model, label), verdict in verdicts.items():
        if verdict["fake_ok"] and verdict["estimate"] is not None:
            assert verdict["fake_cost"] == verdict["estimate"], (model, label)
            compared.add(model)
    assert compared == set(DOCUMENTED_MODELS)


def test_where_the_provider_cannot_know_the_price_the_fake_charges_the_documented_minimum(verdicts):
    unknown = [(key, v) for key, v in verdicts.items() if v["fake_ok"] and v["estimate"] is None]
    assert unknown

    for (model, label), verdict in unknown:
        body = dict(verdict["body"])
        body.pop("postprocessing", None)  # its surcharge is unpublished: the base price is the minimum
        if fake_models.MODELS[model].kind == "video":
            family = next(f for f in MINIMUM_DURATION if model.startswith(f))
            body.setdefault("duration", MINIMUM_DURATION[family])
            if family == "happyhorse-1.0":
                body.setdefault("resolution", "720p")
        minimum = provider_verdict(body)[1]
        assert minimum is not None, (model, label)
        assert verdict["fake_cost"] == minimum, (model, label)


@pytest.mark.parametrize(
    ("body", "credits"),
    [
        ({"model": "grok-imagine-text-to-video", "prompt": "x"}, 25),  # 6 s or 10 s: 25 or 35
        ({"model": "kling3-pro-text-to-video", "prompt": "x"}, 144),  # 48/s, 3 s at least
        ({"model": "kling3-pro-text-to-video", "prompt": "x", "generate_audio": True}, 288),
        ({"model": "happyhorse-1.0-text-to-video", "prompt": "x", "duration": 5}, 200),  # 720p is cheapest
        ({"model": "happyhorse-1.0-text-to-video", "prompt": "x"}, 160),
        ({"model": "reve-2.0", "prompt": "x", "postprocessing": [{"process": "upscale"}]}, 12),
    ],
)
def test_a_price_the_docs_leave_open_is_never_charged_below_the_documented_minimum(body, credits):
    with FakeReveServer(api_keys={KEY: 1000}) as server:
        answer = requests.post(
            f"{server.url}/api/v1/generate", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=5
        )

        assert answer.status_code == 200
        assert server.ledger == [
            {"key": KEY, "task_id": answer.json()["data"]["task_id"], "delta": -credits, "reason": "charge"}
        ]
