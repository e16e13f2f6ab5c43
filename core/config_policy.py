"""The [policy] configuration section: the policy file and the roles of tenant users."""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta, Struct


class PolicySection(Struct, kw_only=True, forbid_unknown_fields=True):
    policy_file: Annotated[
        str,
        Meta(
            description="YAML or JSON file of rule name -> check string overriding the "
            "defaults (`hvmesh policy list` shows them); empty: the defaults. An unknown "
            "rule or a bad check string stops the API at start, naming it."
        ),
    ] = ""
    roles: Annotated[
        list[str],
        Meta(
            description="Roles of tenant users, as ACCOUNT/USER:ROLE, comma-separated "
            "(ROLE: admin, member or reader; USER may be * for every user of the account). "
            "A user of the HVMESH account is always admin."
        ),
    ] = msgspec.field(default_factory=lambda: ["DEMO/viewer:reader"])
    default_role: Annotated[
        Literal["admin", "member", "reader"],
        Meta(description="The role of a tenant user [policy] roles does not name."),
    ] = "member"
