"""`hvmesh api schema [ENDPOINT]`: the API's request and reply JSON Schemas, from $SRV.INFO.

The schemas are those the running API publishes in its micro endpoints' metadata, so
they are the ones it validates against, whatever version of hvmesh is installed here.
An endpoint is named as $SRV.INFO names it (`servers-create`), by its subject
(`hvmesh.api.servers.create`) or by resource and verb (`servers.create`).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from hvmesh.core.cli import lazy, output
from hvmesh.core.cli.connect import connect_cli
from hvmesh.core.cli.errors import CliError
from hvmesh.core.protocol import subjects

if TYPE_CHECKING:
    import nats.errors as nats_errors

    from hvmesh.core.ops import launcher
else:
    nats_errors = lazy.module("nats.errors")
    launcher = lazy.module("hvmesh.core.ops.launcher")

INFO_SUBJECT = subjects.API_INFO


async def fetch_info(args: argparse.Namespace) -> dict[str, Any]:
    """One API instance's $SRV.INFO reply."""
    nc = await connect_cli(args)
    try:
        msg = await nc.request(INFO_SUBJECT, b"", timeout=args.timeout)
    except nats_errors.NoRespondersError:
        raise CliError(
            f"nothing answers {INFO_SUBJECT}: is hvmesh-api running, and does this account "
            "import it (nats.conf)?"
        ) from None
    except nats_errors.TimeoutError:
        raise CliError(f"no reply on {INFO_SUBJECT} within {args.timeout:g}s") from None
    finally:
        await nc.close()
    info: dict[str, Any] = json.loads(msg.data)
    return info


def describe(endpoint: dict[str, Any]) -> dict[str, Any]:
    """An endpoint as the command shows it: name, subject and its two schemas."""
    meta = endpoint.get("metadata") or {}
    return {
        "endpoint": endpoint["name"],
        "subject": endpoint["subject"],
        "request": json.loads(meta.get("request_schema", "{}")),
        "reply": json.loads(meta.get("reply_schema", "{}")),
    }


def fields(schema: dict[str, Any]) -> str:
    """The top-level fields a request schema takes (required ones marked *), for tables."""
    body = schema
    ref = schema.get("$ref", "")
    if ref.startswith("#/$defs/"):
        body = schema.get("$defs", {}).get(ref.removeprefix("#/$defs/"), {})
    if "anyOf" in body or "oneOf" in body:
        return "(one of several bodies)"
    required = set(body.get("required", []))
    names = [f"{n}*" if n in required else n for n in body.get("properties", {})]
    return ", ".join(names) or f"({body.get('type', 'any')})"


def matches(endpoint: dict[str, Any], wanted: str) -> bool:
    subject = endpoint["subject"]
    return wanted in (
        endpoint["endpoint"],
        subject,
        subject.removeprefix(subjects.API_PREFIX + "."),
    )


def cmd_api_schema(args: argparse.Namespace) -> None:
    info = launcher.run(fetch_info(args))
    endpoints = [describe(ep) for ep in info.get("endpoints", [])]
    if args.endpoint:
        found = [ep for ep in endpoints if matches(ep, args.endpoint)]
        if not found:
            raise CliError(
                f"no endpoint {args.endpoint!r} in {subjects.API_SERVICE} "
                f"(`hvmesh api schema` lists its {len(endpoints)} endpoints)"
            )
        output.emit(found[0], args.format)
        return
    if output.for_people(args.format):
        rows = [
            {"endpoint": ep["endpoint"], "subject": ep["subject"], "fields": fields(ep["request"])}
            for ep in endpoints
        ]
        output.emit(rows, args.format, ["endpoint", "subject", "fields"])
        return
    output.emit(endpoints, args.format)


def add_parsers(sub: Any, leaf: Any) -> None:
    """`api schema` under `api` (which, without a sub-command, runs the API service)."""
    api = sub.choices["api"]
    actions = api.add_subparsers(dest="api_action", required=False, metavar="ACTION")
    p = leaf(actions, "schema", cmd_api_schema, "print the API's request and reply JSON Schemas")
    p.add_argument(
        "endpoint",
        nargs="?",
        metavar="ENDPOINT",
        help="one endpoint: servers-create, servers.create or hvmesh.api.servers.create",
    )
