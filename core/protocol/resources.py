"""Resource classes a flavor asks for: custom resources and PCI aliases from its extra specs."""

from __future__ import annotations


def pci_class(alias: str) -> str:
    """The resource class of a PCI alias: CUSTOM_PCI_ and the alias in capitals."""
    return "CUSTOM_PCI_" + "".join(c if c.isalnum() else "_" for c in alias.upper())


def parse_counts(text: str, what: str) -> dict[str, int]:
    """ "gpu:2, nic" -> {"gpu": 2, "nic": 1}; ValueError names what is wrong."""
    out: dict[str, int] = {}
    for item in (i.strip() for i in text.split(",")):
        if not item:
            continue
        name, _, count = item.partition(":")
        try:
            n = int(count) if count else 1
        except ValueError:
            raise ValueError(f"{what}: {item!r} is not NAME[:COUNT]") from None
        if not name or n < 1:
            raise ValueError(f"{what}: {item!r} is not NAME[:COUNT] with COUNT >= 1")
        out[name] = out.get(name, 0) + n
    return out


#: Standard resource classes a flavor's `resources:<CLASS>=N` extra spec may override,
#: as Nova's: a bare-metal flavor asks for zero of each (and one unit of its node class).
STANDARD = ("VCPU", "MEMORY_MB", "DISK_GB")


def standard_overrides(extra_specs: dict[str, str]) -> dict[str, int]:
    """`resources:VCPU`, `resources:MEMORY_MB`, `resources:DISK_GB` from extra specs: the
    amounts that replace the flavor's own; ValueError names a bad one."""
    out: dict[str, int] = {}
    for rc in STANDARD:
        value = extra_specs.get(f"resources:{rc}")
        if value is None:
            continue
        try:
            amount = int(value)
        except ValueError:
            raise ValueError(f"resources:{rc}: {value!r} is not a whole number") from None
        if amount < 0:
            raise ValueError(f"resources:{rc}: {value!r} is negative")
        out[rc] = amount
    return out


def custom_resources(extra_specs: dict[str, str]) -> dict[str, int]:
    """Custom resource classes a flavor's extra specs ask for."""
    out: dict[str, int] = {}
    for key, value in extra_specs.items():
        if key.startswith("resources:CUSTOM_"):
            try:
                out[key[len("resources:") :]] = int(value)
            except ValueError:
                raise ValueError(f"{key}: {value!r} is not a whole number") from None
        elif key == "pci_passthrough:alias":
            for alias, n in parse_counts(value, "pci_passthrough:alias").items():
                out[pci_class(alias)] = out.get(pci_class(alias), 0) + n
    return out
