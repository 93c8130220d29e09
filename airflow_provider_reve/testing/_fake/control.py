"""The control API, ``/_fake/...``: the Python methods of ``FakeReveServer`` over HTTP, for tests
that run in another process. Plain JSON (not the Reve envelope); a bad request answers 400
``{"error": "..."}``. It has no authentication, so it answers loopback clients only: a request
from any other address gets 403, even when the server listens on every interface."""

from __future__ import annotations

import ipaddress
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

from airflow_provider_reve.testing._fake.faults import Fault, json_response

if TYPE_CHECKING:
    from airflow_provider_reve.testing._fake.state import FakeState

PREFIX = "/_fake"


def is_loopback(address: str | None) -> bool:
    if not address:
        return False
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    mapped = getattr(ip, "ipv4_mapped", None)
    return bool(ip.is_loopback or (mapped is not None and mapped.is_loopback))


@web.middleware
async def loopback_only(request: web.Request, handler: Any) -> web.StreamResponse:
    if request.path == PREFIX or request.path.startswith(PREFIX + "/"):
        if not is_loopback(request.remote):
            return json_response(403, {"error": "the control API answers loopback clients only"})
        try:
            return await handler(request)
        except web.HTTPNotFound:
            return json_response(404, {"error": f"no control endpoint {request.path}"})
        except web.HTTPMethodNotAllowed as error:
            return json_response(
                405, {"error": f"{request.method} not allowed"}, {"Allow": error.headers["Allow"]}
            )
    return await handler(request)


def add_routes(app: web.Application, state: FakeState) -> None:
    handlers = _Control(state)
    app.add_routes(
        [
            web.get(f"{PREFIX}/stats", handlers.stats),
            web.get(f"{PREFIX}/tasks", handlers.tasks),
            web.get(f"{PREFIX}/faults", handlers.list_faults),
            web.post(f"{PREFIX}/faults", handlers.add_fault),
            web.delete(f"{PREFIX}/faults", handlers.clear_faults),
            web.post(f"{PREFIX}/reset", handlers.reset),
            web.post(f"{PREFIX}/keys", handlers.add_key),
            web.get(f"{PREFIX}/settings", handlers.get_settings),
            web.post(f"{PREFIX}/settings", handlers.settings),
            web.post(f"{PREFIX}/tasks/{{task_id}}/finish", handlers.finish),
            web.post(f"{PREFIX}/tasks/{{task_id}}/fail", handlers.fail),
        ]
    )


async def _body(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    raw = await request.read()
    if not raw.strip() and allow_empty:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise ValueError("the body is not valid JSON") from None
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object")
    return body


class _Control:
    def __init__(self, state: FakeState) -> None:
        self.state = state

    async def stats(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.state.stats())

    async def tasks(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.state.tasks)

    async def list_faults(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, {"faults": [rule.to_dict() for rule in self.state.faults]})

    async def add_fault(self, request: web.Request) -> web.StreamResponse:
        try:
            rule = self.state.add_fault(Fault.from_dict(await _body(request)))
        except ValueError as error:
            return json_response(400, {"error": str(error)})
        return json_response(200, {"added": rule.to_dict()})

    async def clear_faults(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, {"cleared": self.state.clear_faults()})

    async def reset(self, request: web.Request) -> web.StreamResponse:
        self.state.reset()
        return json_response(200, {"reset": True})

    async def add_key(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await _body(request)
            credits = body.get("credits")
            self.state.add_key(body.get("key"), credits)  # type: ignore[arg-type]
        except ValueError as error:
            return json_response(400, {"error": str(error)})
        return json_response(200, {"credits": credits})

    async def get_settings(self, request: web.Request) -> web.StreamResponse:
        return json_response(200, self.state.settings)

    async def settings(self, request: web.Request) -> web.StreamResponse:
        try:
            return json_response(200, self.state.configure(**(await _body(request))))
        except ValueError as error:
            return json_response(400, {"error": str(error)})

    async def finish(self, request: web.Request) -> web.StreamResponse:
        try:
            return json_response(200, self.state.finish_task(request.match_info["task_id"]))
        except KeyError as error:
            return json_response(404, {"error": str(error.args[0])})
        except ValueError as error:
            return json_response(409, {"error": str(error)})

    async def fail(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await _body(request, allow_empty=True)
            code = body.get("code") or "GENERATION_FAILED"
            message = body.get("message")
            if not isinstance(code, str) or (message is not None and not isinstance(message, str)):
                raise ValueError("code and message must be strings")
            return json_response(200, self.state.fail_task(request.match_info["task_id"], code, message))
        except KeyError as error:
            return json_response(404, {"error": str(error.args[0])})
        except ValueError as error:
            return json_response(409 if "already" in str(error) else 400, {"error": str(error)})
