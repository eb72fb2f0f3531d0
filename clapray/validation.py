"""One validation pass: everything a run needs, checked before anything is written, loaded or started.

A :class:`~clapray.config.RunConfig` checks its own fields (types, ranges, cross-field rules) on
construction. What it cannot know on its own is checked here, with the same one-line
:class:`~clapray.errors.ConfigError` naming the file and the dotted field:

* :func:`check_run` (no torch, no data, no network; the sweep loader runs it on every cell): the dataset
  is registered and the tasks split its classes (``data.num_tasks``, ``classes_per_task``,
  ``initial_classes``, chained datasets' boundaries), the backbone is an open_clip config clapray can
  build, and the method's options fit that backbone (VGA heads, MaPLe's ViT tower, the data-driven prior).
* :func:`check_weights` (imports open_clip): ``backbone.pretrained`` is a known tag of the model or a
  file that is a checkpoint (by its first bytes; nothing is loaded or downloaded).
* :func:`check_output_dir` and :func:`check_storage`: where results go can be created or written (a
  local directory), or answers (an ``s3://`` bucket, within a few seconds).

The run CLI and the sweep CLI call the same functions, for ``--dry-run`` and before a real run, so a dry
run refuses exactly what the real run would. What only the run itself finds (data missing on disk, weights
neither cached nor downloadable, a GPU that is not there) is left to it; it too fails with one line.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clapray.config import RunConfig
from clapray.data import TaskSplitError, benchmark_shape, list_benchmarks, plan_tasks
from clapray.errors import ConfigError, UserError
from clapray.model.catalog import (
    MINI_CLIP_MODELS,
    MINI_CLIP_TAG,
    has_plain_vit_image_tower,
    model_configs,
    resolve_model_name,
)
from clapray.model.prompts.catalog import variant_spec

STORAGE_TIMEOUT_S = 10.0
"""How long :func:`check_storage` waits for an object store to answer."""

# Characters of a run directory name: what the results store accepts as a run id.
_RUN_ID_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


# --------------------------------------------------------------------------------------------------
# The run config against the registries (no torch)


def benchmark_request(cfg: RunConfig) -> tuple[str, dict[str, Any]]:
    """The benchmark a run builds: its registered name and the builder's options."""
    data = cfg.data
    options: dict[str, Any] = {}
    if data.dataset in ("shapes", "shapes_cl"):
        s = data.shapes
        options = dict(num_classes=s.num_classes, train_per_class=s.train_per_class,
                       test_per_class=s.test_per_class, image_size=s.image_size, seed=s.seed, cache=s.cache)
    elif data.dataset == "cifar100":
        options = dict(download=data.download)
    elif data.dataset == "cdcl":
        options = dict(dataset_options={"cifar100": {"download": data.download}})
        if data.sequence:
            options["sequence"] = tuple(data.sequence)
    if data.sequence and data.dataset != "cdcl":
        raise UserError(f"data.sequence: only used with dataset cdcl, but dataset is {data.dataset!r}")
    return data.dataset, options


# The fields check_run reads (dotted prefixes): a sweep re-checks a sampled value only when it sets one.
RUN_CHECK_FIELDS = ("data.", "backbone.model", "backbone.pretrained", "method.variant", "method.prior",
                    "method.deterministic", "method.vga.")


def run_check_key(cfg: RunConfig) -> tuple[Any, ...]:
    """What :func:`check_run` decides on: two configs with the same key pass or fail alike."""
    m = cfg.method
    return (cfg.data, cfg.backbone.model, cfg.backbone.pretrained, m.variant, m.prior, m.deterministic, m.vga)


def check_run(cfg: RunConfig, source: str) -> None:
    """Every rule the run would enforce while building its pieces, decided from the config alone (reading only
    the fields of :data:`RUN_CHECK_FIELDS`)."""
    _check_data(cfg, source)
    model = _check_backbone(cfg, source)
    _check_method(cfg, source, model)


def _check_data(cfg: RunConfig, source: str) -> None:
    data = cfg.data
    known = list_benchmarks()
    if data.dataset not in known:
        raise ConfigError(source, "data.dataset", "a registered dataset (" + ", ".join(known) + ")", data.dataset)
    if data.sequence and data.dataset != "cdcl":
        raise ConfigError(source, "data.sequence", "an empty list unless data.dataset is cdcl", list(data.sequence))
    unknown = [name for name in data.sequence if name not in known or name == "cdcl"]
    if unknown:
        raise ConfigError(source, "data.sequence", "registered datasets other than cdcl (" +
                          ", ".join(n for n in known if n != "cdcl") + ")", list(data.sequence))
    name, options = benchmark_request(cfg)
    try:
        shape = benchmark_shape(name, **options)
    except ConfigError as err:  # the builder's own option checks (shapes: num_classes, image_size, ...)
        raise ConfigError(source, f"data.shapes.{err.field}", err.expected, err.got) from None
    except UserError as err:
        raise UserError(f"{source}: data.{'sequence' if name == 'cdcl' else 'dataset'}: {err}") from None
    if shape is None:  # a benchmark registered without a shape: the run checks its tasks
        return
    try:
        plan_tasks(shape, num_tasks=data.num_tasks, classes_per_task=data.classes_per_task,
                   initial_classes=data.initial_classes)
    except TaskSplitError as err:
        known = "classes" in err.expected  # the message names the class count already
        raise ConfigError(source, f"data.{err.option}",
                          err.expected if known else f"{err.expected} ({name} has {shape.num_classes} classes)",
                          err.got) from None


def _check_backbone(cfg: RunConfig, source: str) -> str:
    try:
        model = resolve_model_name(cfg.backbone.model)
    except UserError as err:
        raise UserError(f"{source}: backbone.model: {err}") from None
    if cfg.backbone.pretrained == MINI_CLIP_TAG and model not in MINI_CLIP_MODELS:
        raise ConfigError(source, "backbone.pretrained", f"{MINI_CLIP_TAG} only with backbone.model "
                          f"{' or '.join(MINI_CLIP_MODELS)} (the models it pretrains)", MINI_CLIP_TAG,
                          got_text=f"{MINI_CLIP_TAG} with {model}")
    return model


def _check_method(cfg: RunConfig, source: str, model: str) -> None:
    method = cfg.method
    spec = variant_spec(method.variant)
    if not spec.learns:
        return  # no head, no prompts: nothing below is built
    if not spec.image_tower_frozen and not has_plain_vit_image_tower(model):
        raise ConfigError(source, "method.variant", f"a variant other than {spec.name} with backbone.model {model} "
                          f"({spec.name} prompts the image tower, which must be a plain ViT)", method.variant)
    if method.prior == "data_driven":
        if not method.vga.enabled or method.vga.context != "batch":
            raise ConfigError(source, "method.prior", "standard or language_aware unless method.vga.enabled is "
                              "true and method.vga.context is batch (the data-driven prior attends over the batch)",
                              method.prior)
        if spec.per_image_queries:
            raise ConfigError(source, "method.prior", f"standard or language_aware with variant {spec.name} "
                              "(its text features are per image)", method.prior)
    slots = _prompt_slots(method)
    if slots is not None:
        field, count = slots
        context = int(model_configs()[model].get("text_cfg", {}).get("context_length", 77))
        if count + 2 > context:  # + start and end tokens; the run checks the class names' tokens exactly
            raise ConfigError(source, f"method.prompt.{field}", f"fewer learnable tokens ({count} with variant "
                              f"{spec.name}); the text tower of {model} takes {context} tokens in all",
                              getattr(method.prompt, field))
    if method.vga.enabled:
        dim = int(model_configs()[model]["embed_dim"])
        heads = method.vga.heads or spec.default_vga_heads(dim, method.deterministic)
        if dim % heads:
            raise ConfigError(source, "method.vga.heads", f"a divisor of the embedding dim {dim} of {model}", heads)


def task_count(cfg: RunConfig) -> int:
    """Tasks of the run's scenario, from the benchmark's shape (no data needed); call after check_run."""
    name, options = benchmark_request(cfg)
    shape = benchmark_shape(name, **options)
    if shape is None:  # no shape registered: build the scenario (needs the data)
        from clapray.builders import build_scenario_from_config

        return build_scenario_from_config(cfg).num_tasks
    return len(plan_tasks(shape, num_tasks=cfg.data.num_tasks, classes_per_task=cfg.data.classes_per_task,
                          initial_classes=cfg.data.initial_classes))


def check_data_available(cfg: RunConfig) -> None:
    """The dataset's files are under ``data.root`` (the builder's one-line DatasetNotFoundError otherwise);
    generated benchmarks need none. Reads split lists and metadata, no images."""
    name, options = benchmark_request(cfg)
    shape = benchmark_shape(name, **options)
    if shape is not None and shape.generated:
        return
    from clapray.data import build_benchmark

    build_benchmark(name, cfg.data.root, **options)


def _prompt_slots(method: Any) -> tuple[str, int] | None:
    """(field, learnable tokens in one prompt) of the variants that put learnable tokens in the text."""
    p = method.prompt
    return {"coop": ("n_ctx", p.n_ctx), "cocoop": ("n_ctx", p.n_ctx), "maple": ("maple_length", p.maple_length),
            "attriclip": ("attriclip_prompt_length", p.attriclip_top_k * p.attriclip_prompt_length),
            }.get(method.variant)


# --------------------------------------------------------------------------------------------------
# Weights (imports open_clip; nothing is loaded or downloaded)


def check_weights(cfg: RunConfig, source: str, *, local_files: bool = True) -> None:
    """``backbone.pretrained`` is null, the mini-CLIP, a tag open_clip knows for the model, or a checkpoint
    file (recognised by its first bytes). ``local_files=False`` skips paths that need not exist here (a
    sweep on a cluster reads them on its nodes)."""
    pretrained = cfg.backbone.pretrained
    if not pretrained or pretrained == MINI_CLIP_TAG:
        return
    import open_clip

    from clapray.model.backbone import register_model_configs, resolve_checkpoint_path

    register_model_configs()
    model = resolve_model_name(cfg.backbone.model)
    if open_clip.get_pretrained_cfg(model, pretrained):
        return  # a tag: whether its weights are cached or downloadable is the run's to find out
    if not local_files and not Path(os.path.expanduser(pretrained)).exists():
        return
    try:
        resolve_checkpoint_path(model, pretrained)
    except UserError as err:
        raise UserError(f"{source}: backbone.pretrained: {err}") from None


# --------------------------------------------------------------------------------------------------
# Where results go


def check_output_dir(path: str, label: str) -> None:
    """``path`` is a directory that can be written, or can be created under one that can. ``label`` names
    where the path came from in the message (``--out``, ``run.yaml: output_dir``)."""
    if not path or not path.strip():
        raise UserError(f"{label}: expected a directory path, got an empty one")
    target = Path(os.path.expanduser(path))
    probe = target
    while not probe.exists() and not probe.is_symlink() and probe.parent != probe:
        probe = probe.parent
    if not probe.is_dir():
        where = "which is a file" if probe == target else f"inside {probe}, which is a file"
        raise UserError(f"{label}: expected a directory (or a path where one can be created), got {path}, {where}")
    if not os.access(probe, os.W_OK | os.X_OK):
        where = "" if probe == target else f" (the nearest existing directory is {probe})"
        raise UserError(f"{label}: expected a writable directory, got {path}, which is not writable{where}")


def check_run_directory_name(cfg: RunConfig, source: str) -> None:
    """A standalone run's directory is ``<name>-<hash>``: the name must be a plain file name."""
    if not set(cfg.name) <= _RUN_ID_CHARS:
        raise ConfigError(source, "name", "letters, digits, '.', '_' and '-' (a run's directory is named after it)",
                          cfg.name)


def check_storage(storage: str, label: str, *, timeout_s: float = STORAGE_TIMEOUT_S) -> None:
    """A local store is a writable directory; an object store (``s3://``) answers within ``timeout_s``
    (its bucket exists and can be listed with this machine's credentials; nothing is written)."""
    if "://" not in storage:
        check_output_dir(storage, label)
        return
    from clapray.fileio import resolve_filesystem

    def probe() -> None:
        import pyarrow.fs as pafs

        fs, path = resolve_filesystem(storage)
        bucket = path.split("/", 1)[0]
        if fs.get_file_info(bucket).type == pafs.FileType.NotFound:
            raise FileNotFoundError(f"bucket {bucket} does not exist")
        fs.get_file_info(path)

    error = _within(probe, timeout_s)
    if error == "timeout":
        raise UserError(f"{label}: expected a reachable object store, got {storage}, which did not answer within "
                        f"{timeout_s:g} s")
    if error is not None:
        raise UserError(f"{label}: expected a reachable object store, got {storage} ({error})")


def _within(fn: Callable[[], None], timeout_s: float) -> str | None:
    """Run ``fn`` in a daemon thread: ``None`` if it returned, its error's first line, or ``"timeout"``.

    A thread, because the S3 client retries with back-off and cannot be given a deadline per call; a
    thread still waiting is abandoned (the process exits with the error anyway)."""
    outcome: list[str | None] = []

    def target() -> None:
        try:
            fn()
            outcome.append(None)
        except Exception as err:  # noqa: BLE001 - any failure means "not reachable", reported in one line
            text = (str(err).splitlines() or [type(err).__name__])[0]
            outcome.append(text[:200])

    worker = threading.Thread(target=target, daemon=True, name="clapray-storage-check")
    worker.start()
    worker.join(timeout_s)
    return outcome[0] if outcome else "timeout"
