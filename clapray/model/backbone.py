"""The frozen open_clip backbone (§2, §19 of the method reference).

:func:`load_backbone` builds an open_clip ``CLIP`` model from a built-in or bundled config name and
weights given as an open_clip pretrained tag, a local checkpoint file, or nothing (random init).
Every parameter is frozen and the model is put in eval mode; the trainable CLAP modules live elsewhere
and stay in fp32.

Failure modes map to one-line :class:`~clapray.errors.UserError` messages:

* unknown model name -> ``UserError`` with close matches;
* unknown pretrained tag -> ``UserError`` with the valid tags for that model;
* missing checkpoint file -> ``UserError`` naming the path;
* weights neither cached nor downloadable -> :class:`~clapray.errors.WeightsUnavailableError` naming
  the cache location and how to fill it.

Random initialisation (``pretrained=None``) draws from torch's global RNG: the caller controls it with
``torch.manual_seed`` before calling :func:`load_backbone`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import zipfile
from collections.abc import Sequence
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import open_clip
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clapray.errors import UserError, WeightsUnavailableError
from clapray.model.catalog import CONFIG_DIR, check_checkpoint_file, resolve_model_name

logger = logging.getLogger(__name__)

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "fp16")
"""Supported values of ``precision``: fp32; bf16 autocast (CPU or CUDA); fp16 half towers (CUDA)."""


# Suffixes that make a ``pretrained`` value look like a file rather than a tag, so a typo in a path
# is reported as a missing file instead of an unknown tag.
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".npz", ".npy", ".ckpt")


# --------------------------------------------------------------------------------------------------
# Model config registry
# --------------------------------------------------------------------------------------------------


def bundled_model_names() -> tuple[str, ...]:
    """Names of the model configs shipped in :data:`CONFIG_DIR`, sorted."""
    return tuple(sorted(path.stem for path in CONFIG_DIR.glob("*.json")))


def register_model_configs() -> tuple[str, ...]:
    """Make the bundled configs known to open_clip; safe to call any number of times.

    ``open_clip.add_model_config`` appends the directory to a module-level search list on every call,
    so it is only called when one of the bundled names is not registered yet (first import, or a JSON
    added since).
    """
    names = bundled_model_names()
    if not set(names) <= set(open_clip.list_models()):
        open_clip.add_model_config(CONFIG_DIR)
    return names


# --------------------------------------------------------------------------------------------------
# The backbone object
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
    """A frozen open_clip CLIP model with its tokenizer and eval preprocessing.

    Configuration-like fields are immutable (frozen dataclass); the model itself is an ordinary
    ``nn.Module`` whose parameters all have ``requires_grad=False`` and which is in eval mode.

    Attributes:
        model: the open_clip ``CLIP`` module (``token_embedding``, ``positional_embedding``,
            ``transformer``, ``ln_final``, ``text_projection``, ``visual`` available for prompt
            learning variants).
        tokenizer: open_clip tokenizer; ``tokenizer(list[str]) -> LongTensor[N, context_length]``.
        preprocess: open_clip eval transform, PIL image -> ``Tensor[3, S, S]`` (Resize bicubic,
            CenterCrop, RGB, ToTensor, Normalize).
        model_name: open_clip config name (``/`` replaced by ``-``).
        pretrained: the pretrained tag, the absolute checkpoint path, or ``None`` for random init.
        device: device holding the model.
        precision: one of :data:`PRECISIONS`.
        image_size: S, side of the square input image.
        embed_dim: d, joint embedding dimension (output of both projections).
        text_width: width of the text transformer (token embedding dim).
        vision_width: width of the vision transformer; ``None`` for non-transformer image towers
            (ResNet, timm), which cannot host visual prompts.
        context_length: tokenizer / text transformer sequence length.
        logit_scale: ``exp(model.logit_scale)`` as a float (100 for OpenAI weights).
        quick_gelu: whether the towers use QuickGELU (required by OpenAI weights).
    """

    model: nn.Module = dataclasses.field(repr=False)
    tokenizer: Any = dataclasses.field(repr=False)
    preprocess: Any = dataclasses.field(repr=False)
    model_name: str
    pretrained: str | None
    device: torch.device
    precision: str
    image_size: int
    embed_dim: int
    text_width: int
    vision_width: int | None
    context_length: int
    logit_scale: float
    quick_gelu: bool
    _weights: dict[str, Any] = dataclasses.field(repr=False)

    # ---------------------------------------------------------------- precision

    @property
    def input_dtype(self) -> torch.dtype:
        """dtype images must have when entering the image tower (half for fp16 towers)."""
        return torch.float16 if self.precision == "fp16" else torch.float32

    def autocast(self) -> AbstractContextManager[Any]:
        """Context for running the towers at this backbone's precision.

        fp32 -> no-op; bf16 -> ``torch.autocast(device.type, dtype=bfloat16)`` (the weights stay
        fp32); fp16 -> no-op, because the towers' weights themselves are half (as in the official
        code, which casts CLIP to fp16) and the inputs are cast by :meth:`encode_images`.
        """
        if self.precision == "bf16":
            return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    # ---------------------------------------------------------------- encoders

    def tokenize(self, texts: Sequence[str]) -> Tensor:
        """Tokenize strings -> ``LongTensor[N, context_length]`` on the CPU."""
        return self.tokenizer(_as_str_list(texts))

    def encode_images(self, images: Tensor, *, batch_size: int | None = None) -> Tensor:
        """Encode preprocessed images ``[B, 3, S, S]`` -> L2-normalised fp32 ``[B, d]`` on ``device``.

        Runs without autograd (the image tower is frozen) under :meth:`autocast`. ``batch_size``
        splits large inputs into chunks to bound activation memory; ``None`` runs one pass.
        """
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected images of shape [B, 3, H, W], got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(
                f"{self.model_name} expects {self.image_size}x{self.image_size} images, got "
                f"{images.shape[-2]}x{images.shape[-1]}; apply backbone.preprocess first"
            )
        chunks = [images] if batch_size is None else list(images.split(batch_size))
        out: list[Tensor] = []
        with torch.no_grad(), self.autocast():
            for chunk in chunks:
                x = chunk.to(self.device, dtype=self.input_dtype, non_blocking=True)
                feats = self.model.encode_image(x)  # [b, d] in the tower's compute dtype
                # Normalise in fp32: the trainable modules downstream are fp32, and a bf16/fp16 norm
                # would leave unit vectors with ~1e-3 norm error.
                out.append(F.normalize(feats.float(), dim=-1))
        if not out:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.cat(out)

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> Tensor:
        """Encode strings -> L2-normalised fp32 ``[N, d]`` on ``device``, ``batch_size`` at a time."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        strings = _as_str_list(texts)
        out: list[Tensor] = []
        with torch.no_grad(), self.autocast():
            for start in range(0, len(strings), batch_size):
                tokens = self.tokenizer(strings[start : start + batch_size]).to(self.device)  # [b, L]
                feats = self.model.encode_text(tokens)  # [b, d]
                out.append(F.normalize(feats.float(), dim=-1))
        if not out:
            return torch.empty(0, self.embed_dim, device=self.device)
        return torch.cat(out)

    # ---------------------------------------------------------------- identity

    def fingerprint(self) -> dict[str, Any]:
        """JSON-serialisable description of everything that determines the frozen features.

        Covers the architecture (config name, QuickGELU), the weights (tag; checkpoint path with size
        and mtime at load time; or a SHA-256 of the state dict for random init), the precision and
        the eval preprocessing. Used as a cache key for precomputed features; the device is left out
        on purpose (features are meant to be shared between CPU and GPU workers).
        """
        preprocess_cfg = dict(getattr(self.model.visual, "preprocess_cfg", {}))
        return {
            "model_name": self.model_name,
            "quick_gelu": self.quick_gelu,
            "weights": dict(self._weights),
            "precision": self.precision,
            "image_size": self.image_size,
            "embed_dim": self.embed_dim,
            "preprocess": _jsonable(preprocess_cfg),
            "open_clip": open_clip.__version__,
        }

    def identity(self) -> str:
        """Short stable hash (16 hex chars) of :meth:`fingerprint`."""
        blob = json.dumps(self.fingerprint(), sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_backbone(
    model_name: str,
    pretrained: str | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Backbone:
    """Build a frozen open_clip backbone.

    Args:
        model_name: an open_clip config name (``"ViT-B-16"``; ``"ViT-B/16"`` is accepted) or a bundled
            ``clapray-*`` config.
        pretrained: an open_clip pretrained tag for that model (``"openai"``), a local checkpoint file
            (open_clip/OpenAI state dict, ``.safetensors``, or an OpenAI TorchScript ``.pt``), or
            ``None`` for random init drawn from torch's global RNG (seed it with
            ``torch.manual_seed``; only meaningful for the bundled tiny configs).
        cache_dir: where downloaded weights are cached (passed to open_clip); ``None`` uses the
            Hugging Face hub cache (``HF_HUB_CACHE``) or ``~/.cache/clip`` for URL downloads.
        device: device for the model.
        precision: ``"fp32"``, ``"bf16"`` (autocast; CPU or CUDA) or ``"fp16"`` (half towers, CUDA only).

    Raises:
        UserError: unknown model name or tag, missing or incompatible checkpoint file, bad precision
            or device.
        WeightsUnavailableError: the tag's weights are not cached and cannot be downloaded.
    """
    register_model_configs()
    name = resolve_model_name(model_name)
    dev = _resolve_device(device)
    _check_precision(precision, dev)
    cache = os.path.abspath(os.path.expanduser(os.fspath(cache_dir))) if cache_dir is not None else None
    pretrained = pretrained or None  # an empty string from a config file means "no weights"

    create_kwargs: dict[str, Any] = {}
    weights: dict[str, Any]
    if pretrained is None:
        if name not in bundled_model_names():
            logger.warning(
                "%s: no pretrained weights given, the backbone is randomly initialised "
                "(only meaningful for tests and the bundled clapray-* configs)",
                name,
            )
        source = None
        weights = {"kind": "random"}
    else:
        tag_cfg = open_clip.get_pretrained_cfg(name, pretrained)
        if tag_cfg:
            _fetch_tag_weights(name, pretrained, tag_cfg, cache)
            # open_clip 3.x builds e.g. "ViT-B-16" with nn.GELU even for the "openai" tag, whose
            # weights were trained with QuickGELU; follow the tag so the activations match.
            if tag_cfg.get("quick_gelu", False):
                create_kwargs["force_quick_gelu"] = True
            source = pretrained
            weights = {"kind": "tag", "tag": pretrained}
        else:
            path = resolve_checkpoint_path(name, pretrained)
            if _is_torchscript_archive(path):
                # OpenAI's original releases (ViT-B-16.pt, used by the official code) are TorchScript
                # archives; torch.load refuses them under weights_only=True but dispatches them to
                # torch.jit.load otherwise, which reads tensors without the general unpickler.
                create_kwargs["weights_only"] = False
                if not _config_uses_quick_gelu(name):
                    logger.warning(
                        "%s looks like an OpenAI TorchScript checkpoint (trained with QuickGELU) but %s "
                        "uses GELU; use %s-quickgelu to match the original activations",
                        path,
                        name,
                        name,
                    )
            source = str(path)
            stat = path.stat()
            weights = {"kind": "file", "path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    try:
        model, _, preprocess = open_clip.create_model_and_transforms(
            name,
            pretrained=source,
            precision="fp16" if precision == "fp16" else "fp32",
            device=dev,
            cache_dir=cache,
            **create_kwargs,
        )
    except (RuntimeError, ValueError, KeyError, OSError, EOFError, AssertionError) as err:
        if weights["kind"] != "file":
            raise
        # A state-dict mismatch (RuntimeError from strict loading, AssertionError from open_clip's
        # positional-embedding resize) or an unreadable file: say which file and why, on one line.
        raise UserError(
            f"checkpoint {source} could not be loaded into {name}: {_one_line(err, 300)}"
        ) from err

    model.requires_grad_(False)
    model.eval()
    if weights["kind"] == "random":
        weights["state_dict_sha256"] = _state_dict_digest(model)

    return Backbone(
        model=model,
        tokenizer=open_clip.get_tokenizer(name, cache_dir=cache),
        preprocess=preprocess,
        model_name=name,
        pretrained=source,
        device=dev,
        precision=precision,
        image_size=image_size_of(model),
        embed_dim=embed_dim_of(model),
        text_width=int(model.transformer.width),
        vision_width=_vision_width(model),
        context_length=int(model.context_length),
        logit_scale=float(model.logit_scale.detach().float().exp().item()),
        quick_gelu=_config_uses_quick_gelu(name) or bool(create_kwargs.get("force_quick_gelu", False)),
        _weights=weights,
    )


# --------------------------------------------------------------------------------------------------
# Validation helpers
# --------------------------------------------------------------------------------------------------


def _resolve_device(device: str | torch.device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise UserError(f"invalid device {device!r}: {_one_line(err, 120)}") from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but CUDA is not available; use device='cpu'")
    return dev


def _check_precision(precision: str, device: torch.device) -> None:
    if precision not in PRECISIONS:
        raise UserError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp16" and device.type != "cuda":
        raise UserError(
            f"precision 'fp16' casts the towers to half and needs a CUDA device, got {device.type!r}; "
            "use 'bf16' or 'fp32'"
        )


def resolve_checkpoint_path(model_name: str, pretrained: str) -> Path:
    """Treat ``pretrained`` (not a known tag) as a file; raise the right one-line error otherwise (a missing
    file, or one that is not a checkpoint, told apart by its first bytes before anything is loaded)."""
    path = Path(os.path.expanduser(pretrained)).absolute()
    if path.is_file():
        check_checkpoint_file(path)
        return path
    if path.exists():
        raise UserError(f"pretrained checkpoint {path} is not a file")
    looks_like_path = (
        os.sep in pretrained
        or "/" in pretrained
        or pretrained.startswith(("~", "."))
        or pretrained.lower().endswith(_CHECKPOINT_SUFFIXES)
    )
    if looks_like_path:
        raise UserError(f"pretrained checkpoint file not found: {path}")
    tags = open_clip.list_pretrained_tags_by_model(model_name)
    valid = ", ".join(tags) if tags else f"none ({model_name} has no published weights; use None or a file)"
    raise UserError(
        f"unknown pretrained tag {pretrained!r} for {model_name} and no such file; valid tags: {valid}"
    )


def _is_torchscript_archive(path: Path) -> bool:
    """True for a TorchScript zip (what torch.load dispatches to torch.jit.load)."""
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as archive:
        return any(n == "constants.pkl" or n.endswith("/constants.pkl") for n in archive.namelist())


def _config_uses_quick_gelu(model_name: str) -> bool:
    config = open_clip.get_model_config(model_name) or {}
    return bool(config.get("quick_gelu", False))


# --------------------------------------------------------------------------------------------------
# Weights download
# --------------------------------------------------------------------------------------------------


def _fetch_tag_weights(model_name: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | None) -> str:
    """Make sure the tag's weights file is in the cache; return its path.

    Done before ``create_model_and_transforms`` (which then finds the file in the cache) because
    open_clip turns every download failure into a generic RuntimeError. Any exception here means the
    file could not be obtained: the hub path raises FileNotFoundError (wrapping huggingface_hub's
    LocalEntryNotFoundError / OfflineModeIsEnabled), the URL path urllib.error.URLError or
    RuntimeError (checksum mismatch).
    """
    try:
        path = open_clip.download_pretrained(tag_cfg, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - every failure here is "weights unavailable"
        raise WeightsUnavailableError(_unavailable_message(model_name, tag, tag_cfg, cache_dir, err)) from err
    if not path:
        raise WeightsUnavailableError(_unavailable_message(model_name, tag, tag_cfg, cache_dir, None))
    return path


def _weights_source(tag_cfg: dict[str, Any], cache_dir: str | None) -> tuple[str, str, str]:
    """(source description, expected location, cache root) for a pretrained tag config.

    Mirrors open_clip's ``download_pretrained``: a local ``file`` entry wins, then the Hugging Face hub
    (when huggingface_hub is installed), then the URL.
    """
    if tag_cfg.get("file"):
        file = str(tag_cfg["file"])
        return file, file, os.path.dirname(file)
    hf_hub = tag_cfg.get("hf_hub", "")
    if hf_hub and open_clip.pretrained.has_hf_hub():
        from huggingface_hub import constants as hf_constants

        # "org/repo/" (default file name) or "org/repo/file.bin", as open_clip splits it.
        repo_id = os.path.split(hf_hub)[0]
        root = cache_dir or hf_constants.HF_HUB_CACHE
        return f"hf-hub:{repo_id}", os.path.join(root, "models--" + repo_id.replace("/", "--")), root
    url = tag_cfg.get("url", "")
    root = cache_dir or os.path.expanduser("~/.cache/clip")
    return url, os.path.join(root, os.path.basename(url)), root


def _unavailable_message(
    model_name: str, tag: str, tag_cfg: dict[str, Any], cache_dir: str | None, err: BaseException | None
) -> str:
    source, location, root = _weights_source(tag_cfg, cache_dir)
    reason = f" ({_root_cause(err)})" if err is not None else ""
    fetch = f"load_backbone('{model_name}', '{tag}', cache_dir='{root}')"
    return (
        f"weights for {model_name} pretrained={tag!r} are not available: not found at {location} and "
        f"the download from {source} failed{reason}; on a connected machine run "
        f"`python -c \"from clapray.model import load_backbone; {fetch}\"` and copy {root} "
        f"to this machine, or pass a local checkpoint file as pretrained"
    )


def _root_cause(err: BaseException) -> str:
    """'ExcType: first words' of the innermost chained exception (the actual network/cache error)."""
    inner = err
    seen = {id(inner)}
    while (nxt := inner.__cause__ or inner.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        inner = nxt
    return f"{type(inner).__name__}: {_one_line(inner, 120)}"


# --------------------------------------------------------------------------------------------------
# Model introspection
# --------------------------------------------------------------------------------------------------


def embed_dim_of(model: nn.Module) -> int:
    """Joint dim d, read from both projections (they must agree)."""
    proj = model.text_projection
    text_dim = proj.out_features if isinstance(proj, nn.Linear) else proj.shape[1]  # Parameter [width, d]
    vision_dim = model.visual.output_dim
    if int(text_dim) != int(vision_dim):
        raise UserError(f"text ({text_dim}) and image ({vision_dim}) embedding dims differ")
    return int(text_dim)


def _vision_width(model: nn.Module) -> int | None:
    transformer = getattr(model.visual, "transformer", None)
    width = getattr(transformer, "width", None)
    return int(width) if width is not None else None


def image_size_of(model: nn.Module) -> int:
    """Side S of the square input image of an open_clip model (from its preprocessing config)."""
    size = model.visual.preprocess_cfg["size"]
    if isinstance(size, (tuple, list)):
        if len(set(size)) != 1:
            raise UserError(f"non-square image size {tuple(size)} is not supported")
        size = size[0]
    return int(size)


def _state_dict_digest(model: nn.Module) -> str:
    """SHA-256 over names, dtypes, shapes and bytes of every state-dict tensor (sorted by name)."""
    digest = hashlib.sha256()
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# --------------------------------------------------------------------------------------------------
# Small utilities
# --------------------------------------------------------------------------------------------------


def _as_str_list(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        # A bare string is a Sequence[str] of characters; encoding each character is never intended.
        raise TypeError("expected a sequence of strings, got a single str; wrap it in a list")
    out = list(texts)
    for item in out:
        if not isinstance(item, str):
            raise TypeError(f"expected strings, got {type(item).__name__}")
    return out


def _one_line(err: BaseException, limit: int) -> str:
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)
