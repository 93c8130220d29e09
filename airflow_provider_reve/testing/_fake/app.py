"""The fake's aiohttp application: the two API endpoints, the result files, and error pages in the
API's envelope for paths and methods it does not serve."""

from __future__ import annotations

import asyncio
import json
from http import HTTPStatus
from typing import Any

from aiohttp import web

from airflow_provider_reve.testing import _media
from airflow_provider_reve.testing._fake import control
from airflow_provider_reve.testing._fake.contract import SUCCESS, ApiError, error_envelope, success_envelope
from airflow_provider_reve.testing._fake.faults import (
    BEFORE,
    FAULT_HEADER,
    FILES,
    GENERATE,
    STATUS,
    WEIRD_STATUS,
    Fault,
    break_tls,
    drop,
    garbled,
    html_response,
    huge,
    json_response,
    retry_after_header,
    trickle,
)
from airflow_provider_reve.testing._fake.state import FakeState

_INVALID_JSON: Any = object()
# What a CDN answers for a signed URL past its lifetime (S3 and CloudFront say it like this).
_EXPIRED = (
    '<?xml version="1.0" encoding="UTF-8"?>\n'
    "<Error><Code>AccessDenied</Code><Message>Request has expired</Message></Error>\n"
)


def make_app(state: FakeState) -> web.Application:
    api = _Api(state)
    app = web.Application(middlewares=[control.loopback_only, _envelope_error_pages])
    app.add_routes(
        [
            web.post("/api/v1/generate", api.generate),
            web.get("/api/v1/status", api.status),
            web.get("/files/{task_id}/{name}", api.file),
        ]
    )
    control.add_routes(app, state)
    return app


@web.middleware
async def _envelope_error_pages(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp answers an unknown path or method in plain text; the API answers in its envelope.
    (The reference has no machine code for these, so the message names the HTTP status.)"""
    try:
        return await handler(request)
    except web.HTTPException as error:
        if error.status < 400 or request.path.startswith(("/files/", control.PREFIX)):
            raise
        detail = f"{request.method} {request.path} is not an endpoint of this API."
        try:
            name = HTTPStatus(error.status).name
        except ValueError:
            name = "ERROR"
        status, envelope = error_envelope(name, detail, error.status)
        allow = error.headers.get("Allow")
        return json_response(status, envelope, {"Allow": allow} if allow else None)


def _connection(request: web.Request) -> tuple[str, int] | None:
    if request.transport is None:
        return None
    return str(request.transport.get_extra_info("peername")), id(request.transport)


class _Api:
    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def generate(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        state.count(GENERATE, _connection(request))
        raw = await request.read()
        try:
            body: Any = json.loads(raw) if raw.strip() else None
        except ValueError:
            body = _INVALID_JSON
        model = body.get("model") if isinstance(body, dict) else None
        try:
            fault = state.match_fault(
                GENERATE, model if isinstance(model, str) else None, request.headers.get(FAULT_HEADER)
            )
        except ValueError as error:
            return json_response(*error_envelope("INVALID_PARAMETER", f"Bad {FAULT_HEADER} header: {error}"))
        early = await _before(request, fault)
        if early is not None:
            return early
        cost, headers = 0, {}
        try:
            key = state.admit(request.headers.get("Authorization", ""))  # authenticate first, as the API does
            if body is _INVALID_JSON:
                raise ApiError("INVALID_PARAMETER", "The body is not valid JSON.")
            data, cost = state.create_task(key, body, fault)
            status, envelope = success_envelope(data)
        except ApiError as error:
            status, envelope = error_envelope(error.code, error.detail)
            headers = error.headers
        return await _after(request, GENERATE, fault, status, envelope, headers, cost)

    async def status(self, request: web.Request) -> web.StreamResponse:
        state = self.state
        task_id = request.query.get("task_id", "").strip()
        state.count(STATUS, _connection(request), task_id)
        try:
            fault = state.match_fault(STATUS, state.task_model(task_id), request.headers.get(FAULT_HEADER))
        except ValueError as error:
            return json_response(*error_envelope("INVALID_PARAMETER", f"Bad {FAULT_HEADER} header: {error}"))
        early = await _before(request, fault)
        if early is not None:
            return early
        if fault is not None and fault.kind == "slow":  # before reading the task: the answer is fresh
            await asyncio.sleep(fault.delay)
        cost, headers = 0, {}
        try:
            key = state.admit(request.headers.get("Authorization", ""))
            data, cost = state.task_status(key, task_id)
            if fault is not None and fault.kind == "unknown_status":
                data["status"] = fault.code or WEIRD_STATUS
            status, envelope = success_envelope(data)
        except ApiError as error:
            status, envelope = error_envelope(error.code, error.detail)
            headers = error.headers
        return await _after(request, STATUS, fault, status, envelope, headers, cost)

    async def file(self, request: web.Request) -> web.StreamResponse:
        self.state.count(FILES, None)
        early = await _before(request, self.state.match_fault(FILES, None, None))
        if early is not None:
            return early
        found = self.state.result_file(request.match_info["task_id"], request.match_info["name"])
        if found is None:
            raise web.HTTPNotFound(text="No such file.")
        verdict, facts = found
        if verdict == "expired":
            return web.Response(status=403, text=_EXPIRED, content_type="application/xml")
        params = facts["params"]
        if facts["is_video"]:
            duration = params.get("duration")
            seconds = float(duration) if isinstance(duration, (int, float)) else 5.0
            return web.Response(
                body=_media.mp4_bytes(facts["prompt"], seconds), content_type=_media.MP4_CONTENT_TYPE
            )
        data, content_type, _ = _media.image_bytes(
            params.get("output_format"), facts["prompt"], facts["index"]
        )
        return web.Response(body=data, content_type=content_type)


async def _before(request: web.Request, fault: Fault | None) -> web.StreamResponse | None:
    """Faults answered before anything is processed (so nothing is created)."""
    if fault is None or fault.kind not in BEFORE:
        return None
    if fault.kind == "drop_before":
        return drop(request)
    if fault.kind == "error":
        status, envelope = error_envelope(fault.code or "GENERATION_FAILED", fault.detail, fault.status)
        return json_response(status, envelope, retry_after_header(fault.retry_after))
    if fault.kind == "html":
        return html_response(fault.status or 502, fault.retry_after)
    if fault.kind == "bare_404":
        return json_response(404, {"message": "Not Found"})
    return await huge(request, fault)


async def _after(
    request: web.Request,
    endpoint: str,
    fault: Fault | None,
    status: int,
    envelope: dict,
    headers: dict[str, str],
    cost: int,
) -> web.StreamResponse:
    """Faults applied to the answer of a processed request."""
    kind = fault.kind if fault is not None else None
    if fault is None or kind in ("fail_task", "in_progress", "unknown_status"):
        return json_response(status, envelope, headers)
    if kind == "drop_after":
        return drop(request)
    if kind == "tls_break_after_request":
        return break_tls(request)
    if kind == "slow" and endpoint == GENERATE:  # the status endpoint slept before processing
        await asyncio.sleep(fault.delay)
    if kind == "html_after":
        return html_response(fault.status or 503, fault.retry_after)
    if kind == "garbled":
        return garbled(envelope)
    if kind == "missing_data":
        return json_response(200, {"code": 200, "message": "success"})
    if kind == "success_without_urls" and status == 200:
        claimed: dict[str, Any] = {
            "task_id": envelope["data"]["task_id"],
            "status": SUCCESS,
            "consumed_credits": cost,
        }
        if fault.variant != "missing":
            claimed["response"] = {"resultUrls": []}
        envelope = {**envelope, "data": claimed}
    if kind == "trickle":
        body = json.dumps(envelope).encode()
        return await trickle(request, status, body, fault.chunk_size, fault.delay, headers)
    return json_response(status, envelope, headers)
