"""Typed, frozen configuration of one run, loaded from YAML with field-precise errors.

Defaults are the official CLAP4CLIP code's reference configuration (method reference §12.3b): hand-crafted
prompts, ViT-B/16 (OpenAI), VGA with 1 layer and 1 head, task-specific probabilistic adapters, M = 20
Monte-Carlo samples, KD weight 15, KL weight 0.001, 2000 exemplars on CIFAR-100 chosen first-k,
consolidation for 2 epochs at lr/10, 5 epochs of SGD with batch 32, lr 1e-3 x B/20, 30 % linear warmup
then cosine, class order and init seeded from run index 10. Where the paper states another choice, a
field selects it (``optim.lr_rule``, ``optim.warmup``, ...); the field's docstring names both.

Every dataclass validates itself on construction (types, ranges, cross-field rules), so a config built
in Python is as safe as one loaded from a file. Loading reports the first problem as one line::

    quickstart.yaml: memory.size: expected an integer >= 0 or null, got -5

Overrides use dotted paths, ``--set memory.size=500``; values are parsed as YAML scalars and validated
the same way.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping, Sequence

import yaml

from clapray.errors import ConfigError

# Prompt variants the method knows (§3, §14, §19). The model registry implements them; the config only
# needs the names to reject typos early, without importing torch.
PROMPT_VARIANTS = ("handcrafted", "coop", "maple", "attriclip", "cocoop", "zeroshot")
EXEMPLAR_SELECTORS = ("first_k", "random", "herding", "entropy")


def _field(default: Any = dataclasses.MISSING, *, doc: str, factory: Any = dataclasses.MISSING,
           ge: float | None = None, gt: float | None = None, le: float | None = None,
           lt: float | None = None, choices: Sequence[str] | None = None) -> Any:
    """A dataclass field with a docstring and the range it must lie in (checked on construction)."""
    meta = {"doc": doc, "ge": ge, "gt": gt, "le": le, "lt": lt, "choices": choices}
    if factory is not dataclasses.MISSING:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


# --------------------------------------------------------------------------------------------------
# Validation machinery: types from annotations, ranges from field metadata.


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is bool:
        return "true or false"
    if tp is int:
        return "an integer"
    if tp is float:
        return "a number"
    if tp is str:
        return "a string"
    if origin is Literal:
        return "one of " + ", ".join(map(str, typing.get_args(tp)))
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return " or ".join(_type_name(a) for a in args) + " or null"
    if origin is tuple:
        return f"a list of {_type_name(typing.get_args(tp)[0])}s".replace("a list of an ", "a list of ")
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return str(tp)


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """Return (ok, value converted to ``tp``). Conversions are only the lossless ones YAML needs."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return (type(None) in typing.get_args(tp)), None
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            ok, converted = _coerce(value, arg)
            if ok:
                return True, converted
        return False, value
    if origin is Literal:
        return value in typing.get_args(tp) and not isinstance(value, bool), value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            return False, value
        (item_tp, *_rest) = typing.get_args(tp)
        out = []
        for item in value:
            ok, converted = _coerce(item, item_tp)
            if not ok:
                return False, value
            out.append(converted)
        return True, tuple(out)
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool), value
    if tp is float:
        if isinstance(value, bool):
            return False, value
        if isinstance(value, (int, float)):
            return True, float(value)
        if isinstance(value, str):
            # YAML 1.1 reads ``1e-3`` (no dot) as a string; accept it as the number everybody means.
            try:
                return True, float(value)
            except ValueError:
                return False, value
        return False, value
    if tp is str:
        return isinstance(value, str), value
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp), value
    raise TypeError(f"unsupported config type {tp!r}")


def _range_text(meta: Mapping[str, Any]) -> str:
    parts = []
    for key, symbol in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if meta.get(key) is not None:
            parts.append(f"{symbol} {meta[key]:g}")
    return " and ".join(parts)


def _in_range(value: Any, meta: Mapping[str, Any]) -> bool:
    if value is None or isinstance(value, (bool, str, tuple)):
        return True
    return ((meta.get("ge") is None or value >= meta["ge"]) and (meta.get("gt") is None or value > meta["gt"])
            and (meta.get("le") is None or value <= meta["le"]) and (meta.get("lt") is None or value < meta["lt"]))


def _validate(obj: Any) -> None:
    """Check every field of a config dataclass against its annotation and metadata; normalise values."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        tp, value, meta = hints[f.name], getattr(obj, f.name), f.metadata
        ok, converted = _coerce(value, tp)
        expected = _type_name(tp)
        if ok and meta.get("choices") is not None and converted is not None and converted not in meta["choices"]:
            ok, expected = False, "one of " + ", ".join(meta["choices"])
        if ok and not _in_range(converted, meta):
            ok = False
        if not ok:
            rng = _range_text(meta)
            if rng and "one of" not in expected:
                expected = expected.replace(" or null", "") + f" {rng}" + (" or null" if "null" in expected else "")
            raise ConfigError(type(obj).__name__, f.name, expected, value)
        if converted is not value:
            object.__setattr__(obj, f.name, converted)


def _require(obj: Any, condition: bool, field_name: str, expected: str) -> None:
    """A cross-field rule: fail naming the field whose value breaks it."""
    if not condition:
        raise ConfigError(type(obj).__name__, field_name, expected, getattr(obj, field_name))


class _Config:
    """Mixin: validation on construction, dict/YAML round trip, stable hash, flat view."""

    def __post_init__(self) -> None:
        _validate(self)
        self.check()

    def check(self) -> None:
        """Cross-field rules; overridden where a section has any."""

    def to_dict(self) -> dict[str, Any]:
        return _to_plain(self)

    def flatten(self) -> dict[str, Any]:
        """``{"memory.size": 2000, ...}``: one column per leaf field (used by the results tables)."""
        out: dict[str, Any] = {}

        def walk(node: Any, prefix: str) -> None:
            for key, value in node.items():
                if isinstance(value, dict):
                    walk(value, f"{prefix}{key}.")
                else:
                    out[f"{prefix}{key}"] = list(value) if isinstance(value, tuple) else value

        walk(self.to_dict(), "")
        return out


def _to_plain(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj):
        return {f.name: _to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple):
        return [_to_plain(v) for v in obj]
    return obj


# --------------------------------------------------------------------------------------------------
# The sections of a run.


@dataclass(frozen=True)
class BackboneConfig(_Config):
    """The frozen CLIP model (§2, §19)."""

    model: str = _field("ViT-B-16", doc="open_clip model name, e.g. ViT-B-16, ViT-L-14, clapray-tiny-vit")
    pretrained: str | None = _field(
        "openai", doc="open_clip pretrained tag (openai, laion2b_...), a local checkpoint path, clapray-shapes (the "
        "mini-CLIP pretrained on shapes captions, trained on first use) or null = random init")
    cache_dir: str | None = _field(None, doc="where downloaded weights are cached; null = open_clip's default")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = _field(
        "auto", doc="towers' precision: auto = bf16 autocast on GPU and fp32 on CPU, trainable modules fp32; "
        "fp16 = the official code's all-half modules trained in fp16 (GPU only, fragile, §2/P5)")


@dataclass(frozen=True)
class ShapesConfig(_Config):
    """Options of the generated ``shapes`` and ``shapes_cl`` datasets (ignored by other datasets)."""

    num_classes: int = _field(50, doc="number of colour-shape classes", ge=2)
    train_per_class: int = _field(100, doc="training images per class", ge=1)
    test_per_class: int = _field(20, doc="test images per class", ge=1)
    image_size: int = _field(64, doc="rendered image side in pixels", ge=8)
    seed: int = _field(0, doc="generator seed: the same seed renders the same images", ge=0)
    cache: bool = _field(False, doc="render once into an array under data.root instead of on the fly")


@dataclass(frozen=True)
class DataConfig(_Config):
    """Benchmark, class-incremental split and loading (§12.3, §12.4)."""

    dataset: str = _field("cifar100", doc="registered benchmark: cifar100, imagenet100, imagenet_r, cub200, "
                          "vtab, cdcl, shapes, shapes_cl (shapes classes held out from the mini-CLIP's pretraining)")
    root: str = _field("data", doc="directory holding the datasets (and the shapes cache)")
    download: bool = _field(False, doc="download the dataset when missing (CIFAR-100 only; needs network)")
    num_tasks: int | None = _field(None, doc="number of tasks; null = the benchmark's (10, VTAB 5)", ge=1)
    classes_per_task: int | None = _field(None, doc="classes per task; null = classes / num_tasks", ge=1)
    initial_classes: int | None = _field(None, doc="classes of the first task (B50-style); null = like the "
                                         "others", ge=1)
    sequence: tuple[str, ...] = _field(
        factory=tuple, doc="cross-dataset sequence for dataset=cdcl, e.g. [imagenet100, cifar100]; "
        "empty = the benchmark's default order")
    val_fraction: float = _field(0.0, doc="fraction of each class's training images held out for "
                                 "validation (the paper tuned on 10% of CIFAR-100 train)", ge=0.0, lt=1.0)
    num_workers: int = _field(2, doc="DataLoader worker processes", ge=0)
    shapes: ShapesConfig = _field(factory=ShapesConfig, doc="options of the shapes dataset")
    feature_cache: bool = _field(
        True, doc="train and evaluate on image embeddings computed once (both flip views) when the variant "
        "keeps the image tower frozen (all but MaPLe); false = encode images every step. Same batches and "
        "flips either way, so the metrics agree up to float rounding")


@dataclass(frozen=True)
class VGAConfig(_Config):
    """Visual-guided attention: a transformer decoder, text queries over image memory (§4)."""

    enabled: bool = _field(True, doc="use VGA (off: h_c = t_c)")
    depth: int = _field(1, doc="decoder layers L (official: 1, hard-coded)", ge=1)
    heads: int | None = _field(None, doc="attention heads H; null = the variant's official value "
                               "(hand-crafted 1, CoOp/MaPLe/w/o VI d/64, AttriCLIP 8)", ge=1)
    ff_dim: int = _field(2048, doc="feed-forward width (PyTorch default 2048)", ge=1)
    dropout: float = _field(0.1, doc="dropout inside the decoder, active in main training only", ge=0.0, lt=1.0)
    context: Literal["batch", "image"] = _field(
        "batch", doc="what an image's text queries attend to: batch = every image of the batch (official; "
        "predictions depend on batch composition, P1), image = the image itself only (task-agnostic)")


@dataclass(frozen=True)
class ConsolidationConfig(_Config):
    """Class-balanced finetuning on the memory after every task but the first (§11)."""

    enabled: bool = _field(True, doc="run memory consolidation (off in replay-free mode regardless)")
    epochs: int = _field(2, doc="consolidation epochs (README 2, scripts 1)", ge=1)
    lr_factor: float = _field(0.1, doc="consolidation lr = main lr x factor (code lr/10; paper 1e-4 absolute)",
                              gt=0.0)


@dataclass(frozen=True)
class PromptConfig(_Config):
    """Options of the learnable prompt variants (§3); each variant reads only its own fields."""

    n_ctx: int = _field(12, doc="CoOp / CoCoOp: learnable context tokens before the class name (official "
                        "CoOp 12, init N(0, 0.02^2), class token at the end)", ge=1)
    maple_depth: int = _field(9, doc="MaPLe: prompt depth J, i.e. layers of both towers that get prompts (layer "
                              "0 the shallow ones, 1..J-1 the deep ones; capped at the towers' layer count)", ge=1)
    maple_length: int = _field(2, doc="MaPLe: prompt tokens per layer (initialised from 'a photo of a' when <= 4)",
                               ge=1)
    maple_official_untrained: bool = _field(
        False, doc="MaPLe: true = the released code's behaviour, the deep prompts and all coupling layers stay "
        "at their random init (only the shallow text context learns, §3.3, P14); false = train them as MaPLe "
        "intends")
    attriclip_bank_size: int = _field(10, doc="AttriCLIP: attributes in the bank (keys + prompts, --num_prompt)",
                                      ge=1)
    attriclip_prompt_length: int = _field(12, doc="AttriCLIP: tokens of one attribute prompt", ge=1)
    attriclip_top_k: int = _field(3, doc="AttriCLIP: attributes selected per image (--text_prompt)", ge=1)
    attriclip_ortho_weight: float = _field(0.3, doc="AttriCLIP: weight of the attribute orthogonality loss "
                                           "(--ortho-loss)", ge=0.0)
    attriclip_match_weight: float = _field(0.7, doc="AttriCLIP: weight of the key-matching loss (--matching-loss)",
                                           ge=0.0)
    cocoop_reduction: int = _field(16, doc="CoCoOp: the meta-net's bottleneck divides the embedding dim by this",
                                   ge=1)

    def check(self) -> None:
        _require(self, self.attriclip_top_k <= self.attriclip_bank_size, "attriclip_top_k",
                 f"an integer <= attriclip_bank_size ({self.attriclip_bank_size})")


@dataclass(frozen=True)
class MethodConfig(_Config):
    """The CLAP knobs (§4 - §11, §14)."""

    variant: str = _field("handcrafted", doc="prompt variant: handcrafted, coop, maple, attriclip, cocoop, or "
                          "zeroshot (Continual-CLIP, trains nothing) (§3)", choices=PROMPT_VARIANTS)
    prompt: PromptConfig = _field(factory=PromptConfig, doc="options of the learnable prompt variants")
    deterministic: bool = _field(False, doc="the 'w/o VI' variant: mean heads only, no sampling or KL (§14)")
    vga: VGAConfig = _field(factory=VGAConfig, doc="visual-guided attention")
    mc_samples_train: int = _field(20, doc="Monte-Carlo samples M in training (official 20 = eval)", ge=1)
    mc_samples_eval: int = _field(20, doc="Monte-Carlo samples M at evaluation", ge=1)
    kl_weight: float = _field(0.001, doc="weight of KL(q || prior) (hard-coded 0.001 officially)", ge=0.0)
    prior: Literal["standard", "data_driven", "language_aware"] = _field(
        "standard", doc="prior of the adapters' posteriors: N(0, I), data-driven (--use-np-prior) or "
        "language-aware (--frozen-prior) (§6)")
    prior_context_size: float = _field(0.67, doc="batch fraction used as context by the data-driven prior",
                                       gt=0.0, le=1.0)
    kd_weight: float = _field(15.0, doc="language-aware KD weight gamma (--beta; 0 disables) (§7)", ge=0.0)
    language_init: bool = _field(True, doc="language-aware init of each new adapter from template "
                                 "statistics (§8)")
    task_specific_adapters: bool = _field(True, doc="one (mu, sigma) pair per task; false = one shared pair")
    consolidation: ConsolidationConfig = _field(factory=ConsolidationConfig, doc="memory consolidation")


@dataclass(frozen=True)
class MemoryConfig(_Config):
    """Exemplar memory for experience replay (§10)."""

    policy: Literal["auto", "total", "per_class"] = _field(
        "auto", doc="auto = the official choice per dataset (CIFAR-100: 2000 in total, others 20 per "
        "class); total = size split evenly over seen classes; per_class = size per class")
    size: int | None = _field(None, doc="exemplars in total or per class (per policy); null with auto", ge=0)
    selector: str = _field("first_k", doc="exemplar selector: first_k (the official 'random'), random "
                           "(a true seeded choice), herding (iCaRL), entropy (the paper's)",
                           choices=EXEMPLAR_SELECTORS)

    def check(self) -> None:
        _require(self, self.policy == "auto" or self.size is not None, "size",
                 f"an integer >= 0 when policy is {self.policy}")


@dataclass(frozen=True)
class BudgetConfig(_Config):
    """Resource-constrained settings (§12.6)."""

    replay_free: bool = _field(False, doc="no exemplar memory and no consolidation")
    max_steps_per_task: int | None = _field(
        None, doc="compute budget: cap on optimiser steps per task (main training); null = no cap", ge=1)


@dataclass(frozen=True)
class OptimConfig(_Config):
    """SGD and its schedule (§12.1). A fresh optimiser per task and per consolidation phase."""

    epochs: int = _field(5, doc="epochs per task", ge=1)
    batch_size: int = _field(32, doc="training batch (code 32, paper 64)", ge=1)
    lr: float = _field(1e-3, doc="base learning rate", gt=0.0)
    lr_rule: Literal["batch_scaled", "fixed"] = _field(
        "batch_scaled", doc="batch_scaled = lr x batch/20 (code), fixed = lr as given (paper; MaPLe code)")
    warmup: Literal["fraction", "epoch", "none"] = _field(
        "fraction", doc="linear warmup: fraction of the task's steps (code, 30%), one epoch (paper), none")
    warmup_fraction: float = _field(0.3, doc="warmup share of steps when warmup = fraction", ge=0.0, lt=1.0)
    min_lr_factor: float = _field(1e-3, doc="cosine decays to lr x this factor", ge=0.0, le=1.0)
    momentum: float = _field(0.0, doc="SGD momentum (official 0)", ge=0.0, lt=1.0)
    weight_decay: float = _field(0.0, doc="SGD weight decay (official 0)", ge=0.0)


@dataclass(frozen=True)
class EvalConfig(_Config):
    """Evaluation protocol and metrics (§13)."""

    batch_size: int | None = _field(None, doc="test batch; null = the training batch (official)", ge=1)
    protocol: Literal["per_task", "mixed"] = _field(
        "per_task", doc="per_task = one loader per task's test set (official: VGA context holds one task); "
        "mixed = batches drawn across all seen tasks (a robustness check, P1)")
    split: Literal["test", "val"] = _field("test", doc="evaluate on the test set or the validation split")
    ece_bins: int = _field(15, doc="confidence bins of ECE", ge=1)
    phndd: bool = _field(True, doc="post-hoc novel data detection (energy score) at every step but the last")


@dataclass(frozen=True)
class SeedConfig(_Config):
    """Separate seeds: the class order (with the data split) and everything random in training."""

    class_order: int = _field(10, doc="class order = NumPy permutation seeded 1993 + this (official "
                              "--num-run; README 10); also seeds the validation split", ge=0)
    init: int = _field(10, doc="seeds module init, MC sampling, shuffling, flips and exemplar choice", ge=0)


@dataclass(frozen=True)
class RunConfig(_Config):
    """Everything that defines one continual-learning run."""

    name: str = _field("clap4clip", doc="run name; the output directory is output_dir/name-<config hash>")
    output_dir: str = _field("runs", doc="where runs write their directory")
    device: Literal["auto", "cpu", "cuda"] = _field("auto", doc="auto = cuda when available")
    backbone: BackboneConfig = _field(factory=BackboneConfig, doc="frozen CLIP")
    data: DataConfig = _field(factory=DataConfig, doc="benchmark and scenario")
    method: MethodConfig = _field(factory=MethodConfig, doc="CLAP method")
    memory: MemoryConfig = _field(factory=MemoryConfig, doc="exemplar memory")
    budget: BudgetConfig = _field(factory=BudgetConfig, doc="resource constraints")
    optim: OptimConfig = _field(factory=OptimConfig, doc="optimisation")
    eval: EvalConfig = _field(factory=EvalConfig, doc="evaluation")
    seeds: SeedConfig = _field(factory=SeedConfig, doc="seeds")

    def check(self) -> None:
        _require(self, bool(self.name) and "/" not in self.name and self.name not in (".", ".."), "name",
                 "a non-empty name without '/'")
        if self.eval.split == "val" and self.data.val_fraction == 0.0:
            raise ConfigError("RunConfig", "eval.split", "test unless data.val_fraction > 0", self.eval.split)
        if self.backbone.precision == "fp16" and self.device == "cpu":
            raise ConfigError("RunConfig", "backbone.precision", "fp32, bf16 or auto on device cpu", "fp16")

    @property
    def uses_memory(self) -> bool:
        return not self.budget.replay_free and self.method.variant != "zeroshot"

    def config_hash(self) -> str:
        """A stable 12-hex-digit hash of every field except the name and where outputs go."""
        payload = self.to_dict()
        payload.pop("name"), payload.pop("output_dir")
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:12]

    def run_dir(self) -> Path:
        return Path(self.output_dir) / f"{self.name}-{self.config_hash()}"

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


# --------------------------------------------------------------------------------------------------
# Loading: mapping -> dataclass, YAML files, dotted overrides.


def from_mapping(cls: type[Any], data: Any, source: str, prefix: str = "") -> Any:
    """Build config dataclass ``cls`` from a nested mapping; the first problem raises a ConfigError.

    ``source`` names where the data came from (a file path, ``--set``) and ``prefix`` the dotted path of
    ``data`` inside the whole config, so errors read ``file: memory.size: expected ..., got ...``.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(source, prefix.rstrip(".") or "<top level>", "a mapping of fields", data)
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in fields:
            raise ConfigError(source, f"{prefix}{key}", "one of the fields " + ", ".join(fields), None,
                              got_text="an unknown field")
        tp = hints[key]
        if dataclasses.is_dataclass(tp):
            kwargs[key] = from_mapping(tp, value, source, f"{prefix}{key}.")
        else:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if err.source == cls.__name__:  # raised by cls's own checks: re-anchor at this file and path
            raise err.relocated(source, prefix) from None
        raise


def load_yaml_mapping(path: str | Path) -> dict[str, Any]:
    """Read a YAML file that must hold a mapping; unreadable or malformed files give one-line errors."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(str(path), "<file>", "an existing YAML file", None, got_text="no such file") from None
    except OSError as err:
        raise ConfigError(str(path), "<file>", "a readable YAML file", None, got_text=err.strerror) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}" if mark is not None else "<file>"
        problem = getattr(err, "problem", None) or str(err).splitlines()[0]
        raise ConfigError(str(path), where, "valid YAML", None, got_text=problem) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(str(path), "<top level>", "a mapping of fields", data)
    return data


def parse_override(text: str) -> tuple[list[str], Any]:
    """``"memory.size=500"`` -> (["memory", "size"], 500); the value is read as a YAML scalar."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError("--set", key or text, "dotted.field=value", text)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], cls: type[Any] = None) -> dict[str, Any]:
    """Return a copy of ``data`` with ``--set`` overrides applied (validated later with the whole config).

    Paths are checked against the dataclass tree here, so a typo fails as ``--set: memroy.size: ...``
    rather than as an unknown key of the file.
    """
    cls = cls or RunConfig
    out = json.loads(json.dumps(data))  # deep copy of plain data
    for text in overrides:
        path, value = parse_override(text)
        node_cls, node = cls, out
        for depth, part in enumerate(path):
            names = {f.name: f for f in dataclasses.fields(node_cls)}
            dotted = ".".join(path[: depth + 1])
            if part not in names:
                raise ConfigError("--set", dotted, "one of the fields " + ", ".join(names), None,
                                  got_text="an unknown field")
            sub_tp = typing.get_type_hints(node_cls)[part]
            if depth == len(path) - 1:
                if dataclasses.is_dataclass(sub_tp) and not isinstance(value, dict):
                    raise ConfigError("--set", dotted, "a leaf field (a section needs a mapping)", value)
                node[part] = value
            else:
                if not dataclasses.is_dataclass(sub_tp):
                    raise ConfigError("--set", dotted, "a section with fields", None, got_text="a leaf field")
                existing = node.get(part)
                if not isinstance(existing, dict):
                    existing = node[part] = {}
                node_cls, node = sub_tp, existing
    return out


def load_run_config(path: str | Path | None = None, overrides: Sequence[str] = ()) -> RunConfig:
    """Load a run YAML (``None`` = all defaults) and apply ``--set`` overrides."""
    data = load_yaml_mapping(path) if path is not None else {}
    source = str(path) if path is not None else "<defaults>"
    # Check the file on its own first, so its errors name the file rather than --set.
    config = from_mapping(RunConfig, data, source)
    if not overrides:
        return config
    merged = apply_overrides(data, overrides)
    try:
        return from_mapping(RunConfig, merged, source)
    except ConfigError as err:
        # The file alone was valid, so an override caused this: name --set when the failing field is one
        # that was overridden, else the combination (a cross-field rule broken by the override).
        overridden = [parse_override(text)[0] for text in overrides]
        hit = any(err.field == ".".join(p) or err.field.startswith(".".join(p) + ".") for p in overridden)
        raise err.relocated("--set" if hit else f"{source} with --set", "") from None


def describe_fields(cls: type[Any] = RunConfig, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(dotted field, type text, default, docstring) for every leaf field: the config reference."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe_fields(tp, f"{prefix}{f.name}."))
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore
        expected = _type_name(tp)
        if f.metadata.get("choices"):
            expected = "one of " + ", ".join(f.metadata["choices"])
        rng = _range_text(f.metadata)
        rows.append((f"{prefix}{f.name}", f"{expected}{' ' + rng if rng else ''}", _to_plain(default),
                     f.metadata.get("doc", "")))
    return rows
