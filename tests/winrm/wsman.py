"""A WS-Management endpoint speaking the WinRM shell protocol (MS-WSMV), over HTTPS with Basic or NTLM authentication, running commands on a PowerShell interpreter.

It follows the protocol, not one client: SOAP 1.2 envelopes posted to /wsman; Create
(transfer/Create on the cmd resource URI) opens a shell and answers ResourceCreated with
the ShellId selector; Command starts a command and answers its CommandId; Receive waits
up to the request's OperationTimeout for the command and answers its stdout and stderr
as base64 streams and CommandState Done with the ExitCode (or the w:TimedOut fault when
it is still running); Signal terminate ends a command; Delete closes the shell. Every
answer relates to its request's MessageID. A shell or command the server does not know,
an unknown action or resource, and a malformed envelope get a SOAP fault with a
WSManFault detail, as Windows sends them.

`powershell.exe` is the only program: `-EncodedCommand` (UTF-16LE base64) or
`-Command` scripts run on the host's interpreter; errors go to stderr as the CLIXML
error stream PowerShell writes without a console.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import re
import socket
import ssl
import threading
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from xml.sax.saxutils import escape

import spnego
from spnego.exceptions import SpnegoError

from tests.winrm.powershell import Interpreter, Result

NS = {
    "s": "http://www.w3.org/2003/05/soap-envelope",
    "a": "http://schemas.xmlsoap.org/ws/2004/08/addressing",
    "w": "http://schemas.dmtf.org/wbem/wsman/1/wsman.xsd",
    "rsp": "http://schemas.microsoft.com/wbem/wsman/1/windows/shell",
    "x": "http://schemas.xmlsoap.org/ws/2004/09/transfer",
    "f": "http://schemas.microsoft.com/wbem/wsman/1/wsmanfault",
}
CMD_URI = "http://schemas.microsoft.com/wbem/wsman/1/windows/shell/cmd"
SHELL = NS["rsp"]
ACTIONS = {
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Create": "create",
    "http://schemas.xmlsoap.org/ws/2004/09/transfer/Delete": "delete",
    f"{SHELL}/Command": "command",
    f"{SHELL}/Receive": "receive",
    f"{SHELL}/Signal": "signal",
    f"{SHELL}/Send": "send",
}
TERMINATE = f"{SHELL}/signal/terminate"


class Fault(Exception):
    def __init__(self, code: str, subcode: str, reason: str, wsman_code: int, status: int = 500):
        super().__init__(reason)
        self.code, self.subcode, self.reason = code, subcode, reason
        self.wsman_code, self.status = wsman_code, status


def clixml_errors(result: Result) -> str:
    """The error records as powershell.exe writes them to stderr: `#< CLIXML` and the
    formatted lines of each record in <S S="Error">, with a progress record first."""

    def enc(text: str) -> str:
        return escape(text.replace("\r", "_x000D_").replace("\n", "_x000A_"))

    parts = [
        '<Obj S="progress" RefId="0"><TN RefId="0"><T>System.Management.Automation.PSCustomObject</T>'
        '<T>System.Object</T></TN><MS><I64 N="SourceId">1</I64><PR N="Record"><AV>Preparing modules '
        "for first use.</AV><AI>0</AI><Nil /><PI>-1</PI><PC>-1</PC><T>Completed</T><SR>-1</SR>"
        "<SD> </SD></PR></MS></Obj>"
    ]
    for err in result.errors:
        lines = [f"{err.command} : {err.message}" if err.command else err.message]
        lines.append(f"At line:{err.line_no} char:1")
        lines.append(f"+ {err.line}")
        lines.append("+ " + "~" * max(len(err.line), 1))
        lines.append(
            f"    + CategoryInfo          : {err.category}: (:) [{err.command}], Exception"
        )
        lines.append(f"    + FullyQualifiedErrorId : {err.error_id},{err.command}")
        parts.extend(f'<S S="Error">{enc(line + chr(13) + chr(10))}</S>' for line in lines)
    for warning in result.warnings:
        parts.append(f'<S S="warning">{enc(warning + chr(13) + chr(10))}</S>')
    return (
        "#< CLIXML\r\n"
        '<Objs Version="1.1.0.1" xmlns="http://schemas.microsoft.com/powershell/2004/04">'
        + "".join(parts) + "</Objs>"
    )  # fmt: skip


def render(value: Any) -> str:
    """An object PowerShell writes to stdout without ConvertTo-Json (its default view,
    reduced to its string form)."""
    if value is None:
        return ""
    if value is True or value is False:
        return "True" if value else "False"
    return str(value)


@dataclass
class RunningCommand:
    id: str
    done: threading.Event = field(default_factory=threading.Event)
    stdout: bytes = b""
    stderr: bytes = b""
    exit_code: int = 0
    delivered: bool = False


@dataclass
class Shell:
    id: str
    commands: dict[str, RunningCommand] = field(default_factory=dict)


class Endpoint:
    """The WinRM service of one host: shells, commands, and the interpreter they run on."""

    def __init__(self, interpreter: Callable[[], Interpreter], machine: str) -> None:
        self.interpreter = interpreter
        self.machine = machine
        self.shells: dict[str, Shell] = {}
        self.lock = threading.Lock()
        #: Every script run, decoded, for assertions.
        self.scripts: list[str] = []
        #: Set to make each command wait (a command that hangs, until signalled).
        self.hold = threading.Event()
        self.hold.set()
        #: Exceptions of the model itself (a test peer bug), which fail their command.
        self.faults: list[str] = []
        #: The users each NTLM-authenticated connection logged in as.
        self.ntlm_logins: list[str] = []
        #: Ids of the commands a terminate signal ended before they were done.
        self.terminated: list[str] = []

    # --- the operations ---------------------------------------------------------------------

    def handle(self, body: bytes) -> bytes:
        try:
            root = ET.fromstring(body)
        except ET.ParseError as exc:
            raise Fault(
                "s:Sender",
                "w:SchemaValidationError",
                f"The SOAP XML is malformed: {exc}",
                2150858817,
            ) from None
        header = root.find("s:Header", NS)
        body_el = root.find("s:Body", NS)
        if header is None or body_el is None:
            raise Fault(
                "s:Sender",
                "w:SchemaValidationError",
                "The SOAP envelope has no Header or Body.",
                2150858817,
            )
        action = (header.findtext("a:Action", "", NS) or "").strip()
        message_id = (header.findtext("a:MessageID", "", NS) or "").strip()
        resource = (header.findtext("w:ResourceURI", "", NS) or "").strip()
        op = ACTIONS.get(action)
        if op is None:
            raise Fault(
                "s:Sender",
                "a:ActionNotSupported",
                f"The action {action!r} is not supported by the service.",
                2150858858,
            )
        if resource != CMD_URI:
            raise Fault(
                "s:Sender",
                "w:DestinationUnreachable",
                f"The WS-Management service cannot process the request: no resource at {resource!r}.",
                2150858770,
            )
        timeout = parse_duration(header.findtext("w:OperationTimeout", "PT60S", NS) or "PT60S")
        shell_id = None
        for sel in header.iterfind("w:SelectorSet/w:Selector", NS):
            if sel.get("Name") == "ShellId":
                shell_id = (sel.text or "").strip()
        if op == "create":
            return self.envelope(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/CreateResponse",
                message_id,
                self.create(body_el),
            )
        shell = self.shell(shell_id)
        if op == "delete":
            with self.lock:
                self.shells.pop(shell.id, None)
            return self.envelope(
                "http://schemas.xmlsoap.org/ws/2004/09/transfer/DeleteResponse", message_id, ""
            )
        if op == "command":
            return self.envelope(
                f"{SHELL}/CommandResponse", message_id, self.command(shell, body_el)
            )
        if op == "receive":
            return self.envelope(
                f"{SHELL}/ReceiveResponse", message_id, self.receive(shell, body_el, timeout)
            )
        if op == "signal":
            return self.envelope(f"{SHELL}/SignalResponse", message_id, self.signal(shell, body_el))
        return self.envelope(f"{SHELL}/SendResponse", message_id, "<rsp:SendResponse/>")

    def shell(self, shell_id: str | None) -> Shell:
        with self.lock:
            shell = self.shells.get(shell_id or "")
        if shell is None:
            raise Fault(
                "s:Sender",
                "w:InvalidSelectors",
                f"The request for the Windows Remote Shell with ShellId {shell_id} failed because the shell was not found on the server. Possible causes are: the specified ShellId is incorrect or the shell no longer exists on the server. Provide the correct ShellId or create a new shell and retry the operation.",
                2150858843,
            )
        return shell

    def create(self, body: ET.Element) -> str:
        spec = body.find("rsp:Shell", NS)
        if spec is None:
            raise Fault(
                "s:Sender",
                "w:SchemaValidationError",
                "Create needs an rsp:Shell element.",
                2150858817,
            )
        shell = Shell(str(uuid.uuid4()).upper())
        with self.lock:
            self.shells[shell.id] = shell
        return (
            "<x:ResourceCreated><a:Address>https://localhost/wsman</a:Address><a:ReferenceParameters>"
            f"<w:ResourceURI>{CMD_URI}</w:ResourceURI><w:SelectorSet>"
            f'<w:Selector Name="ShellId">{shell.id}</w:Selector></w:SelectorSet>'
            "</a:ReferenceParameters></x:ResourceCreated>"
            f"<rsp:Shell><rsp:ShellId>{shell.id}</rsp:ShellId><rsp:ResourceUri>{CMD_URI}</rsp:ResourceUri>"
            "<rsp:InputStreams>stdin</rsp:InputStreams><rsp:OutputStreams>stdout stderr</rsp:OutputStreams></rsp:Shell>"
        )

    def command(self, shell: Shell, body: ET.Element) -> str:
        line = body.find("rsp:CommandLine", NS)
        if line is None:
            raise Fault(
                "s:Sender",
                "w:SchemaValidationError",
                "Command needs an rsp:CommandLine element.",
                2150858817,
            )
        program = (line.findtext("rsp:Command", "", NS) or "").strip().strip('"')
        args = [a.text or "" for a in line.findall("rsp:Arguments", NS)]
        argv = " ".join(args).split()
        cmd = RunningCommand(str(uuid.uuid4()).upper())
        with self.lock:
            shell.commands[cmd.id] = cmd
        threading.Thread(target=self.execute, args=(cmd, program, argv), daemon=True).start()
        return f"<rsp:CommandResponse><rsp:CommandId>{cmd.id}</rsp:CommandId></rsp:CommandResponse>"

    def execute(self, cmd: RunningCommand, program: str, argv: list[str]) -> None:
        try:
            self.hold.wait()
            if cmd.done.is_set():
                return  # terminated while held
            script = powershell_script(program, argv)
            if script is None:
                cmd.stderr = f"'{program}' is not recognized as an internal or external command.\r\n".encode()
                cmd.exit_code = 1
                return
            self.scripts.append(script)
            result = self.interpreter().run(script)
            cmd.stdout = "".join(render(v) + "\r\n" for v in result.output if v is not None).encode(
                "utf-8"
            )
            if result.errors or result.warnings:
                cmd.stderr = clixml_errors(result).encode("utf-8")
            cmd.exit_code = result.exit_code
        except Exception as exc:  # a fault of the model itself: the command fails loudly
            cmd.stderr, cmd.exit_code = f"test peer fault: {exc!r}".encode(), 1
            self.faults.append(repr(exc))
        finally:
            cmd.done.set()

    def receive(self, shell: Shell, body: ET.Element, timeout: float) -> str:
        stream = body.find("rsp:Receive/rsp:DesiredStream", NS)
        cid = stream.get("CommandId") if stream is not None else None
        cmd = shell.commands.get(cid or "")
        if cmd is None:
            raise Fault(
                "s:Sender",
                "w:InvalidSelectors",
                f"The command {cid} was not found in shell {shell.id}.",
                2150858843,
            )
        if not cmd.done.wait(min(timeout, 30.0)):
            raise Fault(
                "s:Receiver",
                "w:TimedOut",
                "The WS-Management service cannot complete the operation within the time specified in OperationTimeout.",
                2150858793,
            )
        out, err = ("", "") if cmd.delivered else (b64(cmd.stdout), b64(cmd.stderr))
        cmd.delivered = True
        return (
            "<rsp:ReceiveResponse>"
            f'<rsp:Stream Name="stdout" CommandId="{cmd.id}">{out}</rsp:Stream>'
            f'<rsp:Stream Name="stderr" CommandId="{cmd.id}">{err}</rsp:Stream>'
            f'<rsp:Stream Name="stdout" CommandId="{cmd.id}" End="true"></rsp:Stream>'
            f'<rsp:Stream Name="stderr" CommandId="{cmd.id}" End="true"></rsp:Stream>'
            f'<rsp:CommandState CommandId="{cmd.id}" State="{SHELL}/CommandState/Done">'
            f"<rsp:ExitCode>{cmd.exit_code}</rsp:ExitCode></rsp:CommandState>"
            "</rsp:ReceiveResponse>"
        )

    def signal(self, shell: Shell, body: ET.Element) -> str:
        sig = body.find("rsp:Signal", NS)
        cid = sig.get("CommandId") if sig is not None else None
        code = (sig.findtext("rsp:Code", "", NS) if sig is not None else "") or ""
        with self.lock:
            cmd = shell.commands.get(cid or "")
            if cmd is None:
                raise Fault(
                    "s:Sender",
                    "w:InvalidSelectors",
                    f"The command {cid} was not found in shell {shell.id}.",
                    2150858843,
                )
            if code.strip() == TERMINATE:
                shell.commands.pop(cmd.id, None)
                if not cmd.done.is_set():
                    cmd.exit_code = -1
                    cmd.done.set()
                    self.terminated.append(cmd.id)
        return "<rsp:SignalResponse/>"

    # --- envelopes -----------------------------------------------------------------------------

    def envelope(self, action: str, relates_to: str, body: str) -> bytes:
        return (
            f'<s:Envelope xml:lang="en-US" xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" '
            f'xmlns:x="{NS["x"]}" xmlns:w="{NS["w"]}" xmlns:rsp="{NS["rsp"]}">'
            f"<s:Header><a:Action>{action}</a:Action>"
            f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
            f"<a:To>http://schemas.xmlsoap.org/ws/2004/08/addressing/role/anonymous</a:To>"
            f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header>"
            f"<s:Body>{body}</s:Body></s:Envelope>"
        ).encode()

    def fault(self, fault: Fault, relates_to: str = "") -> bytes:
        return (
            f'<s:Envelope xml:lang="en-US" xmlns:s="{NS["s"]}" xmlns:a="{NS["a"]}" '
            f'xmlns:w="{NS["w"]}" xmlns:e="http://schemas.xmlsoap.org/ws/2004/08/eventing">'
            f"<s:Header><a:Action>http://schemas.dmtf.org/wbem/wsman/1/wsman/fault</a:Action>"
            f"<a:MessageID>uuid:{str(uuid.uuid4()).upper()}</a:MessageID>"
            f"<a:RelatesTo>{escape(relates_to)}</a:RelatesTo></s:Header>"
            f"<s:Body><s:Fault><s:Code><s:Value>{fault.code}</s:Value><s:Subcode>"
            f"<s:Value>{fault.subcode}</s:Value></s:Subcode></s:Code>"
            f'<s:Reason><s:Text xml:lang="en-US">{escape(fault.reason)}</s:Text></s:Reason>'
            f'<s:Detail><f:WSManFault xmlns:f="{NS["f"]}" Code="{fault.wsman_code}" '
            f'Machine="{escape(self.machine)}"><f:Message>{escape(fault.reason)}</f:Message>'
            "</f:WSManFault></s:Detail></s:Fault></s:Body></s:Envelope>"
        ).encode()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def parse_duration(text: str) -> float:
    m = re.fullmatch(r"PT(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?", text.strip())
    if m is None:
        return 60.0
    return float(m.group(1) or 0) * 60 + float(m.group(2) or 0)


def powershell_script(program: str, argv: list[str]) -> str | None:
    """The script a powershell.exe command line runs, or None for another program."""
    if program.lower() not in ("powershell", "powershell.exe", "pwsh", "pwsh.exe"):
        return None
    lowered = [a.lower() for a in argv]
    for flag in ("-encodedcommand", "-enc", "-e"):
        if flag in lowered:
            i = lowered.index(flag)
            return base64.b64decode(argv[i + 1]).decode("utf-16-le")
    for flag in ("-command", "-c"):
        if flag in lowered:
            return " ".join(argv[lowered.index(flag) + 1 :])
    return ""


# --- HTTP ------------------------------------------------------------------------------------


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: WinrmHTTPServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    #: This connection's NTLM exchange, and whether it authenticated (NTLM authenticates
    #: the connection: later requests on it carry no Authorization header).
    ntlm: Any = None
    authenticated = False

    def send(self, status: int, body: bytes, headers: list[tuple[str, str]] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/soap+xml;charset=UTF-8")
        self.send_header("Content-Length", str(len(body)))
        for k, v in headers or []:
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def challenge(self, token: str = "", scheme: str = "") -> None:
        if token:
            self.send(401, b"", [("WWW-Authenticate", f"{scheme} {token}")])
            return
        offers = [("WWW-Authenticate", 'Basic realm="WSMAN"')]
        if "ntlm" in self.server.schemes:
            offers += [("WWW-Authenticate", "Negotiate"), ("WWW-Authenticate", "NTLM")]
        self.send(401, b"", offers)

    def authenticate(self) -> bool:
        """Basic on every request, or NTLM once per connection (Negotiate, Challenge,
        Authenticate); False when a 401 was sent."""
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if not header and self.authenticated:
            return True
        if scheme.lower() == "basic" and "basic" in self.server.schemes:
            if self.server.basic_ok(value):
                return True
        elif scheme.lower() in ("ntlm", "negotiate") and "ntlm" in self.server.schemes:
            try:
                token = base64.b64decode(value)
                if token[8:12] == b"\x01\x00\x00\x00":  # NEGOTIATE_MESSAGE
                    self.ntlm = spnego.server(protocol="ntlm")
                    out = self.ntlm.step(token)
                    self.challenge(base64.b64encode(out or b"").decode(), scheme)
                    return False
                if self.ntlm is not None and token[8:12] == b"\x03\x00\x00\x00":
                    self.ntlm.step(token)
                    if self.ntlm.complete:
                        self.authenticated = True
                        self.server.endpoint.ntlm_logins.append(self.ntlm.client_principal)
                        return True
            except (ValueError, SpnegoError):
                pass
            self.ntlm = None
        self.challenge()
        return False

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length)
        if self.path.rstrip("/").lower() != "/wsman":
            self.send(404, b"")
            return
        if not self.authenticate():
            return
        ctype = self.headers.get("Content-Type", "")
        endpoint = self.server.endpoint
        if "application/soap+xml" not in ctype.lower():
            self.send(415, b"")
            return
        try:
            self.send(200, endpoint.handle(body))
        except Fault as fault:
            mid = ""
            with_id = re.search(rb"<[\w:]*MessageID[^>]*>([^<]+)<", body)
            if with_id:
                mid = with_id.group(1).decode("utf-8", "replace").strip()
            self.send(fault.status, endpoint.fault(fault, mid))


class WinrmHTTPServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    allow_reuse_address = True

    def __init__(
        self,
        endpoint: Endpoint,
        context: ssl.SSLContext,
        users: dict[str, str],
        port: int = 0,
        schemes: tuple[str, ...] = ("basic", "ntlm"),
    ) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.schemes = schemes
        self.endpoint = endpoint
        self.users = users
        self.context = context
        self.conns: set[socket.socket] = set()

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, addr = super().get_request()
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        wrapped = self.context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        self.conns.add(wrapped)
        return wrapped, addr

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that went away or failed the TLS handshake

    def basic_ok(self, value: str) -> bool:
        try:
            user, _, password = base64.b64decode(value).decode("utf-8").partition(":")
        except ValueError:
            return False
        return self.users.get(user.lower().split("\\")[-1]) == password

    def drop_connections(self) -> None:
        for conn in list(self.conns):
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()
        self.conns.clear()
