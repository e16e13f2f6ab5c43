"""Log lines: JSON objects for files and pipes, readable lines on a terminal."""

from __future__ import annotations

import io
import json
import logging
import os

import pytest

from hvmesh.core import log


@pytest.fixture(autouse=True)
def restore_logging(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(log.FORMAT_ENV, raising=False)
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_where_no_terminal_reads() -> None:
    out = io.StringIO()
    log.setup("info", out)
    log.get_logger("hvmesh.test").info("server.active", server="s1", host="h 1")
    record = json.loads(out.getvalue())
    assert (record["event"], record["server"], record["host"]) == ("server.active", "s1", "h 1")


def test_readable_lines_on_a_terminal() -> None:
    leader, follower = os.openpty()
    try:
        with os.fdopen(follower, "w", closefd=False) as tty:
            log.setup("info", tty)
            log.get_logger("hvmesh.test").warning("claim.lost", host="h1", attempt=2)
            tty.flush()
        line = os.read(leader, 4096).decode().strip()
    finally:
        os.close(leader)
        os.close(follower)
    assert not line.startswith("{")
    assert "warning" in line and "claim.lost" in line and "host=h1 attempt=2" in line


def test_the_environment_chooses_over_the_configuration(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(log.FORMAT_ENV, "console")
    out = io.StringIO()
    log.setup("info", out, fmt="json")
    log.get_logger("hvmesh.test").info("up", note="two words")
    assert out.getvalue().split(" ", 1)[1].strip() == 'info    up  note="two words"'


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="log format 'xml': use one of auto, json, console"):
        log.setup("info", io.StringIO(), fmt="xml")
