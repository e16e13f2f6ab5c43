"""Users' roles from configuration: `[policy] roles` entries ACCOUNT/USER:ROLE, and the default.

A role implies the ones below it (admin: member and reader; member: reader), as Keystone's
implied roles. The HVMESH account's users are always admin: requests from inside it carry
no identity the server vouches for.
"""

from __future__ import annotations

from hvmesh.core.bus.micro import ADMIN_ROLES, INTERNAL_ACCOUNT, MEMBER_ROLES
from hvmesh.core.config import ConfigError
from hvmesh.core.config_policy import PolicySection

IMPLIED: dict[str, tuple[str, ...]] = {
    "admin": ADMIN_ROLES,
    "member": MEMBER_ROLES,
    "reader": ("reader",),
}
ANY_USER = "*"


class Roles:
    """The roles of each tenant user, as `[policy]` gives them."""

    def __init__(self, section: PolicySection) -> None:
        self.default = IMPLIED[section.default_role]
        self.granted: dict[tuple[str, str], set[str]] = {}
        for entry in section.roles:
            account, user, role = parse_entry(entry)
            self.granted.setdefault((account, user), set()).update(IMPLIED[role])

    def __call__(self, account: str, user: str) -> tuple[str, ...]:
        """The roles of `user` of `account` (implied ones included), most powerful first."""
        if account == INTERNAL_ACCOUNT:
            return ADMIN_ROLES
        found = self.granted.get((account, user)) or self.granted.get((account, ANY_USER))
        if found is None:
            return self.default
        return tuple(r for r in ADMIN_ROLES if r in found)


def parse_entry(entry: str) -> tuple[str, str, str]:
    """ACCOUNT/USER:ROLE as (account, user, role); ConfigError names a bad entry."""
    who, sep, role = entry.strip().rpartition(":")
    account, slash, user = who.partition("/")
    if not sep or not slash or not account or not user:
        raise ConfigError(f"[policy] roles: {entry!r} is not ACCOUNT/USER:ROLE")
    if role not in IMPLIED:
        known = ", ".join(IMPLIED)
        raise ConfigError(f"[policy] roles: {entry!r}: unknown role {role!r} (known: {known})")
    if account == INTERNAL_ACCOUNT:
        raise ConfigError(
            f"[policy] roles: {entry!r}: the {INTERNAL_ACCOUNT} account's users are always admin"
        )
    return account, user, role


def split_user(text: str) -> tuple[str, str]:
    """ACCOUNT/USER as (account, user); ValueError names bad text."""
    account, slash, user = text.partition("/")
    if not slash or not account or not user:
        raise ValueError(f"{text!r} is not ACCOUNT/USER")
    return account, user
