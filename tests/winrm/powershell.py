"""A small PowerShell interpreter for the WinRM test peer: tokenizes and parses scripts, then runs their cmdlet invocations against registered cmdlets.

It reads what PowerShell reads, not whole scripts: statements split by newlines and `;`,
`$var = ...` assignments, pipelines, cmdlet invocations with `-Param value`, switch
parameters and positional values, single-quoted strings ('' escapes), numbers,
`$true`/`$false`/`$null`, `$var.Property` access, `(...)` sub-expressions, comma lists,
and the few .NET calls scripts decode their data with ([Convert]::FromBase64String,
[Text.Encoding]::UTF8.GetString). A value in quotes is only ever data: nothing inside
a string is parsed again. Errors are PowerShell's: a parse error stops the script before
anything runs; a cmdlet's error stops it under $ErrorActionPreference = 'Stop' (or
-ErrorAction Stop) and is dropped under -ErrorAction SilentlyContinue.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


class PSError(Exception):
    """A PowerShell error record: the message, its category and its error id."""

    def __init__(
        self, message: str, category: str = "InvalidOperation", error_id: str = ""
    ) -> None:
        super().__init__(message)
        self.message = message
        self.category = category
        self.error_id = error_id
        self.command = ""
        self.line = ""
        self.line_no = 0
        #: Stops the script whatever $ErrorActionPreference says (-ErrorAction Stop).
        self.stop = False


class ParseError(PSError):
    def __init__(self, message: str, line_no: int = 1) -> None:
        super().__init__(message, "ParserError", "UnexpectedToken")
        self.line_no = line_no


# --- tokens ---------------------------------------------------------------------------------


@dataclass
class Tok:
    kind: str  # word, param, var, str, num, type, op, nl
    text: str
    value: Any = None
    line: int = 1


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t]+|`\r?\n)
  | (?P<comment>\#[^\n]*)
  | (?P<nl>\r?\n|;)
  | (?P<str>'(?:[^']|'')*')
  | (?P<dstr>"[^"`$]*")
  | (?P<var>\$[A-Za-z_][A-Za-z0-9_]*)
  | (?P<type>\[[A-Za-z_][A-Za-z0-9_.]*\])
  | (?P<num>\d+(?:\.\d+)?(?![A-Za-z0-9_]))
  | (?P<param>-[A-Za-z][A-Za-z0-9]*)
  | (?P<op>::|\||\(|\)|,|=|\.)
  | (?P<word>[A-Za-z0-9_*?\\\-]+)
    """,
    re.X,
)


def tokenize(script: str) -> list[Tok]:
    out: list[Tok] = []
    pos, line = 0, 1
    while pos < len(script):
        m = _TOKEN.match(script, pos)
        if m is None:
            raise ParseError(f"Unexpected token '{script[pos]}' in expression or statement.", line)
        kind = m.lastgroup or ""
        text = m.group()
        pos = m.end()
        if kind in ("ws", "comment"):
            line += text.count("\n")
            continue
        if kind == "nl":
            out.append(Tok("nl", text, line=line))
            line += text.count("\n")
            continue
        if kind == "str":
            out.append(Tok("str", text, text[1:-1].replace("''", "'"), line))
        elif kind == "dstr":
            out.append(Tok("str", text, text[1:-1], line))
        elif kind == "num":
            out.append(Tok("num", text, float(text) if "." in text else int(text), line))
        elif kind == "var":
            out.append(Tok("var", text, text[1:], line))
        elif kind == "type":
            out.append(Tok("type", text, text[1:-1], line))
        else:
            out.append(Tok(kind, text, text, line))
    out.append(Tok("nl", "", line=line))
    return out


# --- syntax -----------------------------------------------------------------------------------


@dataclass
class Command:
    name: str
    args: list[tuple[str | None, Any]]  # (parameter name or None, value node or SWITCH)
    line: int


@dataclass
class Pipeline:
    elements: list[Any]  # a Command or a value node


@dataclass
class Statement:
    target: str | None
    pipeline: Pipeline
    line: int
    text: str = ""


SWITCH = object()  # a switch parameter's value


class Parser:
    def __init__(self, tokens: list[Tok], switches: Callable[[str, str], bool]) -> None:
        self.toks = tokens
        self.i = 0
        self.is_switch = switches

    def peek(self, k: int = 0) -> Tok:
        return self.toks[min(self.i + k, len(self.toks) - 1)]

    def take(self) -> Tok:
        tok = self.peek()
        self.i += 1
        return tok

    def expect(self, text: str) -> None:
        tok = self.take()
        if tok.text != text:
            raise ParseError(f"Missing '{text}' (found '{tok.text}').", tok.line)

    def statements(self) -> list[Statement]:
        out: list[Statement] = []
        while self.i < len(self.toks):
            tok = self.peek()
            if tok.kind == "nl":
                self.i += 1
                continue
            target = None
            if tok.kind == "var" and self.peek(1).text == "=":
                target = tok.value
                self.i += 2
            out.append(Statement(target, self.pipeline(), tok.line))
            end = self.peek()
            if end.kind != "nl":
                raise ParseError(
                    f"Unexpected token '{end.text}' in expression or statement.", end.line
                )
        return out

    def pipeline(self) -> Pipeline:
        elements = [self.element()]
        while self.peek().text == "|":
            self.i += 1
            while self.peek().kind == "nl" and self.peek().text != ";":
                self.i += 1
            if self.peek().kind != "word":
                raise ParseError(
                    "Expressions are only allowed as the first element of a pipeline.",
                    self.peek().line,
                )
            elements.append(self.command())
        return Pipeline(elements)

    def element(self) -> Any:
        tok = self.peek()
        if tok.kind == "word" and not tok.text[0].isdigit():
            return self.command()
        return self.expression()

    def command(self) -> Command:
        tok = self.take()
        args: list[tuple[str | None, Any]] = []
        while True:
            nxt = self.peek()
            if nxt.kind == "nl" or nxt.text in ("|", ")"):
                break
            if nxt.kind == "param":
                self.i += 1
                pname = nxt.text[1:]
                after = self.peek()
                if (
                    self.is_switch(tok.text, pname)
                    or after.kind in ("nl", "param")
                    or after.text in ("|", ")")
                ):
                    args.append((pname, SWITCH))
                else:
                    args.append((pname, self.argument()))
            else:
                args.append((None, self.argument()))
        return Command(tok.text, args, tok.line)

    def argument(self) -> Any:
        items = [self.primary(argument_mode=True)]
        while self.peek().text == ",":
            self.i += 1
            items.append(self.primary(argument_mode=True))
        return items[0] if len(items) == 1 else ("list", items)

    def expression(self) -> Any:
        node = self.primary(argument_mode=False)
        if self.peek().text == ",":
            items = [node]
            while self.peek().text == ",":
                self.i += 1
                items.append(self.primary(argument_mode=False))
            return ("list", items)
        return node

    def primary(self, argument_mode: bool) -> Any:
        tok = self.take()
        node: Any
        if tok.kind == "str" or tok.kind == "num":
            node = ("lit", tok.value)
        elif tok.kind == "var":
            node = ("var", tok.value)
        elif tok.text == "(":
            node = ("sub", self.pipeline())
            self.expect(")")
        elif tok.kind == "type":
            self.expect("::")
            member = self.take()
            if member.kind != "word":
                raise ParseError(f"Missing member name after '{tok.text}::'.", member.line)
            node = ("static", tok.value, member.text)
            if self.peek().text == "(":
                node = ("call", node, self.call_args())
        elif tok.kind == "word" and argument_mode:
            return ("lit", tok.text)  # a bareword argument is a string
        else:
            raise ParseError(f"Unexpected token '{tok.text}' in expression or statement.", tok.line)
        while self.peek().text == "." and self.peek(1).kind == "word":
            self.i += 1
            name = self.take().text
            node = ("member", node, name)
            if self.peek().text == "(":
                node = ("call", node, self.call_args())
        return node

    def call_args(self) -> list[Any]:
        self.expect("(")
        args: list[Any] = []
        while self.peek().text != ")":
            args.append(Pipeline([self.primary(argument_mode=False)]))  # one per comma
            if self.peek().text == ",":
                self.i += 1
        self.expect(")")
        return args


# --- running ----------------------------------------------------------------------------------


class PSObject(dict):  # type: ignore[type-arg]
    """A PSCustomObject: properties by name, looked up without regard to case."""

    def prop(self, name: str) -> Any:
        for key, value in self.items():
            if key.lower() == name.lower():
                return value
        return None


def member(obj: Any, name: str) -> Any:
    if isinstance(obj, PSObject):
        return obj.prop(name)
    if isinstance(obj, dict):
        return PSObject(obj).prop(name)
    if isinstance(obj, list) and name.lower() == "count":
        return len(obj)
    if isinstance(obj, (bytes, str)) and name.lower() == "length":
        return len(obj)
    getter = getattr(obj, "ps_property", None)
    if getter is not None:
        return getter(name)
    return None


def method(obj: Any, name: str) -> Any:
    """An object's .NET method by name, without regard to case (None when it has none)."""
    for attr in dir(obj):
        if attr.lower() == name.lower() and not attr.startswith("_"):
            return getattr(obj, attr)
    return None


def to_ps(value: Any) -> Any:
    """JSON as ConvertFrom-Json gives it: objects as PSObjects."""
    if isinstance(value, dict):
        return PSObject({k: to_ps(v) for k, v in value.items()})
    if isinstance(value, list):
        return [to_ps(v) for v in value]
    return value


class UTF8:
    @staticmethod
    def GetString(data: Any) -> str:
        return bytes(data).decode("utf-8")


def _from_base64(text: Any) -> bytes:
    try:
        return base64.b64decode(str(text), validate=True)
    except ValueError:
        raise PSError(
            'Exception calling "FromBase64String" with "1" argument(s): "The input is not a '
            'valid Base-64 string as it contains a non-base 64 character."',
            "NotSpecified",
            "FormatException",
        ) from None


STATICS: dict[tuple[str, str], Any] = {
    ("convert", "frombase64string"): _from_base64,
    ("convert", "tobase64string"): lambda data: base64.b64encode(bytes(data)).decode("ascii"),
    ("text.encoding", "utf8"): UTF8,
    ("io.seekorigin", "begin"): "Begin",
}

Cmdlet = Callable[["Invocation"], list[Any]]


@dataclass
class Invocation:
    """One cmdlet call as the cmdlet sees it: its bound parameters and its pipeline input."""

    name: str
    params: dict[str, Any]
    input: list[Any]
    warnings: list[str] = field(default_factory=list)

    def get(self, name: str, default: Any = None) -> Any:
        for key, value in self.params.items():
            if key.lower() == name.lower():
                return value
        return default

    def has(self, name: str) -> bool:
        return any(key.lower() == name.lower() for key in self.params)

    def switch(self, name: str) -> bool:
        value = self.get(name, False)
        return value is True or value is SWITCH


@dataclass
class CmdletSpec:
    run: Cmdlet
    params: set[str]  # every parameter it takes (lower case)
    switches: set[str] = field(default_factory=set)


COMMON = {"erroraction", "warningaction", "verbose", "confirm", "whatif"}


@dataclass
class Result:
    output: list[Any]
    errors: list[PSError]
    warnings: list[str]
    exit_code: int


class Interpreter:
    def __init__(
        self, cmdlets: dict[str, CmdletSpec], statics: dict[tuple[str, str], Any] | None = None
    ) -> None:
        self.cmdlets = {k.lower(): v for k, v in cmdlets.items()}
        #: .NET types' static members, by (type, member) in lower case, beside STATICS.
        self.statics = STATICS | (statics or {})
        #: Every cmdlet invocation run, as (name, bound parameters), for assertions.
        self.calls: list[tuple[str, dict[str, Any]]] = []

    def is_switch(self, command: str, param: str) -> bool:
        spec = self.cmdlets.get(command.lower())
        return spec is not None and param.lower() in spec.switches

    def run(self, script: str) -> Result:
        variables: dict[str, Any] = {"true": True, "false": False, "null": None,
                                     "erroractionpreference": "Continue"}  # fmt: skip
        errors: list[PSError] = []
        warnings: list[str] = []
        output: list[Any] = []
        lines = script.splitlines()
        try:
            statements = Parser(tokenize(script), self.is_switch).statements()
        except ParseError as exc:
            exc.line = lines[exc.line_no - 1] if 0 < exc.line_no <= len(lines) else ""
            return Result([], [exc], [], 1)
        failed = False
        for st in statements:
            st.text = lines[st.line - 1] if 0 < st.line <= len(lines) else ""
            try:
                value = self.pipeline(st.pipeline, variables, warnings)
                failed = False
            except PSError as exc:
                exc.line, exc.line_no = st.text, st.line
                errors.append(exc)
                failed = True
                if str(variables.get("erroractionpreference", "")).lower() == "stop" or exc.stop:
                    return Result(output, errors, warnings, 1)
                continue
            if st.target is None:
                output.extend(value)
            elif st.target.lower() != "null":  # $null = ...: the value is dropped
                variables[st.target.lower()] = value[0] if len(value) == 1 else value
        return Result(output, errors, warnings, 1 if failed else 0)

    def pipeline(self, pipe: Pipeline, variables: dict[str, Any], warnings: list[str]) -> list[Any]:
        items: list[Any] = []
        for n, element in enumerate(pipe.elements):
            if isinstance(element, Command):
                items = self.invoke(element, items if n else [], variables, warnings)
            else:
                value = self.value(element, variables, warnings)
                items = list(value) if isinstance(value, list) else [value]
        return items

    def invoke(
        self, cmd: Command, items: list[Any], variables: dict[str, Any], warnings: list[str]
    ) -> list[Any]:
        spec = self.cmdlets.get(cmd.name.lower())
        if spec is None:
            raise PSError(
                f"The term '{cmd.name}' is not recognized as the name of a cmdlet, function, "
                "script file, or operable program.",
                "ObjectNotFound",
                "CommandNotFoundException",
            )
        params: dict[str, Any] = {}
        positional: list[Any] = []
        for pname, node in cmd.args:
            if pname is None:
                positional.append(self.value(node, variables, warnings))
                continue
            if pname.lower() not in spec.params | COMMON:
                err = PSError(
                    f"A parameter cannot be found that matches parameter name '{pname}'.",
                    "InvalidArgument",
                    "NamedParameterNotFound",
                )
                err.command = cmd.name
                raise err
            params[pname] = SWITCH if node is SWITCH else self.value(node, variables, warnings)
        if positional:
            params["__positional"] = positional
        inv = Invocation(cmd.name, params, items)
        self.calls.append(
            (
                cmd.name,
                {k: v for k, v in params.items() if v is not SWITCH}
                | {k: True for k, v in params.items() if v is SWITCH},
            )
        )
        action = str(inv.get("ErrorAction", "")).lower()
        try:
            out = spec.run(inv)
        except PSError as exc:
            exc.command = exc.command or cmd.name
            if action in ("silentlycontinue", "ignore"):
                return []
            if action == "stop":
                exc.stop = True
            raise
        warnings.extend(f"{cmd.name} : {w}" for w in inv.warnings)
        return out

    def value(self, node: Any, variables: dict[str, Any], warnings: list[str]) -> Any:
        kind = node[0]
        if kind == "lit":
            return node[1]
        if kind == "var":
            return variables.get(node[1].lower())
        if kind == "list":
            return [self.value(n, variables, warnings) for n in node[1]]
        if kind == "sub":
            got = self.pipeline(node[1], variables, warnings)
            return got[0] if len(got) == 1 else (got if got else None)
        if kind == "member":
            return member(self.value(node[1], variables, warnings), node[2])
        if kind == "static":
            type_name = node[1].lower().removeprefix("system.")
            target = self.statics.get((type_name, node[2].lower()))
            if target is None:
                raise PSError(
                    f"Unable to find type [{node[1]}].", "InvalidOperation", "TypeNotFound"
                )
            return target
        if kind == "call":
            fn_node, args = node[1], node[2]
            fn = self.value(fn_node, variables, warnings) if fn_node[0] == "static" else None
            if fn_node[0] == "member":
                owner = self.value(fn_node[1], variables, warnings)
                fn = method(owner, fn_node[2])
            if not callable(fn):
                raise PSError("Method invocation failed.", "InvalidOperation", "MethodNotFound")
            values = []
            for arg in args:
                got = self.pipeline(arg, variables, warnings)
                values.append(got[0] if len(got) == 1 else got)
            return fn(*values)
        raise PSError(f"cannot evaluate {kind}")


# --- cmdlets every script uses --------------------------------------------------------------


def json_value(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: json_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_value(v) for v in value]
    as_json = getattr(value, "ps_json", None)
    if as_json is not None:
        return json_value(as_json())
    if isinstance(value, bytes):
        return list(value)
    return value


def convert_to_json(inv: Invocation) -> list[Any]:
    items = inv.input if inv.input else [inv.get("InputObject")]
    data = json_value(items[0] if len(items) == 1 else items)
    compress = inv.switch("Compress")
    return [json.dumps(data, separators=(",", ":")) if compress else json.dumps(data, indent=4)]


def convert_from_json(inv: Invocation) -> list[Any]:
    text = "\n".join(str(i) for i in inv.input) if inv.input else str(inv.get("InputObject"))
    try:
        return [to_ps(json.loads(text))]
    except ValueError:
        raise PSError(
            "Invalid JSON primitive.", "NotSpecified", "System.ArgumentException"
        ) from None


def select_object(inv: Invocation) -> list[Any]:
    names = inv.get("Property", inv.get("__positional", [None])[0])
    names = names if isinstance(names, list) else [names]
    return [PSObject({str(n): member(item, str(n)) for n in names}) for item in inv.input]


def out_null(inv: Invocation) -> list[Any]:
    return []


BASE_CMDLETS: dict[str, CmdletSpec] = {
    "ConvertTo-Json": CmdletSpec(
        convert_to_json, {"compress", "depth", "inputobject"}, {"compress"}
    ),
    "ConvertFrom-Json": CmdletSpec(convert_from_json, {"inputobject"}),
    "Select-Object": CmdletSpec(select_object, {"property", "__positional"}),
    "Out-Null": CmdletSpec(out_null, {"inputobject"}),
}
