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
REQUIREMENTS_IN = ROOT / "cluster" / "requirements.in"
REQUIREMENTS_LOCK = ROOT / "cluster" / "requirements.lock"
BOOTSTRAP_LOCK = ROOT / "cluster" / "bootstrap.lock"
IAM_DIR = ROOT / "cluster" / "iam"
TOKEN_MOUNT = "~/.ray/auth_token"
# EC2 calls Ray's AWS node provider makes on the head (ray/autoscaler/_private/aws/node_provider.py) with
# cache_stopped_nodes: false; nothing else belongs in the head's policy.
AUTOSCALER_EC2_ACTIONS = {"ec2:DescribeInstances", "ec2:DescribeInstanceTypes", "ec2:DescribeImages",
                          "ec2:RunInstances", "ec2:CreateTags", "ec2:TerminateInstances"}
S3_OBJECT_ACTIONS = {"s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"}
S3_BUCKET_ACTIONS = {"s3:ListBucket", "s3:GetBucketLocation"}
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
        if remote == TOKEN_MOUNT:
            if local != TOKEN_MOUNT:
                problems.append(f"file_mounts[{TOKEN_MOUNT}]: copy the token from {TOKEN_MOUNT} (never from the "
                                "repository)")
            continue
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
    problems += _setup_violations(config, mounts, provides)
    problems += _ray_start_violations(config, mounts)
    problems += _head_profile_violations(config)
    return problems


def _setup_violations(config: dict[str, Any], mounts: dict[str, str], provides) -> list[str]:
    """Everything a node installs is pinned by version and hash; nothing is downloaded into a shell."""
    problems = []
    commands = [str(c) for key in ("setup_commands", "head_setup_commands", "worker_setup_commands",
                                   "initialization_commands") for c in config.get(key, [])]
    for command in commands:
        if re.search(r"\b(curl|wget)\b", command) or re.search(r"\|\s*(ba|z|da)?sh\b", command):
            problems.append(f"setup command downloads or pipes a script into a shell: {command[:80]}")
        for install in re.split(r"[;&|]+", command):
            if not re.search(r"\bpip install\b", install):
                continue
            editable = re.search(r"(?:-e|--editable)\s+(\S+)", install)
            if editable:
                if "--no-deps" not in install:
                    problems.append(f"the editable install must not resolve dependencies (--no-deps): {install[:80]}")
                continue
            lock = re.search(r"--require-hashes\b.*-r\s+(\S+)|-r\s+(\S+).*--require-hashes\b", install)
            if not lock:
                problems.append(f"install without --require-hashes -r <lock file>: {install.strip()[:80]}")
                continue
            path = lock.group(1) or lock.group(2)
            remote_dir, _, name = path.rpartition("/")
            if not provides(remote_dir, name):
                problems.append(f"{path}: the lock file is not among the file mounts")
    venvs = [c for c in commands if re.search(r"\buv venv\b", c)]
    if not venvs or not all("--python-preference only-managed" in c and re.search(r"--python \d", c) for c in venvs):
        problems.append("uv venv must pin the Python (--python X.Y, --python-preference only-managed)")
    if not any("export RAY_AUTH_MODE=token" in c for c in commands):
        problems.append("setup_commands must export RAY_AUTH_MODE=token for drivers started on the nodes")
    return problems


def lock_violations(lock_text: str, requested_text: str, pyproject_text: str = "",
                    must_hold: tuple[str, ...] = ()) -> list[str]:
    """Every entry of a lock file is pinned (==) with file hashes; the lock holds what requirements.in asks
    for, every dependency of pyproject.toml at a version inside its range, and ``must_hold``."""
    problems = []
    entries = re.findall(r"^([A-Za-z0-9][A-Za-z0-9._-]*(?:\[[^\]]*\])?)==(\S+)((?:\s*\\\n\s+--hash=\S+)*)",
                         lock_text, re.M)
    names = [line.split()[0] for line in lock_text.splitlines() if line and not line[0].isspace()
             and not line.startswith("#")]
    if len(entries) != len(names) or not entries:
        problems.append("every lock entry must be name==version")
    for name, version, hashes in entries:
        if "--hash=sha256:" not in hashes:
            problems.append(f"lock entry {name}=={version} has no --hash")
    locked = {Requirement(name).name.lower().replace("_", "-"): version for name, version, _ in entries}
    requested = [line.split("#", 1)[0].strip() for line in requested_text.splitlines()]
    declared = []
    if pyproject_text:
        block = re.search(r"^dependencies = \[(.*?)^\]", pyproject_text, re.M | re.S)
        declared = re.findall(r'^\s*"([^"]+)"', block.group(1), re.M) if block else []
    for line in [r for r in requested if r] + declared:
        req = Requirement(line)
        name = req.name.lower().replace("_", "-")
        if name not in locked or not req.specifier.contains(locked[name]):
            problems.append(f"the lock does not hold {line} (has {locked.get(name)})")
    for name in must_hold:
        if name not in locked:
            problems.append(f"the lock must install {name}")
    return problems


def _ray_start_violations(config: dict[str, Any], mounts: dict[str, str]) -> list[str]:
    """Token authentication on every node; the dashboard on the head's loopback address only."""
    problems = []
    if mounts.get(TOKEN_MOUNT) != TOKEN_MOUNT:
        problems.append(f"file_mounts must copy the Ray token to {TOKEN_MOUNT} on every node")
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [str(c) for c in config.get(key, []) if "ray start" in str(c)]
        if not starts:
            problems.append(f"{key}: no `ray start`")
        for command in starts:
            if not re.search(r"(?:^|[;&\s])(?:export\s+)?RAY_AUTH_MODE=token\b[^;&]*\bray start\b", command):
                problems.append(f"{key}: ray start without RAY_AUTH_MODE=token: {command[:80]}")
            for host in re.findall(r"--dashboard-host[= ](\S+)", command):
                if host not in ("127.0.0.1", "localhost", "::1"):
                    problems.append(f"{key}: the dashboard binds {host}; it must listen on 127.0.0.1 only")
    head = " ".join(str(c) for c in config.get("head_start_ray_commands", []))
    if not re.search(r"--dashboard-host[= ](127\.0\.0\.1|localhost|::1)\b", head):
        problems.append("head_start_ray_commands: give --dashboard-host=127.0.0.1 explicitly")
    return problems


def _head_profile_violations(config: dict[str, Any]) -> list[str]:
    """The head has an instance profile of its own, so `ray up` does not create and attach its default
    ray-autoscaler-v1 (AmazonEC2FullAccess + AmazonS3FullAccess)."""
    types = config.get("available_node_types", {})
    head = types.get(config.get("head_node_type"), {}).get("node_config", {})
    profile = head.get("IamInstanceProfile", {})
    ref = str(profile.get("Arn") or profile.get("Name") or "")
    if not ref:
        return ["the head needs an IamInstanceProfile of its own (else ray up attaches ray-autoscaler-v1)"]
    if ref.rsplit("/", 1)[-1] == "ray-autoscaler-v1":
        return ["the head must not use ray-autoscaler-v1 (EC2 and S3 full access)"]
    worker_refs = {str(t.get("node_config", {}).get("IamInstanceProfile", {}).get("Arn", "")) for name, t in
                   types.items() if name != config.get("head_node_type")}
    if ref in worker_refs:
        return ["the head and the workers need different instance profiles (the workers need no EC2 access)"]
    return []


def _as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def iam_policy_violations(policy: dict[str, Any], *, head: bool) -> list[str]:
    """Least privilege: named actions only (no wildcard), S3 on the one bucket and its prefix, EC2 only what
    the autoscaler calls (head), TerminateInstances only on this cluster's nodes, PassRole only the worker's."""
    problems = []
    bucket, objects = "arn:aws:s3:::REPLACE_BUCKET", "arn:aws:s3:::REPLACE_BUCKET/REPLACE_PREFIX/*"
    for i, statement in enumerate(policy.get("Statement", [])):
        where = f"statement {statement.get('Sid', i)}"
        if statement.get("Effect") != "Allow" or "NotAction" in statement or "NotResource" in statement:
            problems.append(f"{where}: only plain Allow statements")
        actions, resources = _as_list(statement.get("Action", [])), _as_list(statement.get("Resource", []))
        for action in actions:
            if "*" in action:
                problems.append(f"{where}: wildcard action {action}")
            service = action.split(":", 1)[0]
            if service == "s3":
                allowed = ({bucket} if action in S3_BUCKET_ACTIONS else
                           {objects} if action in S3_OBJECT_ACTIONS else set())
                if not allowed or set(resources) - allowed:
                    problems.append(f"{where}: {action} on {resources}; only the results bucket and prefix")
            elif service == "ec2":
                if not head or action not in AUTOSCALER_EC2_ACTIONS:
                    problems.append(f"{where}: {action} is not an EC2 call the autoscaler makes")
                if action == "ec2:TerminateInstances":
                    tag = statement.get("Condition", {}).get("StringEquals", {}).get("ec2:ResourceTag/ray-cluster-name")
                    if tag != "clapray":
                        problems.append(f"{where}: TerminateInstances must be limited to this cluster's nodes")
            elif action == "iam:PassRole":
                if not head or resources != ["arn:aws:iam::REPLACE_ACCOUNT_ID:role/clapray-worker"]:
                    problems.append(f"{where}: iam:PassRole only for the worker role")
            else:
                problems.append(f"{where}: {action} is not needed")
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


def test_lock_files_pin_every_version_and_hash():
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert lock_violations(REQUIREMENTS_LOCK.read_text(), REQUIREMENTS_IN.read_text(), pyproject, ("boto3",)) == []
    assert lock_violations(BOOTSTRAP_LOCK.read_text(), (ROOT / "cluster" / "bootstrap.in").read_text()) == []


LOCK_BREAKAGES = {
    "an entry without hashes": (lambda t: re.sub(r"(^optuna==\S+) \\\n(\s+--hash=\S+ \\\n)*\s+--hash=\S+\n",
                                                 r"\1\n", t, flags=re.M), "optuna==5.1.0 has no --hash"),
    "an unpinned entry": (lambda t: t.replace("\nboto3==", "\nboto3>="), "name==version"),
    "ray outside pyproject": (lambda t: t.replace("\nray==2.60.0", "\nray==2.9.0"), "ray[default,tune,train]"),
    "boto3 missing": (lambda t: re.sub(r"^boto3==.*?(?=^\S)", "", t, flags=re.M | re.S), "boto3"),
}


@pytest.mark.parametrize("case", list(LOCK_BREAKAGES))
def test_lock_rules_reject_broken_locks(case):
    edit, message = LOCK_BREAKAGES[case]
    broken = edit(REQUIREMENTS_LOCK.read_text())
    assert broken != REQUIREMENTS_LOCK.read_text()
    problems = lock_violations(broken, REQUIREMENTS_IN.read_text(), (ROOT / "pyproject.toml").read_text(), ("boto3",))
    assert any(message in p for p in problems), problems


def _policy(name: str) -> dict[str, Any]:
    return json.loads((IAM_DIR / f"{name}.json").read_text())


def test_iam_policies_are_least_privilege():
    assert iam_policy_violations(_policy("head-policy"), head=True) == []
    assert iam_policy_violations(_policy("worker-policy"), head=False) == []
    head_actions = {a for st in _policy("head-policy")["Statement"] for a in _as_list(st["Action"])}
    assert {a for a in head_actions if a.startswith("ec2:")} <= AUTOSCALER_EC2_ACTIONS


def _grant(name: str, statement: dict[str, Any]) -> Callable[[], dict[str, Any]]:
    def policy() -> dict[str, Any]:
        doc = _policy(name)
        doc["Statement"].append(statement)
        return doc

    return policy


def _terminate_anything() -> dict[str, Any]:
    doc = _policy("head-policy")
    for st in doc["Statement"]:
        if st["Action"] == "ec2:TerminateInstances":
            st.pop("Condition")
    return doc


IAM_BREAKAGES = {  # (policy with a broader grant, checked as the head's?, what the rule says)
    "S3 full access": (_grant("worker-policy", {"Effect": "Allow", "Action": "s3:*", "Resource": "*"}), False,
                       "wildcard"),
    "another bucket": (_grant("worker-policy", {"Effect": "Allow", "Action": "s3:GetObject",
                                                "Resource": "arn:aws:s3:::other/*"}), False, "results bucket"),
    "EC2 full access": (_grant("head-policy", {"Effect": "Allow", "Action": "ec2:*", "Resource": "*"}), True,
                        "wildcard"),
    "EC2 on a worker": (_grant("worker-policy", {"Effect": "Allow", "Action": "ec2:RunInstances", "Resource": "*"}),
                        False, "autoscaler"),
    "terminate any instance": (_terminate_anything, True, "this cluster's nodes"),
    "pass any role": (_grant("head-policy", {"Effect": "Allow", "Action": "iam:PassRole", "Resource": "*"}), True,
                      "worker role"),
    "an unrelated service": (_grant("head-policy", {"Effect": "Allow", "Action": "lambda:InvokeFunction",
                                                    "Resource": "*"}), True, "not needed"),
}


@pytest.mark.parametrize("case", list(IAM_BREAKAGES))
def test_iam_rules_reject_broader_policies(case):
    make, head, message = IAM_BREAKAGES[case]
    problems = iam_policy_violations(make(), head=head)
    assert any(message in p for p in problems), problems


def test_readme_creates_the_roles_from_the_policy_files():
    readme = (ROOT / "README.md").read_text()
    for name in ("ec2-trust", "head-policy", "worker-policy"):
        assert f"file://cluster/iam/{name}.json" in readme, name
    assert "aws iam create-instance-profile --instance-profile-name clapray-$who" in readme
    raw, _ = load_raw()
    for head in (True, False):  # the profiles the README creates are the ones the cluster file names
        arn = _node_type(raw, head=head)["node_config"]["IamInstanceProfile"]["Arn"]
        assert arn.rsplit("/", 1)[-1] in ("clapray-head" if head else "clapray-worker",), arn
    assert "RAY_AUTH_MODE=token" in readme and "ray get-auth-token --generate" in readme


def test_ray_up_does_not_create_or_attach_its_default_profile(tmp_path, monkeypatch):
    """Ray's AWS bootstrap, against mocked AWS: with the head's own profile it creates no role and attaches
    no policy; without it, it creates ray-autoscaler-v1 with EC2 and S3 full access (why the head has one)."""
    moto = pytest.importorskip("moto")
    pytest.importorskip("boto3")
    import boto3
    from ray.autoscaler._private.aws import config as aws_config

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test")
    monkeypatch.setenv("MOTO_IAM_LOAD_MANAGED_POLICIES", "true")
    monkeypatch.setattr(aws_config.time, "sleep", lambda _s: None)
    raw, _ = load_raw()
    for with_profile in (True, False):
        config = ray_validate(raw)
        config["head_node"] = {}  # what bootstrap_aws sets up before configuring the role
        if not with_profile:
            _head_profile(None)(config)
        with moto.mock_aws():
            config = aws_config._configure_iam_role(config)
            roles = boto3.client("iam", region_name="us-west-2").list_roles()["Roles"]
            attached = [p["PolicyName"] for r in roles for p in boto3.client("iam", region_name="us-west-2")
                        .list_attached_role_policies(RoleName=r["RoleName"])["AttachedPolicies"]]
        if with_profile:
            assert roles == [] and attached == [] and config["head_node"] == {}
        else:
            assert [r["RoleName"] for r in roles] == ["ray-autoscaler-v1"]
            assert {"AmazonEC2FullAccess", "AmazonS3FullAccess"} <= set(attached)
            assert config["head_node"]["IamInstanceProfile"]["Arn"].endswith("/ray-autoscaler-v1")


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


def _unhashed_install(config):
    config["setup_commands"].append('~/.local/bin/uv pip install --python ~/clapray-venv/bin/python "boto3>=1.26"')


def _curl_pipe_sh(config):
    config["setup_commands"].insert(0, "curl -LsSf https://astral.sh/uv/install.sh | sh")


def _start_command(key: str, edit: Callable[[str], str]) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        config[key] = [edit(c) if "ray start" in c else c for c in config[key]]

    return mutate


def _head_profile(value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(config: dict[str, Any]) -> None:
        node_config = _node_type(config, head=True)["node_config"]
        if value is None:
            node_config.pop("IamInstanceProfile")
        else:
            node_config["IamInstanceProfile"] = value

    return mutate


def _same_profile_as_workers(config):
    _node_type(config, head=True)["node_config"]["IamInstanceProfile"] = dict(
        _node_type(config, head=False)["node_config"]["IamInstanceProfile"])


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
    "an install without hashes": (_unhashed_install, "--require-hashes"),
    "a script piped into sh": (_curl_pipe_sh, "pipes a script"),
    "unpinned Python": (lambda c: c.update(setup_commands=[x.replace(" --python-preference only-managed", "")
                                                         for x in c["setup_commands"]]), "pin the Python"),
    "editable install resolving dependencies": (
        lambda c: c.update(setup_commands=[x.replace("--no-deps -e", "-e") for x in c["setup_commands"]]),
        "--no-deps"),
    "token auth off on the head": (_start_command("head_start_ray_commands",
                                                  lambda c: c.replace("RAY_AUTH_MODE=token ", "")), "RAY_AUTH_MODE"),
    "token auth off on the workers": (_start_command("worker_start_ray_commands",
                                                     lambda c: c.replace("RAY_AUTH_MODE=token ", "")), "RAY_AUTH_MODE"),
    "drivers on the nodes without token auth": (
        lambda c: c.update(setup_commands=[x for x in c["setup_commands"] if "RAY_AUTH_MODE" not in x]),
        "export RAY_AUTH_MODE=token"),
    "no token copied to the nodes": (lambda c: c["file_mounts"].pop(TOKEN_MOUNT), "Ray token"),
    "token copied from the repository": (lambda c: c["file_mounts"].update({TOKEN_MOUNT: "./auth_token"}),
                                         "never from"),
    "dashboard on all interfaces": (_start_command("head_start_ray_commands",
                                                   lambda c: c.replace("127.0.0.1", "0.0.0.0")), "127.0.0.1 only"),
    "dashboard host left to the default": (
        _start_command("head_start_ray_commands", lambda c: c.replace(" --dashboard-host=127.0.0.1", "")),
        "--dashboard-host=127.0.0.1 explicitly"),
    "head without an instance profile": (_head_profile(None), "ray-autoscaler-v1"),
    "head on ray-autoscaler-v1": (_head_profile({"Name": "ray-autoscaler-v1"}), "full access"),
    "head sharing the workers' profile": (_same_profile_as_workers, "different instance profiles"),
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
