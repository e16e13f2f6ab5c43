"""Test support for the REST front door: the service in-process, tokens, the openstack CLI."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import aiohttp

from hvmesh.core.rest.app import RestService
from tests.support import Deployment

OPENSTACK = str(Path(sys.executable).parent / "openstack")


async def start_rest(dep: Deployment, **rest: Any) -> RestService:
    """`hvmesh rest` in this process on a free loopback port, against the deployment."""
    service = RestService(None, dep.config(rest={"port": 0, **rest}))
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


def compute_url(rest: RestService) -> str:
    return rest.auth_url.replace("/identity/v3", "/compute/v2.1")


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


async def openstack(env: dict[str, str], *args: str) -> Any:
    """Run `openstack ARGS... -f json` as its own process; its JSON output (None if none)."""
    proc = await asyncio.create_subprocess_exec(
        OPENSTACK,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=180)
    assert proc.returncode == 0, f"openstack {' '.join(args)} failed: {err.decode()}"
    text = out.decode().strip()
    return json.loads(text) if text else None
