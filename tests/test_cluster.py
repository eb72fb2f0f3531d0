"""Offline checks of ``cluster/aws.yaml``, the Ray cluster-launcher config for sweeps on AWS.

``ray up`` has no dry-run mode, and everything it does after validating the config needs AWS credentials.
These tests run the offline part of ``ray up`` -- Ray's own ``prepare_config`` + ``validate_config`` (the
JSON schema shipped inside Ray plus its cross-field checks) -- and validate against that schema file
explicitly. The schema leaves ``node_config`` free-form and knows nothing about security, IAM or what the
nodes install, so :func:`project_rule_violations` adds the project's rules, and the negative tests show
that both layers do reject broken configs.
"""

from __future__ import annotations

import ast
import copy
import ipaddress
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import ray.autoscaler
import yaml
from packaging.requirements import Requirement
from ray.autoscaler._private.util import prepare_config, validate_config

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster" / "aws.yaml"
RAY_AUTOSCALER_DIR = Path(ray.autoscaler.__file__).parent
RAY_SCHEMA = RAY_AUTOSCALER_DIR / "ray-schema.json"
# Ray's AWS bootstrap; importing it needs boto3, so the test reads it instead.
RAY_AWS_BOOTSTRAP_SOURCE = RAY_AUTOSCALER_DIR / "_private" / "aws" / "config.py"

CREDENTIAL_PATTERNS = {
    "an AWS access key id": re.compile(r"(?:AKIA|ASIA)[0-9A-Z]{16}"),
    "an AWS credential variable": re.compile(
        r"aws_(?:secret_access_key|access_key_id|session_token)", re.IGNORECASE
    ),
    "a private key": re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    "a Ray auth token": re.compile(r"RAY_AUTH_TOKEN\s*[=:]", re.IGNORECASE),
}
SSH_PORT = 22


# ---------------------------------------------------------------------------------------------------------
# Helpers


def load_raw() -> tuple[dict[str, Any], str]:
    text = CLUSTER_YAML.read_text()
    return yaml.safe_load(text), text


def ray_validate(config: dict[str, Any]) -> dict[str, Any]:
    """What ``ray up`` does before its first AWS call: merge Ray's AWS defaults, then validate."""
    prepared = prepare_config(copy.deepcopy(config))
    validate_config(prepared)
    return prepared


def ray_default_ssh_rules() -> list[dict[str, Any]]:
    """The SSH rules Ray adds to every security group it creates, read from the installed Ray's source."""
    tree = ast.parse(RAY_AWS_BOOTSTRAP_SOURCE.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name == "_create_default_ssh_inbound_rules":
            returns = [n for n in ast.walk(node) if isinstance(n, ast.Return) and n.value is not None]
            assert len(returns) == 1, "unexpected shape of _create_default_ssh_inbound_rules"
            return ast.literal_eval(returns[0].value)
    raise AssertionError(f"_create_default_ssh_inbound_rules not found in {RAY_AWS_BOOTSTRAP_SOURCE}")


def _is_internet(cidr: str) -> bool:
    return ipaddress.ip_network(cidr, strict=False).prefixlen == 0


def _ingress_violations(rule: dict[str, Any], where: str) -> list[str]:
    """Rules from address ranges may open SSH only, and never to the whole internet."""
    ranges = [r["CidrIp"] for r in rule.get("IpRanges", [])]
    ranges += [r["CidrIpv6"] for r in rule.get("Ipv6Ranges", [])]
    external = ranges or rule.get("PrefixListIds")
    if not external:  # sources are security groups only: node-to-node traffic
        return []
    problems = []
    protocol = str(rule.get("IpProtocol"))
    ports = (rule.get("FromPort"), rule.get("ToPort"))
    if protocol not in ("tcp", "6") or ports != (SSH_PORT, SSH_PORT):
        problems.append(
            f"{where}: opens {protocol} ports {ports[0]}-{ports[1]} to {ranges or 'a prefix list'}; "
            "only SSH (tcp/22) may be reachable from outside the cluster"
        )
    problems += [
        f"{where}: opens port(s) {ports[0]}-{ports[1]} to the whole internet ({cidr})"
        for cidr in ranges
        if _is_internet(cidr)
    ]
    return problems


def project_rule_violations(config: dict[str, Any], text: str | None = None) -> list[str]:
    """Rules Ray's schema cannot check (``node_config`` is free-form). Empty list == config is fine.

    ``text`` is the file as written (comments included) for the credential scan; by default the
    config is dumped back to YAML.
    """
    if text is None:
        text = yaml.safe_dump(config)
    problems: list[str] = []

    name = config.get("cluster_name")
    if not isinstance(name, str) or not name or name == "default":
        problems.append("cluster_name must be set (Ray's default 'default' collides with other clusters)")

    provider = config.get("provider", {})
    if provider.get("type") != "aws":
        problems.append("provider.type must be aws")
    if provider.get("cache_stopped_nodes") is not False:
        problems.append("provider.cache_stopped_nodes must be false (terminate idle nodes)")
    if "aws_credentials" in provider:
        problems.append("provider.aws_credentials: credentials do not belong in the cluster config")

    for label, pattern in CREDENTIAL_PATTERNS.items():
        if pattern.search(text):
            problems.append(f"the file contains what looks like {label}")

    # Node types.
    node_types: dict[str, Any] = config.get("available_node_types", {})
    head = config.get("head_node_type")
    gpu_types = []
    for type_name, node_type in node_types.items():
        node_config = node_type.get("node_config", {})
        resources = node_type.get("resources", {})
        image = node_config.get("ImageId")
        if not (isinstance(image, str) and image.startswith("ami-")):
            problems.append(
                f"{type_name}: node_config.ImageId must name an AMI (Ray's default AMI is far too old)"
            )
        if type_name == head:
            if resources.get("train_driver", 0) < 1:
                problems.append(f"{type_name}: the head must advertise the train_driver resource")
            if resources.get("GPU", 0):
                problems.append(f"{type_name}: the head must not advertise GPUs")
            if "InstanceMarketOptions" in node_config:
                problems.append(f"{type_name}: the head must be on-demand (it runs the trial drivers)")
            continue
        if "train_driver" in resources:
            problems.append(f"{type_name}: only the head may advertise train_driver")
        if resources.get("GPU", 0) >= 1:
            gpu_types.append(type_name)
            market = node_config.get("InstanceMarketOptions", {}).get("MarketType")
            if market != "spot":
                problems.append(f"{type_name}: GPU workers must be spot (InstanceMarketOptions.MarketType)")
            profile = node_config.get("IamInstanceProfile", {})
            if not (profile.get("Arn") or profile.get("Name")):
                problems.append(
                    f"{type_name}: GPU workers need an IamInstanceProfile with S3 access "
                    "(Ray gives workers no role)"
                )
            if node_type.get("min_workers", 0) != 0:
                problems.append(f"{type_name}: GPU workers must scale from min_workers: 0")
    if not gpu_types:
        problems.append("no worker node type advertises a GPU")

    # Network: only SSH from outside, never from the whole internet.
    declared = provider.get("security_group", {}).get("IpPermissions", [])
    for i, rule in enumerate(declared):
        problems += _ingress_violations(rule, f"provider.security_group.IpPermissions[{i}]")
    unmanaged = [t for t, nt in node_types.items() if not nt.get("node_config", {}).get("SecurityGroupIds")]
    if unmanaged:
        # Ray then creates a security group for these node types and adds its default rules to it.
        for rule in ray_default_ssh_rules():
            problems += [
                f"{p} (node types without SecurityGroupIds: {', '.join(unmanaged)})"
                for p in _ingress_violations(rule, "the SSH rule Ray adds to a security group it creates")
            ]

    # Installation: the project is copied to the nodes and installed there.
    mounts: dict[str, str] = config.get("file_mounts", {})
    for remote, local in mounts.items():
        local_path = Path(local)
        if local_path.is_absolute() or local.startswith("~"):
            problems.append(f"file_mounts[{remote}]: {local} must be relative to the repository root")
        elif not (ROOT / local_path).exists():
            problems.append(f"file_mounts[{remote}]: {local} does not exist in the repository")

    def provides(remote_dir: str, relative: str) -> bool:
        remote_dir = remote_dir.rstrip("/")
        if f"{remote_dir}/{relative}" in mounts:
            return True
        local = mounts.get(remote_dir)
        return local is not None and (ROOT / local / relative).exists()

    setup = [str(c) for c in config.get("setup_commands", [])]
    install_commands = [c for c in setup if re.search(r"\bpip install\b", c)]
    editable = [m for c in install_commands for m in re.findall(r"(?:-e|--editable)\s+(\S+)", c)]
    if not any(provides(d, "pyproject.toml") and provides(d, "clapray") for d in editable):
        problems.append(
            "setup_commands must `pip install -e DIR` where file_mounts provide DIR/pyproject.toml "
            "and DIR/clapray"
        )
    ray_pins = [m for c in install_commands for m in re.findall(r"ray\[[^\]]*\]==[\w.]+", c)]
    pyproject = (ROOT / "pyproject.toml").read_text()
    declared_ray = re.search(r'"(ray\[[^"]*)"', pyproject)
    for pin in ray_pins:
        version = pin.split("==", 1)[1]
        if declared_ray and not Requirement(declared_ray.group(1)).specifier.contains(version):
            problems.append(f"setup_commands pin {pin} is outside pyproject's {declared_ray.group(1)}")
    head_setup = " ".join(str(c) for c in config.get("head_setup_commands", []))
    if "boto3" not in head_setup:
        problems.append("head_setup_commands must install boto3 (the autoscaler launches workers with it)")

    return problems


# ---------------------------------------------------------------------------------------------------------
# The shipped file


def test_ray_prepare_and_validate_accept_the_cluster_yaml():
    raw, _ = load_raw()
    prepared = ray_validate(raw)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]
    # prepare_config merges the common setup commands into both node kinds.
    for key in ("head_setup_commands", "worker_setup_commands"):
        assert prepared[key][: len(raw["setup_commands"])] == raw["setup_commands"]


def test_cluster_yaml_matches_the_schema_shipped_with_ray():
    schema = json.loads(RAY_SCHEMA.read_text())
    validator_cls = jsonschema.validators.validator_for(schema)
    validator_cls.check_schema(schema)
    raw, _ = load_raw()
    for config in (raw, ray_validate(raw)):  # as written, and after Ray's defaults are merged in
        errors = sorted(validator_cls(schema).iter_errors(config), key=str)
        assert not errors, "\n".join(f"{list(e.absolute_path)}: {e.message}" for e in errors)


def test_cluster_yaml_follows_project_rules():
    raw, text = load_raw()
    assert project_rule_violations(raw, text) == []


def test_cluster_yaml_layout():
    raw, _ = load_raw()
    types = raw["available_node_types"]
    head = types[raw["head_node_type"]]
    assert head["resources"]["train_driver"] >= 1
    workers = [t for name, t in types.items() if name != raw["head_node_type"]]
    assert workers and all(t["resources"].get("GPU", 0) >= 1 for t in workers)
    assert all(t["max_workers"] <= raw["max_workers"] for t in workers)
    assert raw["idle_timeout_minutes"] > 0
    # Every node type uses a security group managed outside Ray, so Ray adds no rule of its own.
    assert all(t["node_config"]["SecurityGroupIds"] for t in types.values())
    assert "security_group" not in raw["provider"]


def test_ray_default_security_group_opens_ssh_to_the_internet():
    """Why the YAML sets SecurityGroupIds instead of provider.security_group (see its comments)."""
    rules = ray_default_ssh_rules()
    assert rules and all(r["FromPort"] == r["ToPort"] == SSH_PORT for r in rules)
    assert any(_is_internet(r["CidrIp"]) for rule in rules for r in rule.get("IpRanges", []))


# ---------------------------------------------------------------------------------------------------------
# Broken copies are rejected


def _node_type(config: dict[str, Any], *, head: bool) -> dict[str, Any]:
    head_name = config["head_node_type"]
    names = [n for n in config["available_node_types"] if (n == head_name) == head]
    return config["available_node_types"][names[0]]


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        target = config
        for key in parents:
            target = target.setdefault(key, {})
        target[last] = value

    return mutate


def _gpu_worker(mutate: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda config: mutate(_node_type(config, head=False))


def _head(mutate: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
    return lambda config: mutate(_node_type(config, head=True))


def _worker_resources_fractional(config):
    _node_type(config, head=False)["resources"]["GPU"] = 0.5


def _min_workers_above_max(config):
    _node_type(config, head=False)["min_workers"] = config["max_workers"] + 1


RAY_REJECTS = {
    "unknown top-level key": (_set("ssh_cidr", "203.0.113.0/24"), "Additional properties"),
    "fractional resource": (_worker_resources_fractional, "is not of type 'integer'"),
    "head_node_type not a node type": (_set("head_node_type", "ray.head.missing"), "head_node_type"),
    "min_workers above max_workers": (_min_workers_above_max, "max_workers"),
    "unknown key in a node type": (_gpu_worker(_set("spot", True)), "Additional properties"),
}


@pytest.mark.parametrize("case", list(RAY_REJECTS))
def test_ray_validation_rejects_broken_copies(case):
    mutate, message = RAY_REJECTS[case]
    config, _ = load_raw()
    mutate(config)
    with pytest.raises((jsonschema.ValidationError, ValueError), match=message):
        ray_validate(config)


def _open_dashboard_to_internet(config):
    config["provider"]["security_group"] = {
        "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 8265, "ToPort": 8265, "IpRanges": [{"CidrIp": "0.0.0.0/0"}]}
        ]
    }


def _open_ssh_to_internet(config):
    config["provider"]["security_group"] = {
        "IpPermissions": [
            {"IpProtocol": "tcp", "FromPort": 22, "ToPort": 22, "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}
        ]
    }


def _access_key_in_setup(config):
    config["setup_commands"].append("export AWS_ACCESS_KEY_ID=AKIA" + "ABCDEFGHIJKLMNOP")


def _no_install(config):
    config["setup_commands"] = [c for c in config["setup_commands"] if "pip install" not in c]


def _absolute_mount(config):
    config["file_mounts"]["~/clapray/clapray"] = str(ROOT / "clapray")


def _ray_pin_outside_pyproject(config):
    config["setup_commands"].append('pip install "ray[default,tune,train]==2.9.0"')


RULES_REJECT = {
    "dashboard port open to 0.0.0.0/0": (_open_dashboard_to_internet, "8265"),
    "SSH open to ::/0": (_open_ssh_to_internet, "whole internet"),
    "worker without SecurityGroupIds": (
        _gpu_worker(lambda t: t["node_config"].pop("SecurityGroupIds")),
        "SSH rule Ray adds",
    ),
    "AWS access key in a setup command": (_access_key_in_setup, "access key id"),
    "aws_credentials in provider": (_set("provider.aws_credentials", {}), "aws_credentials"),
    "node type without ImageId": (_head(lambda t: t["node_config"].pop("ImageId")), "ImageId"),
    "on-demand GPU workers": (
        _gpu_worker(lambda t: t["node_config"].pop("InstanceMarketOptions")),
        "spot",
    ),
    "GPU workers without IAM profile": (
        _gpu_worker(lambda t: t["node_config"].pop("IamInstanceProfile")),
        "IamInstanceProfile",
    ),
    "head without train_driver": (_head(lambda t: t["resources"].pop("train_driver")), "train_driver"),
    "train_driver on a worker": (
        _gpu_worker(lambda t: t["resources"].update(train_driver=1)),
        "only the head",
    ),
    "spot head": (
        _head(lambda t: t["node_config"].update(InstanceMarketOptions={"MarketType": "spot"})),
        "on-demand",
    ),
    "package not installed": (_no_install, "pip install -e"),
    "absolute local mount path": (_absolute_mount, "relative"),
    "Ray pin outside pyproject": (_ray_pin_outside_pyproject, "outside pyproject"),
    "no boto3 on the head": (_set("head_setup_commands", []), "boto3"),
    "cluster_name missing": (lambda c: c.pop("cluster_name"), "cluster_name"),
    "stopped nodes cached": (_set("provider.cache_stopped_nodes", True), "cache_stopped_nodes"),
}


@pytest.mark.parametrize("case", list(RULES_REJECT))
def test_project_rules_reject_broken_copies(case):
    mutate, message = RULES_REJECT[case]
    config, _ = load_raw()
    mutate(config)
    problems = project_rule_violations(config)
    assert any(message in p for p in problems), problems
