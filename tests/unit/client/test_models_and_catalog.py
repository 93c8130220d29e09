"""ReveTask round-trips, request validation before any paid call, and credit estimates."""

from __future__ import annotations

import json

import pytest

from airflow_provider_reve.client.catalog import estimate_credits, validate_request
from airflow_provider_reve.exceptions import ReveValidationError
from airflow_provider_reve.models import ReveTask


def test_reve_task_round_trips_through_json():
    task = ReveTask(
        task_id="t1",
        status="SUCCESS",
        result_urls=("https://cdn/x.png", "https://cdn/y.png"),
        consumed_credits=24,
        model="reve-2.0",
    )
    again = ReveTask.from_dict(json.loads(json.dumps(task.to_dict())))
    assert again == task
    assert task.to_dict()["result_urls"] == ["https://cdn/x.png", "https://cdn/y.png"]
    assert set(task.to_dict()) == {
        "reve_task_id",
        "task_id",
        "status",
        "result_urls",
        "consumed_credits",
        "error_code",
        "error_message",
        "model",
        "prompt",
        "request",
        "metadata",
    }


@pytest.mark.parametrize(
    "bad",
    [
        None,
        [],
        {"status": "SUCCESS"},
        {"task_id": "t", "status": "DONE"},
        {"task_id": "t", "status": "SUCCESS", "result_urls": "not-a-list"},
        {"task_id": "t", "status": "SUCCESS", "consumed_credits": "12"},
        {"task_id": "t", "status": "SUCCESS", "surprise": 1},
    ],
)
def test_reve_task_from_dict_rejects_anything_that_is_not_one(bad):
    with pytest.raises(ValueError):
        ReveTask.from_dict(bad)


@pytest.mark.parametrize(
    ("model", "params", "needle"),
    [
        ("reve-2.0", {"prompt": "   "}, "needs a prompt"),
        ("seedream-5", {}, "needs a prompt"),
        ("reve-2.0", {"prompt": "x", "aspect_ratio": "5:4"}, "aspect_ratio"),
        ("reve-2.0", {"prompt": "x", "num_images": 0}, "num_images"),
        ("reve-2.0", {"prompt": "x", "num_images": True}, "num_images"),
        ("reve-2.0", {"prompt": "x", "test_time_scaling": 16}, "test_time_scaling"),
        ("reve-2.0", {"prompt": "x", "output_format": "gif"}, "output_format"),
        ("nano-banana", {"prompt": "x", "image_urls": ["https://a/b.png"]}, "text-to-image only"),
        ("seedream-5", {"prompt": "x", "resolution": "8K"}, "resolution"),
        ("kling26-text-to-video", {"prompt": "x", "duration": 11}, "duration"),
        ("grok-imagine-text-to-video", {"prompt": "x", "duration": 8}, "duration"),
        ("grok-imagine-text-to-video", {"prompt": "x", "generate_audio": True}, "cannot generate audio"),
        ("happyhorse-1.0-text-to-video", {"prompt": "x", "resolution": "4K"}, "resolution"),
        ("reve-2.0", {"prompt": "x", "image_urls": "https://a/b.png"}, "list"),
        ("reve-2.0", {"prompt": "x", "extra": object()}, "JSON-serialisable"),
        ("", {"prompt": "x"}, "model"),
    ],
)
def test_invalid_requests_are_refused_with_a_message_naming_the_field(model, params, needle):
    with pytest.raises(ReveValidationError, match=needle):
        validate_request(model, params)


def test_unknown_models_and_unknown_fields_pass_through():
    validate_request("brand-new-model", {"whatever": [1, 2], "aspect_ratio": "7:3"})
    validate_request("reve-2.0", {"prompt": "x", "version": "latest-fast", "new_field": True})
    validate_request("kling26-motion-control-720p", {"duration": 20})  # no prompt needed


@pytest.mark.parametrize(
    ("model", "params", "credits"),
    [
        ("reve-2.0", {}, 12),
        ("reve-2.0", {"image_urls": ["u"]}, 20),
        ("reve-2.0", {"num_images": 3, "test_time_scaling": 2}, 72),
        ("nano-banana", {"num_images": 2}, 40),
        ("nano-banana-pro", {"resolution": "4K"}, 140),
        ("seedream-5", {}, 25),
        ("happyhorse-1.0-text-to-video", {"duration": 5, "resolution": "1080p"}, 375),
        ("kling3-pro-text-to-video", {"duration": 5, "generate_audio": True}, 480),
        ("kling3-standard-image-to-video", {"duration": 3}, 108),
        ("kling26-text-to-video", {"duration": 5}, 45),
        ("grok-imagine-text-to-video", {"duration": 10}, 35),
        ("kling26-motion-control-1080p", {}, 300),
    ],
)
def test_credit_estimates_follow_the_published_prices(model, params, credits):
    assert estimate_credits(model, **params) == credits


@pytest.mark.parametrize(
    ("model", "params"),
    [
        ("mystery-model", {}),
        ("kling26-text-to-video", {}),
        ("happyhorse-1.0-text-to-video", {"duration": 5}),
        ("reve-2.0", {"postprocessing": [{"process": "upscale", "upscale_factor": 2}]}),
    ],
)
def test_credit_estimate_is_none_when_the_price_cannot_be_known(model, params):
    assert estimate_credits(model, **params) is None
