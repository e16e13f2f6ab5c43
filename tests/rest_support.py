"""Test support for the REST front door: the service in-process, tokens, the openstack CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp
import openstack as openstacksdk

from hvmesh.core.rest.app import RestService
from tests.support import Deployment

OPENSTACK = str(Path(sys.executable).parent / "openstack")


async def start_rest(dep: Deployment, **rest: Any) -> RestService:
    """`hvmesh rest` in this process on a free loopback port, against the deployment."""
    service = RestService(await dep.service_connection(), dep.config(rest={"port": 0, **rest}))
    await dep.start(service)
    return service


def password_auth(user: str, password: str, project: str | None) -> dict[str, Any]:
    auth: dict[str, Any] = {
        "identity": {
            "methods": ["password"],
            "password": {
                "user": {"name": user, "domain": {"name": "Default"}, "password": password}
            },
        }
    }
    if project is not None:
        auth["scope"] = {"project": {"name": project, "domain": {"name": "Default"}}}
    return {"auth": auth}


async def token(
    http: aiohttp.ClientSession, rest: RestService, user: str, password: str, project: str
) -> str:
    """A token for `user` on `project` (POST /identity/v3/auth/tokens must answer 201)."""
    async with http.post(
        f"{rest.auth_url}/auth/tokens", json=password_auth(user, password, project)
    ) as r:
        assert r.status == 201, await r.text()
        return r.headers["X-Subject-Token"]


def sdk(rest: RestService, dep: Deployment, user: str = "demo", project: str = "DEMO") -> Any:
    """An openstacksdk connection as `user` on `project`, through the service's catalog."""
    return openstacksdk.connect(
        auth_url=rest.auth_url,
        username=user,
        password=dep.server.passwords[user],
        project_name=project,
        user_domain_name="Default",
        project_domain_name="Default",
        region_name="RegionOne",
    )


def compute_url(rest: RestService) -> str:
    return rest.auth_url.replace("/identity/v3", "/compute/v2.1")


def image_url(rest: RestService) -> str:
    """The image service's root (version discovery); its API is under /v2."""
    return rest.auth_url.replace("/identity/v3", "/image")


def network_url(rest: RestService) -> str:
    """The network service's root (version discovery); its API is under /v2.0."""
    return rest.auth_url.replace("/identity/v3", "/network")


def os_env(rest: RestService, dep: Deployment, user: str = "demo", project: str = "DEMO") -> dict:
    """The OS_* variables an openstack CLI user sets for `user` on `project`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OS_")}
    env.update(
        OS_AUTH_URL=rest.auth_url,
        OS_USERNAME=user,
        OS_PASSWORD=dep.server.passwords[user],
        OS_PROJECT_NAME=project,
        OS_USER_DOMAIN_NAME="Default",
        OS_PROJECT_DOMAIN_NAME="Default",
        OS_IDENTITY_API_VERSION="3",
        OS_INTERFACE="public",
    )
    return env


async def openstack_text(env: dict[str, str], *args: str) -> str:
    """Run `openstack ARGS...` as its own process; its output as it printed it."""
    proc = await asyncio.create_subprocess_exec(
        OPENSTACK,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, f"openstack {' '.join(args)} failed: {err.decode()}"
    return out.decode()


async def openstack(env: dict[str, str], *args: str) -> Any:
    """Run `openstack ARGS... -f json` as its own process; its JSON output (None if none)."""
    text = (await openstack_text(env, *args)).strip()
    # `--wait` writes its progress ("Progress: 100Complete") to stdout before the JSON.
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    return json.loads(text[min(starts) :]) if starts else None
