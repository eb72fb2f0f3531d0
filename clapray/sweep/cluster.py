"""Starting or reaching the Ray a sweep runs on, and fitting the sweep's trials to it.

* :func:`start_local_ray`: a sweep without ``--address`` starts a Ray of its own on this machine, whatever
  ``RAY_ADDRESS`` or Ray's ``ray_current_cluster`` file name (``ray.init(address="local")``), and every
  process of it listens on 127.0.0.1 only. Ray binds its servers to the node's IP address, which it looks
  up from the network unless ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0`` makes it use the loopback address
  (its single-machine mode, the default on macOS and Windows); :func:`prefer_loopback` sets that before Ray
  is imported, and :func:`start_local_ray` refuses to go on if the node still got another address.
* :func:`connect`: ``--address`` reaches an existing cluster or fails within a minute with one line: an
  address nobody answers on, a server that is not a Ray GCS, a cluster of another Ray version, one that
  requires token authentication the driver was not given.
* :func:`plan_trials`: checks that one trial (its Ray Train workers) fits the cluster, counting the node
  types an autoscaler may add, places the trial processes (holding their worker's CPUs and GPU share when the
  worker runs inside them, ``executor: in_trial``; for a worker group, on the custom ``train_driver`` resource
  when the cluster advertises it (``cluster/aws.yaml``'s head, a local Ray), else on a small CPU reservation)
  and, unless the sweep sets ``max_concurrent_trials``, runs as many trials at once as the cluster holds
  (with fractional ``gpus_per_worker``, several trials per GPU).
"""

from __future__ import annotations

import contextlib
import ipaddress
import math
import os
import secrets
import socket
import sys
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clapray.errors import UserError

TRAIN_DRIVER = "train_driver"
"""Custom resource the trial drivers ask for; only "safe" (non-spot) nodes advertise it."""
LOCAL_TRAIN_DRIVER_SLOTS = 1000
"""``train_driver`` units of a local Ray: trial drivers never compete with Train workers for CPUs there."""
DRIVER_CPU = 0.1
"""CPU a trial driver reserves on a cluster without ``train_driver`` (it mostly waits for its workers)."""
CONNECT_TIMEOUT_S = 30.0
"""Budget for reaching a cluster's GCS (after a TCP check of at most :data:`TCP_TIMEOUT_S`)."""
TCP_TIMEOUT_S = 5.0
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
GCS_CHECK_THREAD = "clapray-gcs-check"
TOKEN_HINT = ("the cluster requires token authentication: export RAY_AUTH_MODE=token and give this machine the "
              "cluster's token (RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token)")


@dataclass(frozen=True)
class TrialFootprint:
    """What one trial's Ray Train workers occupy (``in_trial``: its one worker runs inside the trial's process)."""

    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    in_trial: bool = False

    def worker_bundle(self) -> dict[str, float]:
        bundle = {"CPU": float(self.cpus_per_worker)}
        if self.gpus_per_worker > 0:
            bundle["GPU"] = float(self.gpus_per_worker)
        return bundle


@dataclass(frozen=True)
class NodeKind:
    """Resources of one node, and how many such nodes there are or may be (``count`` -1: unbounded)."""

    resources: Mapping[str, float]
    count: int = 1


@dataclass(frozen=True)
class TrialPlacement:
    """Where trial drivers go and how many trials run at once (``None``: as many as the cluster admits)."""

    driver_resources: Mapping[str, float]
    max_concurrent_trials: int | None
    note: str | None = None
    nodes: tuple[NodeKind, ...] = field(default=(), repr=False)


# --------------------------------------------------------------------------------------------------
# A local Ray, on loopback only


def prefer_loopback() -> None:
    """Make a Ray started by this process bind 127.0.0.1 and ignore any cluster named by ``RAY_ADDRESS``.
    Call before ``import ray`` (the setting is read at import; if Ray is already imported, its module
    constant is changed too)."""
    os.environ[LOOPBACK_ENV] = "0"
    os.environ.pop("RAY_ADDRESS", None)  # also keeps the local Ray's own processes from looking elsewhere
    constants = sys.modules.get("ray._private.ray_constants")
    if constants is not None:
        constants.ENABLE_RAY_CLUSTER = False


def start_local_ray(*, verbose: bool = False) -> Any:
    """Start a private Ray on this machine (never attach to another), bound to 127.0.0.1, with token
    authentication (Ray's default for a local cluster) so other users of the machine cannot use it either.
    Returns Ray's context; ``verbose`` forwards the workers' output to this console."""
    prefer_loopback()
    if "RAY_AUTH_MODE" not in os.environ and not _token_configured():
        # Ray would generate a token and save it to ~/.ray/auth_token; an ephemeral one in the environment
        # (inherited by the local Ray's processes only) protects the same without writing to the home directory.
        os.environ["RAY_AUTH_TOKEN"] = secrets.token_hex(32)
    # Ray Train's preemption watcher (one more actor process per trial) follows nodes being drained, e.g.
    # reclaimed spot instances; a single machine has none. Inherited by the local Ray's processes.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    import ray

    try:
        context = ray.init(address="local", resources={TRAIN_DRIVER: LOCAL_TRAIN_DRIVER_SLOTS},
                           log_to_driver=verbose, include_dashboard=None, dashboard_host="127.0.0.1")
    except OSError as err:  # e.g. a RAY_TMPDIR too deep for Ray's socket paths, a full disk
        raise UserError(f"cannot start a local Ray: {_first_line(err)}") from None
    node_ip = ray.util.get_node_ip_address()
    if not ipaddress.ip_address(node_ip).is_loopback:
        ray.shutdown()
        raise RuntimeError(f"the local Ray bound {node_ip} instead of 127.0.0.1; refusing to run a sweep that other "
                           "machines could reach")
    return context


def _token_configured() -> bool:
    return bool(os.environ.get("RAY_AUTH_TOKEN") or os.environ.get("RAY_AUTH_TOKEN_PATH")
                or (Path.home() / ".ray" / "auth_token").is_file())


def local_node() -> NodeKind:
    """The resources a local Ray on this machine advertises (CPUs as Ray counts them, cgroup limits
    included; GPUs Ray detects), before starting it."""
    prefer_loopback()
    from ray._private.accelerators import get_accelerator_manager_for_resource
    from ray._private.utils import get_num_cpus

    resources = {"CPU": float(get_num_cpus()), TRAIN_DRIVER: float(LOCAL_TRAIN_DRIVER_SLOTS)}
    gpus = get_accelerator_manager_for_resource("GPU").get_current_node_num_accelerators()
    if gpus:
        resources["GPU"] = float(gpus)
    return NodeKind(resources)


# --------------------------------------------------------------------------------------------------
# An existing cluster


def connect(address: str, *, timeout_s: float = CONNECT_TIMEOUT_S, verbose: bool = False) -> Any:
    """``ray.init`` on the cluster at ``address`` (``host:port`` or ``auto``); a one-line UserError, within
    about ``timeout_s`` + :data:`TCP_TIMEOUT_S` seconds, when it cannot be used. Returns Ray's context
    (``verbose`` forwards the workers' output to this console)."""
    import ray
    from ray._private import services

    label = f"--address {address}"
    try:
        target = services.canonicalize_bootstrap_address(address)
    except ConnectionError:
        raise UserError(f"{label}: no running Ray cluster found on this machine (RAY_ADDRESS is not set and no "
                        "`ray start` cluster is recorded); give host:port of the head") from None
    except Exception as err:  # noqa: BLE001 - a malformed address
        raise UserError(f"{label}: expected host:port of a Ray head ({_first_line(err)})") from None
    if target is None:
        raise UserError(f"{label}: expected host:port of a Ray head")
    if address == "auto":
        # What ray.init does for "auto" (and only then): use token authentication if a token is at hand.
        from ray._private.authentication.authentication_token_setup import maybe_enable_token_auth_if_token_available

        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=TCP_TIMEOUT_S).close()
    except (OSError, ValueError) as err:
        raise UserError(f"{label}: nothing answers at {target} ({_first_line(err)}); is the cluster up?") from None
    context = None
    with _native_stderr_silenced():
        problem = _gcs_problem(target, timeout_s)
        if problem is None:
            try:
                context = ray.init(address=target, log_to_driver=verbose)
            except Exception as err:  # noqa: BLE001 - every failure to attach is reported in one line
                problem = TOKEN_HINT if _is_auth_error(err) else f"cannot attach to {target}: {_first_line(err)}"
    if problem is not None:
        raise UserError(f"{label}: {problem}")
    return context


def _gcs_problem(target: str, timeout_s: float) -> str | None:
    """Ask the server at ``target`` for the cluster's Ray version, within ``timeout_s`` (Ray's own client
    retries for many minutes): ``None`` when it is a Ray GCS of this Ray version, else what is wrong."""

    outcome: list[str | None] = []

    def probe() -> None:
        try:
            import ray._raylet
            from ray._common.usage.usage_lib import get_cluster_metadata

            metadata = get_cluster_metadata(ray._raylet.GcsClient(address=target))
            version = (metadata or {}).get("ray_version")
            if version and version != ray.__version__:
                outcome.append(f"the cluster runs Ray {version}, this machine Ray {ray.__version__}; install the "
                               "same version on both")
            else:
                outcome.append(None)
        except Exception as err:  # noqa: BLE001
            outcome.append(TOKEN_HINT if _is_auth_error(err) else
                           f"{target} does not answer as a Ray cluster ({_first_line(err)})")

    worker = threading.Thread(target=probe, daemon=True, name=GCS_CHECK_THREAD)
    worker.start()
    worker.join(timeout_s)
    if not outcome:
        return (f"{target} accepts connections but did not answer as a Ray cluster within {timeout_s:g} s (not a "
                "Ray head's GCS port, or a Ray of another version)")
    return outcome[0]


def _is_auth_error(err: BaseException) -> bool:
    text = str(err)
    return type(err).__name__ == "AuthenticationError" or "InvalidAuthToken" in text or "Unauthenticated" in text


@contextlib.contextmanager
def _native_stderr_silenced() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null while Ray's C++ client tries to connect: it logs every retry
    there, and a failure must read as one line. If a connection attempt is still running in the background
    afterwards, descriptor 2 stays silenced and Python's ``sys.stderr`` moves to the real one."""
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)
    try:
        yield
    finally:
        if any(t.name == GCS_CHECK_THREAD and t.is_alive() for t in threading.enumerate()):
            sys.stderr = open(saved, "w", buffering=1)  # noqa: SIM115 - the process's stderr from now on
        else:
            os.dup2(saved, 2)
            os.close(saved)


def _first_line(err: BaseException) -> str:
    text = (str(err).strip().splitlines() or [type(err).__name__])[0]
    return text[:300]


# --------------------------------------------------------------------------------------------------
# Fitting trials to the cluster


def cluster_nodes() -> tuple[NodeKind, ...]:
    """The connected cluster's alive nodes, plus the node types its autoscaler may launch (from the
    autoscaler's published config or, on a cluster-launcher head, ``~/ray_bootstrap_config.yaml``)."""
    import ray

    kinds = [NodeKind(dict(node["Resources"])) for node in ray.nodes() if node.get("Alive")]
    kinds += _autoscaler_node_kinds()
    return tuple(kinds)


def _autoscaler_node_kinds() -> list[NodeKind]:
    kinds: list[NodeKind] = []
    try:
        from ray._private.state import state

        config = state.get_cluster_config()
    except Exception:  # noqa: BLE001 - no autoscaler state published: a fixed cluster
        config = None
    if config is not None:
        for group in config.node_group_configs:
            if group.max_count != 0:
                kinds.append(NodeKind({k: float(v) for k, v in group.resources.items()}, int(group.max_count)))
    bootstrap = Path("~/ray_bootstrap_config.yaml").expanduser()
    if not kinds and bootstrap.is_file():
        import yaml

        try:
            launcher = yaml.safe_load(bootstrap.read_text()) or {}
            for node_type in (launcher.get("available_node_types") or {}).values():
                resources = {k: float(v) for k, v in (node_type.get("resources") or {}).items()}
                count = int(node_type.get("max_workers", launcher.get("max_workers", 0)))
                if resources and count:
                    kinds.append(NodeKind(resources, count))
        except (OSError, ValueError, TypeError, AttributeError, yaml.YAMLError):
            pass
    return kinds


def plan_trials(footprint: TrialFootprint, nodes: tuple[NodeKind, ...], *, max_concurrent_trials: int | None,
                where: str, hint: str = "") -> TrialPlacement:
    """Check that one trial's workers fit ``nodes`` (``where`` names the cluster in the message, ``hint``
    ends it) and place the trial drivers; a UserError saying what is missing otherwise."""
    bundle = footprint.worker_bundle()
    per_node = [(node, _fits(node.resources, bundle)) for node in nodes]
    largest = {key: max((node.resources.get(key, 0.0) for node in nodes), default=0.0) for key in bundle}
    if not any(fit for _, fit in per_node):
        need = ", ".join(f"{v:g} {k}" for k, v in bundle.items())
        have = ", ".join(f"{largest[k]:g} {k}" for k in bundle)
        raise UserError(f"resources: one Ray Train worker needs {need} on one node, but the largest node of "
                        f"{where} has {have}; lower resources.cpus_per_worker / gpus_per_worker{hint}")
    capacity = sum(math.inf if node.count < 0 else fit * node.count for node, fit in per_node)
    if capacity < footprint.workers:
        raise UserError(f"resources: a trial needs {footprint.workers} workers of {_text(bundle)} at once, but "
                        f"{where} can hold {int(capacity)}; lower resources.workers_per_trial{hint}")
    if footprint.in_trial:
        return _trials_hold_their_worker(footprint, capacity, nodes, max_concurrent_trials, where)
    if any(node.resources.get(TRAIN_DRIVER, 0) >= 1 for node in nodes):
        return _packed_on_train_driver(footprint, capacity, nodes, max_concurrent_trials, where)
    # No train_driver anywhere (a plain `ray start`, KubeRay, SLURM): each driver takes DRIVER_CPU. Tune would
    # start as many drivers as fit, so cap the trials at what fits with their workers, or the drivers could
    # hold every CPU while their workers wait for one.
    per_trial = {key: footprint.workers * value for key, value in bundle.items()}
    per_trial["CPU"] += DRIVER_CPU
    totals = {key: sum(math.inf if n.count < 0 else n.resources.get(key, 0.0) * n.count for n in nodes)
              for key in per_trial}
    cap = max(1, int(min(math.floor(totals[key] / per_trial[key] + 1e-9) for key in per_trial if per_trial[key])))
    if max_concurrent_trials is not None:
        cap = min(cap, max_concurrent_trials)
    note = (f"note: {where} advertises no {TRAIN_DRIVER} resource; each trial driver reserves {DRIVER_CPU:g} CPU "
            f"instead, at most {cap} trial(s) at once")
    return TrialPlacement({"cpu": DRIVER_CPU}, cap, note, nodes)


def _packed_on_train_driver(footprint: TrialFootprint, capacity: float, nodes: tuple[NodeKind, ...],
                            max_concurrent_trials: int | None, where: str) -> TrialPlacement:
    """Drivers on ``train_driver``; as many trials at once as the workers' nodes (``capacity`` worker bundles)
    and the driver slots hold.

    Tune only sees a driver's ``train_driver`` unit, not the Train workers the driver will ask for, so
    without a cap it would start every trial whose driver fits (a local Ray has 1000 slots): the extra
    trials' worker groups wait for resources, time out after a minute and retry, and their processes take
    the CPU the running ones need. Fractional GPUs pack trials: 0.25 GPU per worker, 4 one-worker trials per
    GPU. Node types an autoscaler may add without bound leave the count to the driver slots."""
    drivers = sum(0.0 if not node.resources.get(TRAIN_DRIVER) else
                  math.inf if node.count < 0 else node.resources[TRAIN_DRIVER] * node.count for node in nodes)
    return _counted({"cpu": 0, TRAIN_DRIVER: 1}, min(capacity / footprint.workers, drivers), max_concurrent_trials,
                    f"what {where} holds ({footprint.workers} worker(s) of {_text(footprint.worker_bundle())} per "
                    f"trial)", nodes)


def _trials_hold_their_worker(footprint: TrialFootprint, capacity: float, nodes: tuple[NodeKind, ...],
                              max_concurrent_trials: int | None, where: str) -> TrialPlacement:
    """A trial whose worker runs inside its own process asks Tune for the worker's CPUs and GPU share itself;
    Tune then places trials wherever one fits (any node, not ``train_driver``) and starts no more than fit.
    The count derived here (one trial per worker bundle the nodes hold) is what the note says and the cap."""
    bundle = footprint.worker_bundle()
    return _counted({key.lower(): value for key, value in bundle.items()}, capacity, max_concurrent_trials,
                    f"what {where} holds ({_text(bundle)} per trial, its worker inside the trial's process)", nodes)


def _counted(resources: Mapping[str, float], fit: float, max_concurrent_trials: int | None, holds: str,
             nodes: tuple[NodeKind, ...]) -> TrialPlacement:
    """Trials of ``resources`` at once: the ``fit`` the cluster holds (unbounded: no cap from here), lowered
    to the sweep's ``max_concurrent_trials``; the note says the derived count when the sweep set none."""
    derived = None if math.isinf(fit) else max(1, math.floor(fit + 1e-9))
    if max_concurrent_trials is not None:
        cap = max_concurrent_trials if derived is None else min(max_concurrent_trials, derived)
        return TrialPlacement(resources, cap, None, nodes)
    note = None if derived is None else (f"trials: at most {derived} at once, {holds}; set "
                                         f"resources.max_concurrent_trials to run fewer")
    return TrialPlacement(resources, derived, note, nodes)


def _fits(resources: Mapping[str, float], bundle: Mapping[str, float]) -> int:
    """How many ``bundle``s one node of ``resources`` holds."""
    return int(min(math.floor(resources.get(k, 0.0) / v + 1e-9) for k, v in bundle.items() if v > 0))


def _text(resources: Mapping[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v:g}" for k, v in resources.items()) + "}"
