"""Errors as OpenStack clients expect them: Nova's and Keystone's bodies, and request ids."""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable

from aiohttp import web

from hvmesh.core import log
from hvmesh.core.protocol import errors

LOG = log.get_logger(__name__)

# Nova's fault names by status (a 403 that is a quota refusal is overLimit).
NOVA_FAULTS = {
    400: "badRequest",
    401: "unauthorized",
    403: "forbidden",
    404: "itemNotFound",
    405: "badMethod",
    406: "notAcceptable",
    409: "conflictingRequest",
    413: "overLimit",
    500: "computeFault",
    501: "notImplemented",
    503: "serviceUnavailable",
}
KEYSTONE_TITLES = {
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class RestError(Exception):
    """An HTTP error with its status and message; `identity` answers in Keystone's shape."""

    def __init__(self, status: int, message: str, identity: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.identity = identity


def unauthorized(message: str = "The request you have made requires authentication.") -> RestError:
    return RestError(401, message, identity=True)


def nova_fault(status: int, message: str) -> dict:
    """Nova's error body: {"itemNotFound": {"code": 404, "message": ...}}."""
    name = NOVA_FAULTS.get(status, "computeFault")
    if status == 403 and "quota exceeded" in message.lower():
        name = "overLimit"
    return {name: {"code": status, "message": message}}


def keystone_error(status: int, message: str) -> dict:
    """Keystone's error body: {"error": {"code", "title", "message"}}."""
    title = KEYSTONE_TITLES.get(status, "Error")
    return {"error": {"code": status, "title": title, "message": message}}


NEUTRON_TYPES = {
    400: "HTTPBadRequest",
    403: "HTTPForbidden",
    404: "HTTPNotFound",
    405: "HTTPMethodNotAllowed",
    409: "HTTPConflict",
    500: "HTTPInternalServerError",
    501: "HTTPNotImplemented",
    503: "HTTPServiceUnavailable",
}
NEUTRON_NOT_FOUND = {
    "networks": "NetworkNotFound",
    "subnets": "SubnetNotFound",
    "ports": "PortNotFound",
}


def neutron_error(path: str, status: int, message: str) -> dict:
    """Neutron's error body: {"NeutronError": {"type", "message", "detail"}}."""
    kind = NEUTRON_TYPES.get(status, "HTTPInternalServerError")
    parts = path.split("/")
    if status == 404 and len(parts) > 4:
        kind = NEUTRON_NOT_FOUND.get(parts[3], kind)
    return {"NeutronError": {"type": kind, "message": message, "detail": ""}}


def error_response(request: web.Request, status: int, message: str, identity: bool) -> web.Response:
    body = keystone_error(status, message) if identity else nova_fault(status, message)
    if request.path.startswith("/network") and not identity:
        body = neutron_error(request.path, status, message)
    response = web.json_response(body, status=status)
    if status == 401:
        response.headers["WWW-Authenticate"] = f'Keystone uri="{request.url.origin()}/identity"'
    return response


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def request_ids(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Give every request an id, answer errors in OpenStack's shapes, stamp the id headers."""
    request_id = f"req-{uuid.uuid4()}"
    identity = request.path.startswith("/identity")
    try:
        response = await handler(request)
    except RestError as exc:
        response = error_response(request, exc.status, exc.message, exc.identity)
    except errors.HvmeshError as exc:
        response = error_response(request, exc.code, exc.message, identity)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        message = exc.reason if exc.status != 404 else f"no such resource: {request.path}"
        response = error_response(request, exc.status, message, identity)
    except Exception as exc:
        LOG.exception("rest.failed", path=request.path, request_id=request_id)
        response = error_response(
            request, 500, f"internal error: {type(exc).__name__}: {exc}", identity
        )
    response.headers["x-openstack-request-id"] = request_id
    if request.path.startswith("/compute"):
        response.headers["x-compute-request-id"] = request_id
    return response
