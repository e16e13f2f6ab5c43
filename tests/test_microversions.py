"""Microversions on the NATS API: the Hvmesh-API-Version header picks one, the reply names it.

Without the header a request speaks the minimum (1.0); `latest` the maximum; a malformed
value is a 400 and one outside the range a 406, both naming the range. Handlers see the
version: client_token, added in 1.1, is refused at 1.0.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hvmesh.core.bus.microversion import HEADER, NotAcceptable, VersionRange
from hvmesh.core.protocol import errors
from tests.support import ApiClient, Deployment, make_flavor_image

TIMEOUT = 10.0


async def request(client: ApiClient, subject: str, body: Any, version: str | None) -> Any:
    headers = {HEADER: version} if version is not None else None
    return await client.nc.request(
        f"hvmesh.api.{subject}", json.dumps(body).encode(), timeout=TIMEOUT, headers=headers
    )


def error_of(msg: Any) -> tuple[int, str] | None:
    headers = msg.headers or {}
    if "Nats-Service-Error-Code" not in headers:
        return None
    return int(headers["Nats-Service-Error-Code"]), json.loads(msg.data)["error"]["message"]


async def test_the_header_picks_the_version_and_the_reply_names_it(
    deployment: Deployment, demo: ApiClient
) -> None:
    await deployment.start_core()
    for asked, used in [(None, "1.0"), ("1.0", "1.0"), ("1.1", "1.1"), ("latest", "1.1"),
                        (" LATEST ", "1.1"), ("", "1.0")]:  # fmt: skip
        msg = await request(demo, "flavors.list", {}, asked)
        assert error_of(msg) is None, (asked, msg.data)
        assert "flavors" in json.loads(msg.data)
        assert msg.headers[HEADER] == used, asked

    # An error reply names the version too.
    msg = await request(demo, "servers.get", {"id": "nope"}, "1.1")
    assert error_of(msg) == (404, "server nope not found")
    assert msg.headers[HEADER] == "1.1"


@pytest.mark.parametrize(
    ("asked", "code", "words"),
    [
        ("2.0", 406, "Hvmesh-API-Version 2.0 is not supported: this service supports 1.0 to 1.1"),
        ("1.2", 406, "Hvmesh-API-Version 1.2 is not supported: this service supports 1.0 to 1.1"),
        ("0.9", 406, "this service supports 1.0 to 1.1"),
        ("abc", 400, "malformed Hvmesh-API-Version 'abc': expected MAJOR.MINOR or 'latest'"),
        ("1", 400, "malformed Hvmesh-API-Version '1'"),
        ("1.1.0", 400, "malformed Hvmesh-API-Version '1.1.0'"),
        ("1.01", 400, "this service supports 1.0 to 1.1"),
    ],
)
async def test_a_bad_version_is_refused_naming_the_range(
    deployment: Deployment, demo: ApiClient, asked: str, code: int, words: str
) -> None:
    await deployment.start_core()
    msg = await request(demo, "flavors.list", {}, asked)
    error = error_of(msg)
    assert error is not None and error[0] == code, msg.data
    assert words in error[1]
    assert HEADER not in msg.headers


async def test_handlers_see_the_version(
    deployment: Deployment, admin: ApiClient, demo: ApiClient
) -> None:
    await deployment.start_core(fake_hosts=1)
    await make_flavor_image(admin)
    body = {"name": "vm", "flavor": "m1.small", "image": "cirros", "client_token": "t-1"}
    msg = await request(demo, "servers.create", body, None)
    assert error_of(msg) == (
        400,
        "client_token needs API version 1.1 or later (request header Hvmesh-API-Version: 1.1)",
    )
    listed = json.loads((await request(demo, "servers.list", {}, None)).data)["servers"]
    assert listed == []  # refused before anything was made
    msg = await request(demo, "servers.create", body, "1.1")
    assert error_of(msg) is None, msg.data
    assert json.loads(msg.data)["server"]["name"] == "vm"


def test_negotiation_rules() -> None:
    versions = VersionRange("1.0", "1.1")
    assert versions.negotiate(None) == (1, 0)
    assert versions.negotiate({"hvmesh-api-version": "1.1"}) == (1, 1)  # any case
    assert versions.negotiate({"HVMESH-API-VERSION": "Latest"}) == (1, 1)
    with pytest.raises(NotAcceptable) as refused:
        versions.negotiate({HEADER: "9999.0"})
    assert refused.value.code == 406
    with pytest.raises(errors.BadRequest):
        versions.negotiate({HEADER: "99999.0"})  # more digits than a version has
    with pytest.raises(ValueError, match="empty"):
        VersionRange("1.2", "1.1")
