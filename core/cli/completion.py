"""`hvmesh complete --shell bash|zsh`: a shell completion script made from hvmesh's own parser.

The script holds three lookup functions generated from the argparse tree (the commands
under each command path, the options of each path, and which options take a value and
their choices) and one function, `_hvmesh_candidates`, written in the shell language bash
and zsh share, that walks the words typed so far and prints what may come next. The
bash and zsh drivers only hand that list to their shell.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Node:
    """One command path: the commands below it, its options, and the options' values."""

    subcommands: list[str] = field(default_factory=list)
    options: list[str] = field(default_factory=list)
    # option -> its choices ([] for a free value); flags are not listed
    values: dict[str, list[str]] = field(default_factory=dict)


def tree(parser: argparse.ArgumentParser) -> dict[str, Node]:
    """Every command path of `parser` ("" for the top, "server list", ...) and its node."""
    nodes: dict[str, Node] = {}

    def walk(p: argparse.ArgumentParser, path: str) -> None:
        node = nodes.setdefault(path, Node())
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    node.subcommands.append(name)
                    walk(sub, f"{path} {name}".strip())
            for flag in action.option_strings:
                if flag not in node.options:
                    node.options.append(flag)
                if action.nargs != 0:
                    node.values[flag] = [str(c) for c in action.choices or []]

    walk(parser, "")
    return nodes


def _q(text: str) -> str:
    """`text` in double quotes for a shell case pattern or echo (no $, `, \\ or " in it)."""
    if any(c in text for c in '$`\\"'):
        raise ValueError(f"cannot quote {text!r} for the completion script")
    return f'"{text}"'


def _lookup(name: str, comment: str, cases: list[tuple[list[str], str]]) -> str:
    lines = [f"# {comment}", f"{name}() {{", '  case "$1" in']
    for patterns, words in cases:
        lines.append(f"    {'|'.join(patterns)}) echo {_q(words)} ;;")
    lines += ["  esac", "}"]
    return "\n".join(lines)


def _value_cases(nodes: dict[str, Node]) -> list[tuple[list[str], str]]:
    """Patterns on "PATH|OPTION": one per option when it means the same on every path."""
    specs: dict[str, set[str]] = {}
    for node in nodes.values():
        for flag in node.options:
            specs.setdefault(flag, set()).add(
                "=" + " ".join(node.values[flag]) if flag in node.values else ""
            )
    cases: dict[str, list[str]] = {}
    for flag, seen in specs.items():
        if seen == {""}:
            continue
        if len(seen) == 1:
            cases.setdefault(next(iter(seen)), []).append(f"*{_q('|' + flag)}")
            continue
        for path, node in nodes.items():
            if flag in node.values:
                spec = "=" + " ".join(node.values[flag])
                cases.setdefault(spec, []).append(_q(f"{path}|{flag}"))
    return [(patterns, spec) for spec, patterns in cases.items()]


WALKER = """\
# Prints what may follow the words "$@" (the program name first, the word being
# completed last): the choices of an option's value, else the commands below the
# command typed so far, else its options.
_hvmesh_candidates() {
  local _hv_cmd="" _hv_value="" _hv_word="" _hv_subs=""
  shift
  while [ $# -gt 1 ]; do
    _hv_word=$1
    shift
    if [ -n "$_hv_value" ]; then
      _hv_value=""
      continue
    fi
    case "$_hv_word" in
      --*=*) continue ;;
      -*) _hv_value=$(_hvmesh_option_value "$_hv_cmd|$_hv_word"); continue ;;
    esac
    _hv_subs=" $(_hvmesh_subcommands "$_hv_cmd") "
    case "$_hv_subs" in
      *" $_hv_word "*) _hv_cmd="${_hv_cmd:+$_hv_cmd }$_hv_word" ;;
    esac
  done
  if [ -n "$_hv_value" ]; then
    echo "${_hv_value#=}"
    return
  fi
  case "$1" in
    -*) _hvmesh_options "$_hv_cmd" ;;
    *)
      _hv_subs=$(_hvmesh_subcommands "$_hv_cmd")
      if [ -n "$_hv_subs" ]; then echo "$_hv_subs"; else _hvmesh_options "$_hv_cmd"; fi
      ;;
  esac
}"""

BASH_DRIVER = """\
_hvmesh() {
  local cur=${COMP_WORDS[COMP_CWORD]}
  COMPREPLY=($(compgen -W "$(_hvmesh_candidates "${COMP_WORDS[@]:0:COMP_CWORD+1}")" -- "$cur"))
}
complete -o default -F _hvmesh hvmesh"""

ZSH_DRIVER = """\
_hvmesh() {
  local _hv_out
  _hv_out=$(_hvmesh_candidates "${(@)words[1,CURRENT]}")
  if [[ -n $_hv_out ]]; then
    compadd -- ${=_hv_out}
  else
    _files
  fi
}
if [[ ${zsh_eval_context[-1]} == loadautofunc ]]; then
  _hvmesh "$@"
elif (( $+functions[compdef] )); then
  compdef _hvmesh hvmesh
fi"""

HEADERS = {
    "bash": "# bash completion for hvmesh. Load it with: source <(hvmesh complete --shell bash)",
    "zsh": "#compdef hvmesh\n# zsh completion for hvmesh. Load it (after compinit) with:\n"
    "#   source <(hvmesh complete --shell zsh)\n# or save it as _hvmesh in a directory of $fpath.",
}


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    """The completion script of `parser` for `shell` ("bash" or "zsh")."""
    nodes = tree(parser)
    subcommands = [([_q(p)], " ".join(n.subcommands)) for p, n in nodes.items() if n.subcommands]
    options = [([_q(p)], " ".join(n.options)) for p, n in nodes.items() if n.options]
    parts = [
        HEADERS[shell],
        _lookup("_hvmesh_subcommands", "the commands below a command path", subcommands),
        _lookup("_hvmesh_options", "the options of a command path", options),
        _lookup(
            "_hvmesh_option_value",
            'for "PATH|OPTION": "=" and its choices when the option takes a value',
            _value_cases(nodes),
        ),
        WALKER,
        BASH_DRIVER if shell == "bash" else ZSH_DRIVER,
    ]
    return "\n\n".join(parts) + "\n"


def cmd_complete(args: argparse.Namespace) -> None:
    print(script(args.root_parser, args.shell), end="")


def add_parsers(sub: Any, leaf: Callable[..., Any], root: argparse.ArgumentParser) -> None:
    """`hvmesh complete`, whose script is made from `root`, the whole `hvmesh` parser."""
    p = leaf(sub, "complete", cmd_complete, "print a shell completion script (bash or zsh)")
    p.add_argument("--shell", choices=["bash", "zsh"], default="bash", help="(default: bash)")
    p.set_defaults(root_parser=root)
