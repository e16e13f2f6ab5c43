"""hvmesh's CLI keeps python-openstackclient's conventions: formats, columns, connection, completion.

Every check runs the real `hvmesh` binary; the ones that need a deployment run it against
a real nats-server (the `cloud` fixture, or a nats-server of their own with token, nkey
or TLS authentication).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import pty
import select
import shutil
import struct
import subprocess
import termios
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import msgspec
import nkeys
import pytest
import yaml

from hvmesh.core import config
from hvmesh.core.api.service import ApiService
from hvmesh.core.bus import connection
from hvmesh.core.ops import natsserver
from tests.support import HVMESH, Cli, Deployment, hvmesh, until

BIN = str(Path(HVMESH).parent)


async def boot(cli: Cli) -> dict[str, Any]:
    """A flavor, an image with a property, and one ACTIVE server, all through the CLI."""
    await cli.ok("flavor", "create", "m1.small", "--vcpus", "1", "--ram", "256", "--disk", "1")
    await cli.ok("image", "create", "cirros", "--property", "os_distro=cirros", "--property", "a=b")
    return await cli.json(
        "server", "create", "vm1", "--flavor", "m1.small", "--image", "cirros", "--wait"
    )


def table_rows(text: str) -> list[list[str]]:
    """The cells of each `| a | b |` line of a boxed table (borders and wrapping kept out)."""
    return [
        [cell.strip() for cell in line.strip()[1:-1].split("|")]
        for line in text.splitlines()
        if line.startswith("|")
    ]


# --- output formats -------------------------------------------------------------------------


async def test_list_formats_and_columns(cloud: Deployment) -> None:
    cli = Cli(cloud)
    server = await boot(cli)

    table = await cli.ok("server", "list")
    lines = table.splitlines()
    assert lines[0].startswith("+--") and lines[0] == lines[2] == lines[-1]
    header, row = table_rows(table)
    assert header[:3] == ["ID", "Name", "Status"] and "Image" in header and "Flavor" in header
    assert row[:3] == [server["id"], "vm1", "ACTIVE"]
    assert row[header.index("Flavor")] == "m1.small"

    # -f value: bare values, no header; -c by field key or header, in any case, in -c's order.
    assert await cli.ok("server", "list", "-f", "value", "-c", "id") == f"{server['id']}\n"
    shown = await cli.ok("server", "list", "-f", "value", "-c", "NAME", "-c", "ID", "-c", "host")
    assert shown == f"vm1 {server['id']} {server['host']}\n"
    long_form = await cli.ok("server", "list", "-c", "Task State", "-c", "power_state")
    assert table_rows(long_form) == [["Task State", "Power State"], ["None", "Running"]]

    csv_out = await cli.ok("server", "list", "-f", "csv", "-c", "id", "-c", "name")
    assert csv_out.splitlines() == ['"ID","Name"', f'"{server["id"]}","vm1"']
    flavors_csv = await cli.ok("flavor", "list", "-f", "csv", "-c", "name", "-c", "vcpus")
    assert flavors_csv.splitlines() == ['"Name","VCPUs"', '"m1.small",1']

    # json and yaml carry the API's own objects; -c keeps the chosen keys; --noindent.
    data = await cli.json("server", "list")
    assert data[0]["flavor"]["name"] == "m1.small"
    assert yaml.safe_load(await cli.ok("server", "list", "-f", "yaml")) == data
    assert await cli.json("server", "list", "-c", "ID", "-c", "status") == [
        {"id": server["id"], "status": "ACTIVE"}
    ]
    compact = await cli.ok("server", "list", "-f", "json", "--noindent")
    assert compact.count("\n") == 1 and json.loads(compact) == data

    line = await cli.fails("server", "list", "-c", "nope")
    assert line.startswith("error: unknown column 'nope'") and "ID, Name, Status" in line


async def test_record_formats_and_nested_cells(cloud: Deployment) -> None:
    cli = Cli(cloud)
    await boot(cli)
    shown = await cli.ok("image", "show", "cirros")
    rows = table_rows(shown)
    assert rows[0] == ["Field", "Value"]
    assert ["properties", "a='b', os_distro='cirros'"] in rows
    assert ["name", "cirros"] in rows

    assert await cli.ok("image", "show", "cirros", "-f", "value", "-c", "name") == "cirros\n"
    assert await cli.ok(
        "flavor", "show", "m1.small", "-f", "value", "-c", "vcpus", "-c", "RAM"
    ) == ("1\n256\n")
    image = await cli.json("image", "show", "cirros")
    assert image["properties"] == {"os_distro": "cirros", "a": "b"}
    assert yaml.safe_load(await cli.ok("image", "show", "cirros", "-f", "yaml")) == image
    assert await cli.json("image", "show", "cirros", "-c", "properties") == {
        "properties": {"os_distro": "cirros", "a": "b"}
    }


async def test_max_width_wraps_the_widest_columns(cloud: Deployment) -> None:
    cli = Cli(cloud)
    server = await boot(cli)
    wide = await cli.ok("server", "list")
    assert max(len(line) for line in wide.splitlines()) > 60

    narrow = await cli.ok("server", "list", "--max-width", "60")
    assert all(len(line) <= 60 for line in narrow.splitlines())
    header, *rows = table_rows(narrow)
    assert "".join(row[0] for row in rows) == server["id"]  # the id, wrapped over lines
    assert header[:3] == ["ID", "Name", "Status"]
    assert await cli.ok("server", "list", "--max-width", "0") == wide


def run_in_terminal(argv: list[str], columns: int) -> str:
    """Run `argv` with stdout on a terminal `columns` wide; what it printed."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(argv, stdout=follower, stderr=subprocess.PIPE)
    os.close(follower)
    out = b""
    with contextlib.suppress(OSError):  # EIO: the terminal's other end has closed
        while chunk := os.read(leader, 65536):
            out += chunk
    os.close(leader)
    assert proc.wait(60) == 0, proc.stderr.read() if proc.stderr else ""
    return out.decode().replace("\r\n", "\n")


async def test_a_terminal_sets_the_default_width(cloud: Deployment) -> None:
    cli = Cli(cloud)
    await boot(cli)
    argv = [HVMESH, "server", "list", *cli.auth]
    fitted = await asyncio.to_thread(run_in_terminal, argv, 72)
    assert all(len(line) <= 72 for line in fitted.splitlines()) and "vm1" in fitted
    unlimited = await asyncio.to_thread(run_in_terminal, [*argv, "--max-width", "0"], 72)
    assert max(len(line) for line in unlimited.splitlines()) > 72


# --- pipes, refusals, usage -----------------------------------------------------------------


async def test_a_closed_pipe_ends_quietly(cloud: Deployment) -> None:
    cli = Cli(cloud)
    await boot(cli)
    read_end, write_end = os.pipe()
    os.close(read_end)  # nobody reads: the first write fails with EPIPE
    try:
        proc = await asyncio.create_subprocess_exec(
            HVMESH, "server", "list", *cli.auth, stdout=write_end, stderr=asyncio.subprocess.PIPE
        )
    finally:
        os.close(write_end)
    _, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert err == b"" and proc.returncode == 1

    pipeline = f"'{HVMESH}' server list {' '.join(cli.auth)} | head -1"
    proc = await asyncio.create_subprocess_exec(
        "bash", "-c", pipeline, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=60)
    assert out.decode().startswith("+--") and out.count(b"\n") == 1 and err == b""


async def test_a_slow_reader_of_a_non_blocking_pipe_gets_everything(cloud: Deployment) -> None:
    """Python drops, without a word, what one write cannot place in a non-blocking pipe;
    the CLI makes its stdout block, so a reader that comes late still gets all of it."""
    cli = Cli(cloud)
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)  # shared with the child: its stdout starts non-blocking
    try:
        proc = await asyncio.create_subprocess_exec(
            HVMESH, "api", "schema", "-f", "json", *cli.auth, stdout=write_end
        )
    finally:
        os.close(write_end)
    try:
        # Read only once the pipe is full (64 KiB queued), when a non-blocking write would fail.
        def full() -> bool:
            assert proc.returncode is None or _queued(read_end) > 0, "hvmesh wrote nothing"
            return _queued(read_end) >= 65536

        await until(full, 60, "64 KiB queued in the pipe")
        chunks = []
        while chunk := await asyncio.to_thread(os.read, read_end, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    assert await asyncio.wait_for(proc.wait(), timeout=60) == 0
    text = b"".join(chunks)
    assert len(text) > 65536
    endpoints = json.loads(text)
    assert "servers-list" in {e["endpoint"] for e in endpoints}


def _queued(fd: int) -> int:
    """How many bytes wait to be read from the pipe `fd`."""
    return struct.unpack("i", fcntl.ioctl(fd, termios.FIONREAD, b"\0\0\0\0"))[0]


async def test_a_refused_connection_says_so() -> None:
    url = f"nats://127.0.0.1:{natsserver.free_port()}"
    # A long --timeout: the refusal is reported as a refusal, not as a timeout.
    code, out, err = await hvmesh("server", "list", "--url", url, "--timeout", "60")
    assert (code, out) == (1, "")
    assert err == f"error: cannot connect to NATS at {url}: connection refused\n"


async def test_a_server_that_never_answers_is_a_timeout() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # accept, never greet, until the client hangs up
        writer.close()

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    url = f"nats://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        code, _, err = await hvmesh("server", "list", "--url", url, "--timeout", "1")
    finally:
        server.close()
    assert code == 1
    assert err == f"error: cannot connect to NATS at {url}: no answer within 1s\n"


async def test_an_unknown_option_shows_the_commands_usage() -> None:
    code, out, err = await hvmesh("server", "list", "--bogus")
    assert (code, out) == (2, "")
    assert err.startswith("usage: hvmesh server list ")
    assert err.rstrip().endswith("error: unrecognized arguments: --bogus")
    code, _, err = await hvmesh("flavor", "show", "a", "b")
    assert code == 2 and err.startswith("usage: hvmesh flavor show ")


# --- contexts -------------------------------------------------------------------------------


def write_context(xdg: Path, name: str, fields: dict[str, Any], select: bool = False) -> None:
    directory = xdg / "nats" / "context"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.json").write_text(json.dumps(fields))
    if select:
        (xdg / "nats" / "context.txt").write_text(f"{name}\n")


async def test_the_selected_context_is_used(cloud: Deployment, tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    env = {"XDG_CONFIG_HOME": str(xdg)}
    admin = {
        "url": cloud.server.address,
        "user": "admin",
        "password": cloud.server.passwords["admin"],
    }
    await Cli(cloud).ok("flavor", "create", "m1.small", "--vcpus", "1", "--ram", "256")
    # hvmesh-admin would be refused: the context `nats context select` chose comes first.
    write_context(xdg, "hvmesh-admin", {**admin, "password": "wrong"})
    write_context(xdg, "picked", admin, select=True)
    code, out, err = await hvmesh("flavor", "list", "-f", "value", "-c", "name", env=env)
    assert (code, out) == (0, "m1.small\n"), err

    code, _, err = await hvmesh("flavor", "list", env={**env, "HVMESH_CONTEXT": "hvmesh-admin"})
    assert code == 1 and "Authorization Violation" in err
    code, _, err = await hvmesh("flavor", "list", env={**env, "HVMESH_CONTEXT": "missing"})
    assert code == 1 and err.startswith("error: no NATS context named 'missing'")

    (xdg / "nats" / "context.txt").write_text("gone\n")
    code, _, err = await hvmesh("flavor", "list", env=env)
    assert code == 1 and len(err.splitlines()) == 1
    assert err.startswith("error: the selected NATS context 'gone'")


def make_tls_files(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, made by openssl."""
    directory.mkdir(parents=True, exist_ok=True)
    files = {n: directory / n for n in ("ca.pem", "ca.key", "server.pem", "server.key")}
    files.update({n: directory / n for n in ("client.pem", "client.key")})

    def openssl(*args: str) -> None:
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=hvmesh-test-ca")  # fmt: skip
    for name, ext in (
        ("server", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n"),
        ("client", "extendedKeyUsage=clientAuth\n"),
    ):
        (directory / f"{name}.ext").write_text(ext)
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.pem", "-days", "2",
                "-extfile", f"{name}.ext")  # fmt: skip
    return files


def token_auth(tmp: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    return 'authorization { token: "s3cret-token" }', {"token": "s3cret-token"}, {"token": "nope"}


def nkey_auth(tmp: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER)
    public = nkeys.from_seed(bytearray(seed)).public_key.decode()
    good, bad = tmp / "user.nk", tmp / "other.nk"
    good.write_bytes(seed + b"\n")
    bad.write_bytes(nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER))
    block = f'authorization {{ users: [ {{ nkey: "{public}" }} ] }}'
    return block, {"nkey": str(good)}, {"nkey": str(bad)}


def tls_auth(tmp: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    if not shutil.which("openssl"):
        pytest.skip("openssl is not installed")
    f = make_tls_files(tmp / "tls")
    block = (
        f'tls {{ cert_file: "{f["server.pem"]}", key_file: "{f["server.key"]}", '
        f'ca_file: "{f["ca.pem"]}", verify: true }}'
    )
    good = {"cert": str(f["client.pem"]), "key": str(f["client.key"]), "ca": str(f["ca.pem"])}
    return block, good, {"ca": str(f["ca.pem"])}  # without a client certificate


@contextlib.asynccontextmanager
async def auth_server(tmp: Path, block: str) -> AsyncIterator[int]:
    """A nats-server with JetStream and the authentication `block`; yields its port."""
    port = natsserver.free_port()
    conf = tmp / "auth.conf"
    conf.write_text(f'port: {port}\njetstream {{ store_dir: "{tmp / "js"}" }}\n{block}\n')
    proc = await asyncio.create_subprocess_exec(
        natsserver.find_binary(), "-c", str(conf), stderr=asyncio.subprocess.PIPE
    )
    assert proc.stderr is not None
    log: list[bytes] = []
    async with asyncio.timeout(30):
        while b"Server is ready" not in (line := await proc.stderr.readline()):
            assert line, f"nats-server exited: {b''.join(log).decode()}"
            log.append(line)
    drain = asyncio.create_task(proc.stderr.read())  # keep its log from filling the pipe
    try:
        yield port
    finally:
        proc.terminate()
        await proc.wait()
        await drain


async def _quiet(exc: Exception) -> None:
    """Connection errors at teardown are expected."""


# A context's TLS fields and their names in [nats] of the configuration file.
CONTEXT_TO_CONFIG = {"cert": "tls_cert", "key": "tls_key", "ca": "tls_ca"}
AuthMaker = Callable[[Path], tuple[str, dict[str, Any], dict[str, Any]]]


@pytest.mark.parametrize("make", [token_auth, nkey_auth, tls_auth], ids=["token", "nkey", "tls"])
async def test_contexts_connect_with_tokens_nkeys_and_tls(tmp_path: Path, make: AuthMaker) -> None:
    block, good, bad = make(tmp_path)
    scheme = "tls" if "cert" in good else "nats"
    async with auth_server(tmp_path, block) as port:
        url = f"{scheme}://127.0.0.1:{port}"
        # The API service connects with the same fields, from [nats] of its configuration.
        section = {"url": url, **{CONTEXT_TO_CONFIG.get(k, k): v for k, v in good.items()}}
        cfg = msgspec.convert({"nats": section}, config.Config)
        nc = await connection.connect(cfg.nats, "test-api", error_cb=_quiet)
        api = ApiService(nc, cfg)
        await api.start()
        try:
            xdg = tmp_path / "xdg"
            env = {"XDG_CONFIG_HOME": str(xdg)}
            write_context(xdg, "good", {"url": url, **good}, select=True)
            write_context(xdg, "bad", {"url": url, **bad})
            code, out, err = await hvmesh(
                "flavor", "create", "tiny", "--vcpus", "1", "--ram", "64", "-f", "json", env=env
            )
            assert code == 0, err
            assert json.loads(out)["name"] == "tiny"
            code, out, err = await hvmesh("flavor", "list", "-f", "value", "-c", "name", env=env)
            assert (code, out) == (0, "tiny\n"), err
            code, _, err = await hvmesh("--context", "bad", "flavor", "list", env=env)
            assert code == 1 and len(err.splitlines()) == 1
            assert err.startswith(f"error: cannot connect to NATS at {url}: ")
        finally:
            await api.stop()
            await nc.close()


async def test_a_context_field_hvmesh_cannot_honour_is_refused(tmp_path: Path) -> None:
    xdg = tmp_path / "xdg"
    write_context(xdg, "viansc", {"url": "nats://127.0.0.1:4222", "nsc": "nsc://op/acc/u"})
    code, _, err = await hvmesh(
        "--context", "viansc", "flavor", "list", env={"XDG_CONFIG_HOME": str(xdg)}
    )
    assert code == 1
    assert err.startswith("error: NATS context 'viansc' uses an nsc lookup")


# --- shell completion -----------------------------------------------------------------------


def bash_complete(*words: str) -> list[str]:
    """The candidates bash offers for the command line `words` (the last one being typed)."""
    script = subprocess.run(
        [HVMESH, "complete", "--shell", "bash"], capture_output=True, text=True, check=True
    ).stdout
    call = (
        'source /dev/stdin; COMP_WORDS=("$@"); COMP_CWORD=$(($# - 1)); _hvmesh; '
        'printf "%s\\n" "${COMPREPLY[@]}"'
    )
    done = subprocess.run(
        ["bash", "-c", call, "bash", *words], input=script, capture_output=True, text=True
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return [w for w in done.stdout.splitlines() if w]


def test_bash_completion_offers_commands_options_and_choices() -> None:
    assert bash_complete("hvmesh", "ser") == ["server", "server-group"]
    assert bash_complete("hvmesh", "server", "li") == ["list"]
    assert bash_complete("hvmesh", "server", "event", "") == ["list", "show"]
    assert bash_complete("hvmesh", "--context", "x", "server", "list", "--fo") == ["--format"]
    assert bash_complete("hvmesh", "server", "list", "-f", "") == [
        "table", "json", "yaml", "value", "csv"
    ]  # fmt: skip
    assert bash_complete("hvmesh", "-f", "json", "flavor", "") == [
        "create", "list", "show", "set", "unset", "delete"
    ]  # fmt: skip
    assert bash_complete("hvmesh", "complete", "--shell", "") == ["bash", "zsh"]
    assert "--max-width" in bash_complete("hvmesh", "server", "show", "x", "--")


def test_zsh_completion_in_an_interactive_shell(tmp_path: Path) -> None:
    if not shutil.which("zsh"):
        pytest.skip("zsh is not installed")
    script = subprocess.run(
        [HVMESH, "complete", "--shell", "zsh"], capture_output=True, text=True, check=True
    ).stdout
    (tmp_path / "_hvmesh").write_text(script)
    (tmp_path / ".zshrc").write_text(
        f"autoload -U compinit && compinit -u -d {tmp_path}/.zcompdump\n"
        f"source {tmp_path}/_hvmesh\nPS1='ready> '\n"
    )
    env = {**os.environ, "ZDOTDIR": str(tmp_path), "PATH": f"{BIN}:{os.environ['PATH']}"}
    leader, follower = pty.openpty()
    proc = subprocess.Popen(
        ["zsh", "-i"], stdin=follower, stdout=follower, stderr=follower, env={**env, "TERM": "dumb"}
    )
    os.close(follower)
    try:
        assert b"ready> " in read_until(leader, b"ready> ")
        os.write(leader, b"hvmesh server li\t")
        assert b"hvmesh server list " in read_until(leader, b"list ")
    finally:
        proc.kill()
        proc.wait()
        os.close(leader)


def read_until(fd: int, token: bytes, timeout: float = 20.0) -> bytes:
    """Read a terminal until `token` shows (or `timeout` passes, or it closes)."""
    seen = b""
    deadline = time.monotonic() + timeout
    while token not in seen and time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], deadline - time.monotonic())
        if not ready:
            break
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    return seen
