"""Policy: rules with defaults in code, a policy file overriding them, roles from the config,
and `hvmesh policy list|check`, on a real nats-server running the shipped nats.conf."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hvmesh.core.api.policy_rules import checks, defaults
from hvmesh.core.api.policy_rules.enforcer import Policy
from hvmesh.core.api.service import ApiService
from hvmesh.core.config import ConfigError
from hvmesh.core.config_policy import PolicySection
from hvmesh.core.protocol import errors
from tests.support import ApiClient, Deployment, boot, hvmesh, make_flavor_image


def policy_file(tmp: Path, text: str, name: str = "policy.yaml") -> str:
    path = tmp / name
    path.write_text(text)
    return str(path)


async def test_every_endpoint_names_a_rule_with_a_default(deployment: Deployment) -> None:
    api = ApiService(deployment.nc, deployment.config())
    endpoints = [ep.name for ep in api.service.info().endpoints]
    assert set(endpoints) <= set(defaults.ENDPOINTS)
    for rule in defaults.ENDPOINTS.values():
        assert rule.endswith(":*") or rule in defaults.DEFAULTS, rule
    assert "compute:servers:action:reboot-hard" in defaults.DEFAULTS
    with pytest.raises(ConfigError, match="endpoints without a policy rule: brand-new"):
        api.policy.require([*endpoints, "brand-new"])


async def test_a_policy_file_changes_decisions(deployment: Deployment) -> None:
    overrides = policy_file(
        deployment.tmp,
        "# members may no longer boot; ALT's users may migrate their own servers\n"
        '"compute:servers:create": "rule:admin_api"\n'
        '"compute:servers:action:migrate": "rule:project_member_or_admin and project_id:ALT"\n',
    )
    roles = ["DEMO/viewer:reader", "ALT/*:member"]
    cfg = deployment.config(policy={"policy_file": overrides, "roles": roles})
    await deployment.start_core(cfg, fake_hosts=2)
    admin = ApiClient(await deployment.connect("admin"))
    demo = ApiClient(await deployment.connect("demo"))
    alt = ApiClient(await deployment.connect("alt"))
    await make_flavor_image(admin)

    body = {"name": "vm", "flavor": "m1.small", "image": "cirros"}
    with pytest.raises(errors.Forbidden) as exc:
        await demo("servers.create", body)
    assert exc.value.message == (
        "policy does not allow compute:servers:create for DEMO/demo (roles: member, reader)"
    )
    assert (await demo("servers.list"))["servers"] == []
    mine = await boot(deployment, admin, "admin-vm")
    assert mine.project == "admin"
    # ALT's members may migrate, DEMO's may not.
    with pytest.raises(errors.Forbidden, match="compute:servers:create"):
        await alt("servers.create", body)
    with pytest.raises(errors.Forbidden, match="compute:servers:action:migrate for DEMO/demo"):
        await demo("servers.action", {"id": "anything", "action": "migrate"})
    # ALT passes the rule; its request then meets the lookup: a 404 for a server not its own.
    with pytest.raises(errors.NotFound, match=mine.id):
        await alt("servers.action", {"id": mine.id, "action": "migrate"})


async def test_a_bad_policy_file_or_role_stops_the_api_naming_it(
    deployment: Deployment, tmp_path: Path
) -> None:
    cases = [
        ('"compute:servers:explode": "@"\n', "unknown rule 'compute:servers:explode'"),
        ('"compute:servers:create": "role:admin or"\n', "policy rule 'compute:servers:create'"),
        ('"compute:servers:create": "colour:blue"\n', "unknown check kind 'colour'"),
        ('"compute:servers:create": "rule:nosuch"\n', "refers to unknown rule 'nosuch'"),
        ('"admin_api": "rule:context_is_admin"\n"context_is_admin": "rule:admin_api"\n', "loop"),
        ("- a list\n", "must map rule names to check strings"),
        ('"compute:servers:create": 3\n', "the check must be a string"),
    ]
    for i, (text, message) in enumerate(cases):
        path = policy_file(tmp_path, text, f"p{i}.yaml")
        cfg = deployment.config(policy={"policy_file": path})
        with pytest.raises(ConfigError, match=message):
            ApiService(deployment.nc, cfg)
    json_file = policy_file(tmp_path, '{"compute:servers:list": "!"}', "p.json")
    policy = Policy(PolicySection(policy_file=json_file))
    assert policy.text["compute:servers:list"] == "!"
    with pytest.raises(ConfigError, match="cannot read"):
        Policy(PolicySection(policy_file=str(tmp_path / "missing.yaml")))
    for entry, message in (
        ("DEMO/demo", "is not ACCOUNT/USER:ROLE"),
        ("DEMO/demo:owner", "unknown role 'owner'"),
        ("HVMESH/admin:reader", "always admin"),
    ):
        with pytest.raises(ConfigError, match=message):
            Policy(PolicySection(roles=[entry]))


def test_check_strings() -> None:
    creds = checks.Credentials(
        project_id="DEMO",
        user_id="demo",
        roles=frozenset({"member", "reader"}),
        target={"project_id": "DEMO", "user_id": "demo"},
    )
    elsewhere = checks.Credentials(
        project_id="DEMO", user_id="demo", roles=creds.roles, target={"project_id": "ALT"}
    )

    def allows(text: str, c: checks.Credentials = creds) -> bool:
        return checks.parse(text)(c, lambda name, c: name == "yes")

    assert allows("role:member and project_id:%(project_id)s")
    assert not allows("role:member and project_id:%(project_id)s", elsewhere)
    assert allows("role:admin or (role:reader and not user_id:alice)")
    assert not allows("not (role:reader or role:admin)")
    assert allows("") and allows("@") and not allows("!")
    assert allows("rule:yes") and not allows("rule:no")
    assert allows("project_id:DEMO and is_admin:False")
    for bad in ("role:admin and", "(role:admin", "role:admin)", "role", "role:"):
        with pytest.raises(checks.CheckError):
            checks.parse(bad)


async def test_policy_list_and_check_from_the_cli(deployment: Deployment) -> None:
    overrides = policy_file(deployment.tmp, '"compute:servers:list": "rule:project_member"\n')
    cfg_file = deployment.config_file("policy", policy={"policy_file": overrides})
    conf = ["--config", str(cfg_file)]

    code, out, err = await hvmesh("policy", "list", *conf, "-f", "json")
    assert code == 0, err
    rows = {r["name"]: r for r in json.loads(out)}
    assert set(rows) == set(defaults.DEFAULTS)
    assert rows["compute:servers:list"] == {
        "name": "compute:servers:list",
        "default": "rule:project_reader_or_admin",
        "effective": "rule:project_member",
        "overridden": True,
        "description": "List servers.",
    }
    assert rows["compute:servers:create"]["effective"] == "rule:project_member_or_admin"
    assert not rows["compute:servers:create"]["overridden"]
    code, out, err = await hvmesh("policy", "list", *conf)
    assert code == 0 and "compute:servers:action:reboot" in out

    async def check(user: str, rule: str, *extra: str) -> dict:
        code, out, err = await hvmesh(
            "policy", "check", "--user", user, rule, *extra, *conf, "-f", "json"
        )
        assert code == 0, err
        return dict(json.loads(out))

    seen = await check("DEMO/viewer", "compute:servers:list")
    assert (seen["result"], seen["roles"], seen["check"]) == (
        "denied",
        ["reader"],
        "rule:project_member",
    )
    assert "does not allow a caller holding reader" in seen["why"]
    assert (await check("DEMO/demo", "compute:servers:list"))["result"] == "allowed"
    across = await check("DEMO/demo", "compute:servers:create", "--project", "ALT")
    assert (across["result"], across["project"]) == ("denied", "ALT")
    assert "another project" in across["why"]
    assert (await check("HVMESH/admin", "compute:aggregates:create"))["result"] == "allowed"
    assert (await check("ALT/alt", "compute:aggregates:create"))["result"] == "denied"

    code, out, err = await hvmesh("policy", "check", "--user", "DEMO/demo", "nope", *conf)
    assert (
        code == 1
        and err.strip() == "error: unknown policy rule 'nope' (`hvmesh policy list` lists them)"
    )
    bad = policy_file(deployment.tmp, '"compute:nope": "@"\n', "bad.yaml")
    bad_cfg = deployment.config_file("bad", policy={"policy_file": bad})
    code, out, err = await hvmesh("policy", "list", "--config", str(bad_cfg))
    assert code == 1 and "unknown rule 'compute:nope'" in err
