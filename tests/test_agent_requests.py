"""Quick requests to one agent (hvmesh.agent.<host>.<op>) answer errors as micro services do."""

from __future__ import annotations

import pytest

from hvmesh.core.bus import micro
from hvmesh.core.protocol import errors, subjects
from tests.support import Deployment


async def test_console_log_of_an_unknown_server_is_a_404_reply(cloud: Deployment) -> None:
    nc = await cloud.connect("admin")
    with pytest.raises(errors.NotFound, match="no-such-server"):
        await micro.call(
            nc, subjects.agent("fake-0001", "console_log"), {"server_id": "no-such-server"}
        )
