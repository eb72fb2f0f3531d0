"""What ``python -m clapray.sweep`` checks before it writes or starts anything (``--dry-run`` included).

Loading already validated every field and, through :mod:`clapray.sweep.runs_check`, every cell's run
config against the registries. Here, the checks that touch the outside world, the same functions a single
run uses (:mod:`clapray.validation`):

* ``storage`` is a writable directory or an object store that answers;
* every cell's ``backbone.pretrained`` is a tag of its model or a checkpoint file (files only for a local
  sweep: on a cluster the nodes read them);
* for a local sweep, the datasets are on disk and one trial fits this machine;
* with ``--address`` and ``--dry-run``, one trial fits that cluster (a real run checks after connecting).
"""

from __future__ import annotations

from collections.abc import Iterator

from clapray.config import RunConfig
from clapray.sweep.cluster import TrialFootprint, TrialPlacement, cluster_nodes, connect, local_node, plan_trials
from clapray.sweep.model import SweepConfig
from clapray.validation import check_data_available, check_storage, check_weights


def footprint(sweep: SweepConfig) -> TrialFootprint:
    res = sweep.resources
    return TrialFootprint(res.workers_per_trial, res.cpus_per_worker, res.gpus_per_worker, res.in_trial)


def distinct_cell_configs(sweep: SweepConfig) -> Iterator[RunConfig]:
    seen = set()
    for cell in sweep.cells():
        cfg = sweep.cell_config(cell)
        key = (cfg.backbone, cfg.data)
        if key not in seen:
            seen.add(key)
            yield cfg


def check_sweep(sweep: SweepConfig, *, address: str | None, storage_label: str, dry_run: bool) -> None:
    """Storage, data (a real local sweep) and weights: a one-line UserError for the first problem."""
    check_storage(sweep.storage, storage_label)
    configs = list(distinct_cell_configs(sweep))
    if address is None and not dry_run:
        for cfg in configs:  # the data is read where the sweep runs: here, for a local sweep
            check_data_available(cfg)
    for cfg in configs:
        check_weights(cfg, sweep.source, local_files=address is None)


def check_resources(sweep: SweepConfig, *, address: str | None) -> TrialPlacement:
    """One trial fits the target: this machine (no ``address``), or the cluster at ``address`` (connected to
    and left again: a real sweep checks once connected). A one-line UserError otherwise."""
    cap = sweep.resources.max_concurrent_trials
    if address is None:
        return plan_trials(footprint(sweep), (local_node(),), max_concurrent_trials=cap, where="this machine",
                           hint=", or run the sweep on a cluster with --address (a dry run with --address checks "
                           "that cluster)")
    import ray

    connect(address)
    try:
        return plan_trials(footprint(sweep), cluster_nodes(), max_concurrent_trials=cap,
                           where=f"the cluster at {address}")
    finally:
        ray.shutdown()
