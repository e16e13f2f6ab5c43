"""Configuration: one Nova-style INI file, every option declared once with its default and help.

Each section is a msgspec Struct whose fields carry their help text; `hvmesh config sample`
prints all of them. Values are validated when the file is read, so a typo'd option or a
wrong type fails at start with a message naming the section and option.
"""

from __future__ import annotations

import configparser
import os
import socket
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from hvmesh.core.config_drivers import (
    FakeSection,
    HypervSection,
    IronicSection,
    LibvirtSection,
    VmwareSection,
)
from hvmesh.core.config_policy import PolicySection
from hvmesh.core.config_quota import QuotaSection
from hvmesh.core.config_sections import (
    ApiSection,
    ComputeSection,
    ConductorSection,
    ConsoleSection,
    MetadataSection,
    RestSection,
    SchedulerSection,
    SiteSection,
)

__all__ = [
    "ApiSection",
    "ComputeSection",
    "ConductorSection",
    "Config",
    "ConfigError",
    "ConsoleSection",
    "DefaultSection",
    "FakeSection",
    "HypervSection",
    "IronicSection",
    "LibvirtSection",
    "MetadataSection",
    "NatsSection",
    "PluginsSection",
    "PolicySection",
    "QuotaSection",
    "RestSection",
    "SchedulerSection",
    "SiteSection",
    "VmwareSection",
]


class DefaultSection(Struct, kw_only=True, forbid_unknown_fields=True):
    log_level: Annotated[str, Meta(description="Log level: debug, info, warning or error.")] = (
        "info"
    )
    log_format: Annotated[
        Literal["auto", "json", "console"],
        Meta(description="json, console (readable lines) or auto: console on a terminal."),
    ] = "auto"
    service_down_time: Annotated[
        float, Meta(description="Seconds without a heartbeat after which a host counts as down.")
    ] = 60.0
    start_timeout: Annotated[
        float,
        Meta(
            gt=0,
            description="Seconds a service keeps retrying its start while NATS or JetStream "
            "is unreachable or timing out, before it exits.",
        ),
    ] = 120.0


class NatsSection(Struct, kw_only=True, forbid_unknown_fields=True):
    url: Annotated[str, Meta(description="NATS server URL(s), comma-separated.")] = (
        "nats://127.0.0.1:4222"
    )
    user: Annotated[str, Meta(description="NATS user name.")] = ""
    password: Annotated[str, Meta(description="NATS password.")] = ""
    creds: Annotated[
        str, Meta(description="Path to a NATS .creds file (instead of a password).")
    ] = ""
    token: Annotated[str, Meta(description="NATS authentication token.")] = ""
    nkey: Annotated[
        str, Meta(description="Path to an nkey seed file (instead of a password or .creds).")
    ] = ""
    user_jwt: Annotated[str, Meta(description="A user JWT; the nkey seed file signs for it.")] = ""
    tls_cert: Annotated[
        str, Meta(description="Path to a TLS client certificate (PEM); needs tls_key.")
    ] = ""
    tls_key: Annotated[str, Meta(description="Path to the TLS client certificate's key.")] = ""
    tls_ca: Annotated[
        str, Meta(description="Path to the CA certificates (PEM) the server's is checked against.")
    ] = ""
    tls_first: Annotated[
        bool, Meta(description="Start TLS before the server's greeting (handshake first).")
    ] = False
    inbox_prefix: Annotated[
        str, Meta(description="Prefix of reply subjects (default: _INBOX).")
    ] = ""
    request_timeout: Annotated[
        float, Meta(description="Seconds to wait for a reply to a request between services.")
    ] = 5.0
    replicas: Annotated[
        int,
        Meta(
            ge=1,
            le=5,
            description="Copies JetStream keeps of every stream and bucket hvmesh makes: 1 on "
            "one nats-server, 3 on a core cluster (the conductor scales existing ones).",
        ),
    ] = 1


class PluginsSection(Struct, kw_only=True, forbid_unknown_fields=True):
    disabled: Annotated[
        list[str],
        Meta(
            description="Entry-point names of plugins not to load (also $HVMESH_DISABLE_PLUGINS, comma-separated)."
        ),
    ] = msgspec.field(default_factory=list)
    strict: Annotated[
        bool,
        Meta(
            description="Stop with an error when a plugin fails to load, instead of skipping it and logging why."
        ),
    ] = False


class Config(Struct, kw_only=True, forbid_unknown_fields=True):
    DEFAULT: DefaultSection = msgspec.field(default_factory=DefaultSection)
    nats: NatsSection = msgspec.field(default_factory=NatsSection)
    conductor: ConductorSection = msgspec.field(default_factory=ConductorSection)
    scheduler: SchedulerSection = msgspec.field(default_factory=SchedulerSection)
    compute: ComputeSection = msgspec.field(default_factory=ComputeSection)
    fake: FakeSection = msgspec.field(default_factory=FakeSection)
    metadata: MetadataSection = msgspec.field(default_factory=MetadataSection)
    libvirt: LibvirtSection = msgspec.field(default_factory=LibvirtSection)
    vmware: VmwareSection = msgspec.field(default_factory=VmwareSection)
    hyperv: HypervSection = msgspec.field(default_factory=HypervSection)
    ironic: IronicSection = msgspec.field(default_factory=IronicSection)
    quota: QuotaSection = msgspec.field(default_factory=QuotaSection)
    api: ApiSection = msgspec.field(default_factory=ApiSection)
    rest: RestSection = msgspec.field(default_factory=RestSection)
    console: ConsoleSection = msgspec.field(default_factory=ConsoleSection)
    policy: PolicySection = msgspec.field(default_factory=PolicySection)
    plugins: PluginsSection = msgspec.field(default_factory=PluginsSection)
    site: SiteSection = msgspec.field(default_factory=SiteSection)

    def host_name(self) -> str:
        return self.compute.host or socket.gethostname()


def state_dir() -> Path:
    """Where a process keeps local files (image cache, disks, console logs)."""
    return Path(os.environ.get("HVMESH_STATE_DIR") or "~/.local/share/hvmesh").expanduser()


class ConfigError(ValueError):
    """The configuration file is unreadable or holds a bad option."""


def _is_list(tp: Any) -> bool:
    if typing.get_origin(tp) is Annotated:
        tp = typing.get_args(tp)[0]
    return typing.get_origin(tp) is list


def _section_types() -> dict[str, type[Struct]]:
    return {f.name: f.type for f in msgspec.structs.fields(Config)}


def from_mapping(raw: dict[str, dict[str, str]]) -> Config:
    """Build a Config from {section: {option: text}}, converting and validating each value."""
    sections = _section_types()
    data: dict[str, dict[str, Any]] = {}
    for section, options in raw.items():
        if section not in sections:
            raise ConfigError(f"unknown section [{section}]")
        fields = {f.name: f.type for f in msgspec.structs.fields(sections[section])}
        values: dict[str, Any] = {}
        for name, text in options.items():
            if name not in fields:
                raise ConfigError(f"unknown option [{section}] {name}")
            if _is_list(fields[name]) and isinstance(text, str):
                values[name] = [item.strip() for item in text.split(",") if item.strip()]
            else:
                values[name] = text
        data[section] = values
    try:
        return msgspec.convert(data, Config, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"bad configuration: {exc}") from None


def load(path: str | os.PathLike[str] | None = None) -> Config:
    """Read the INI file at `path` (or $HVMESH_CONFIG); no file means all defaults."""
    path = path or os.environ.get("HVMESH_CONFIG")
    if not path:
        return Config()
    parser = configparser.ConfigParser(interpolation=None, default_section="__unused__")
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh)
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    except configparser.Error as exc:
        raise ConfigError(f"cannot parse config {path}: {exc}") from None
    return from_mapping({s: dict(parser.items(s)) for s in parser.sections()})


def sample() -> str:
    """Every option with its default and help, as an INI file an operator can edit."""
    out: list[str] = []
    defaults = Config()
    for section_field in msgspec.structs.fields(Config):
        section = getattr(defaults, section_field.name)
        out.append(f"[{section_field.name}]")
        for f in msgspec.structs.fields(section_field.type):
            meta = [m for m in typing.get_args(f.type)[1:] if isinstance(m, Meta)]
            help_text = meta[0].description if meta and meta[0].description else ""
            value = getattr(section, f.name)
            text = ", ".join(value) if isinstance(value, list) else str(value)
            out.append(f"# {help_text}")
            out.append(f"#{f.name} = {text}")
        out.append("")
    return "\n".join(out)


def write(cfg: Config, path: Path) -> None:
    """Write the non-default options of `cfg` as an INI file."""
    parser = configparser.ConfigParser(interpolation=None, default_section="__unused__")
    defaults = msgspec.to_builtins(Config())
    for section, options in msgspec.to_builtins(cfg).items():
        changed = {k: v for k, v in options.items() if defaults[section].get(k) != v}
        if changed:
            parser[section] = {
                k: ", ".join(v) if isinstance(v, list) else str(v) for k, v in changed.items()
            }
    with open(path, "w", encoding="utf-8") as fh:
        parser.write(fh)
