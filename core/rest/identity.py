"""Keystone v3, the part clients need: version discovery, password tokens, validation, revocation."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from aiohttp import web

from hvmesh.core.rest.errors import RestError, unauthorized
from hvmesh.core.rest.tokens import Token, Tokens

DOMAIN = {"id": "default", "name": "Default"}
API_VERSION = "v3.14"
MEDIA_TYPE = "application/vnd.openstack.identity-v3+json"
REGION = "RegionOne"
TOKENS = web.AppKey("tokens", Tokens)


class Domain(msgspec.Struct, omit_defaults=True):
    id: str | None = None
    name: str | None = None


class PasswordUser(msgspec.Struct):
    password: str
    name: str | None = None
    id: str | None = None
    domain: Domain | None = None


class Password(msgspec.Struct):
    user: PasswordUser


class Identity(msgspec.Struct):
    methods: list[str]
    password: Password | None = None


class ProjectScope(msgspec.Struct):
    id: str | None = None
    name: str | None = None
    domain: Domain | None = None


class Scope(msgspec.Struct):
    project: ProjectScope | None = None


class Auth(msgspec.Struct):
    identity: Identity
    scope: Scope | None = None


class AuthRequest(msgspec.Struct):
    auth: Auth


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def base_url(request: web.Request) -> str:
    return str(request.url.origin())


def version_document(request: web.Request) -> dict[str, Any]:
    return {
        "id": API_VERSION,
        "status": "stable",
        "updated": "2020-04-07T00:00:00Z",
        "links": [{"rel": "self", "href": f"{base_url(request)}/identity/v3/"}],
        "media-types": [{"base": "application/json", "type": MEDIA_TYPE}],
    }


async def versions(request: web.Request) -> web.Response:
    """GET /identity: the versions offered (300, as Keystone answers)."""
    return web.json_response({"versions": {"values": [version_document(request)]}}, status=300)


async def version(request: web.Request) -> web.Response:
    return web.json_response({"version": version_document(request)})


def _check_domain(domain: Domain | None, what: str) -> None:
    if domain is not None and not (domain.id == DOMAIN["id"] or domain.name == DOMAIN["name"]):
        raise unauthorized(f"{what}: only the Default domain exists")


def _credentials(body: AuthRequest) -> tuple[str, str, str | None]:
    """(user, password, project or None) from a password-method auth request."""
    auth = body.auth
    if "password" not in auth.identity.methods or auth.identity.password is None:
        raise RestError(400, "only the password method is supported", identity=True)
    user = auth.identity.password.user
    name = user.name or user.id
    if not name:
        raise RestError(400, "auth.identity.password.user: a name or an id", identity=True)
    _check_domain(user.domain, "user domain")
    project = None
    if auth.scope is not None and auth.scope.project is not None:
        scope = auth.scope.project
        _check_domain(scope.domain, "project domain")
        project = scope.id or scope.name
        if not project:
            raise RestError(400, "auth.scope.project: a name or an id", identity=True)
    return name, user.password, project


def endpoints(kind: str, url: str) -> list[dict[str, str]]:
    """A service's public, internal and admin endpoints (all one URL) in RegionOne."""
    return [
        {
            "id": f"{kind}-{interface}",
            "interface": interface,
            "region": REGION,
            "region_id": REGION,
            "url": url,
        }
        for interface in ("public", "internal", "admin")
    ]


def token_body(request: web.Request, token: Token) -> dict[str, Any]:
    base = base_url(request)
    catalog = [
        {"id": kind, "type": kind, "name": name, "endpoints": endpoints(kind, url)}
        for kind, name, url in (
            ("identity", "keystone", f"{base}/identity"),
            ("compute", "nova", f"{base}/compute/v2.1"),
            ("image", "glance", f"{base}/image"),
            ("network", "neutron", f"{base}/network"),
        )
    ]
    return {
        "token": {
            "methods": ["password"],
            "user": {"id": token.user, "name": token.user, "domain": DOMAIN},
            "project": {"id": token.project, "name": token.project, "domain": DOMAIN},
            "roles": [{"id": role, "name": role} for role in token.roles],
            "issued_at": iso(token.issued_at),
            "expires_at": iso(token.expires_at),
            "audit_ids": [token.id[:22]],
            "is_domain": False,
            "catalog": catalog,
        }
    }


async def issue(request: web.Request) -> web.Response:
    """POST /identity/v3/auth/tokens: a project-scoped token for a NATS user's password."""
    try:
        body = msgspec.json.decode(await request.read(), type=AuthRequest)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise RestError(400, f"invalid auth request: {exc}", identity=True) from None
    user, password, project = _credentials(body)
    token = await request.app[TOKENS].issue(user, password, project)
    response = web.json_response(token_body(request, token), status=201)
    response.headers["X-Subject-Token"] = token.text
    return response


async def _subject(request: web.Request) -> tuple[Tokens, Token | None]:
    """The tokens and the X-Subject-Token's token (None when it is not live), once the
    caller's own X-Auth-Token is found live."""
    tokens = request.app[TOKENS]
    authenticated(request)
    subject = request.headers.get("X-Subject-Token")
    if not subject:
        raise RestError(400, "X-Subject-Token: the token to look at", identity=True)
    try:
        return tokens, await tokens.resolve(subject)
    except RestError:
        return tokens, None


async def validate(request: web.Request) -> web.Response:
    """GET (and HEAD) /identity/v3/auth/tokens: the subject token's body, 404 if not live."""
    _, token = await _subject(request)
    if token is None:
        raise RestError(404, "the token is unknown, expired or revoked", identity=True)
    response = web.json_response(token_body(request, token))
    response.headers["X-Subject-Token"] = token.text
    return response


async def revoke(request: web.Request) -> web.Response:
    """DELETE /identity/v3/auth/tokens: the subject token ends now."""
    tokens, token = await _subject(request)
    if token is None:
        raise RestError(404, "the token is unknown, expired or revoked", identity=True)
    await tokens.revoke(token)
    return web.Response(status=204)


LIVE = "hvmesh.token"  # the request's live token, set by `authenticate`
REFUSED = "hvmesh.token_refused"  # or why its X-Auth-Token is not one


@web.middleware
async def authenticate(request: web.Request, handler: Any) -> web.StreamResponse:
    """Open the X-Auth-Token of a request before its handler runs (it may have to connect
    to NATS as the token's user); handlers read the outcome with `authenticated`."""
    text = request.headers.get("X-Auth-Token")
    if text:
        try:
            request[LIVE] = await request.app[TOKENS].resolve(text)
        except RestError as exc:
            request[REFUSED] = exc
    return await handler(request)


def authenticated(request: web.Request) -> Token:
    """The live token of the request's X-Auth-Token; 401 otherwise."""
    token = request.get(LIVE)
    if isinstance(token, Token):
        return token
    refused = request.get(REFUSED)
    if isinstance(refused, RestError):
        raise refused
    raise unauthorized("The request you have made requires authentication.")


class Authenticated:
    """One request with a live token (401 otherwise): the request, its token, the base URL."""

    def __init__(self, request: web.Request) -> None:
        self.request = request
        self.token: Token = authenticated(request)
        self.base = base_url(request)

    @property
    def is_admin(self) -> bool:
        return "admin" in self.token.roles


def routes() -> list[web.AbstractRouteDef]:
    return [
        web.get("/identity", versions),
        web.get("/identity/", versions),
        web.get("/identity/v3", version),
        web.get("/identity/v3/", version),
        web.post("/identity/v3/auth/tokens", issue),
        web.get("/identity/v3/auth/tokens", validate),  # aiohttp answers HEAD from it too
        web.delete("/identity/v3/auth/tokens", revoke),
    ]
