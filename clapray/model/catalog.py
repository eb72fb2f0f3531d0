"""Backbone model configs and weights as far as they are known without importing torch or open_clip.

open_clip's registry of model configs is nothing but the JSON files in its ``model_configs`` directory
(``open_clip.factory._rescan_model_configs``) plus the directories added with ``add_model_config``;
:func:`model_configs` reads the same files, and the bundled ``clapray-*`` configs, straight from disk, so
``--dry-run`` and the sweep loader can check ``backbone.model`` without the two seconds and the memory an
``import open_clip`` costs. :func:`resolve_model_name` is the one rule for which names clapray can build
(the backbone loader applies it too), and :func:`checkpoint_format` recognises a weights file by its first
bytes, so a text file named ``weights.pt`` is refused before any weights are loaded.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import json
import struct
from pathlib import Path
from typing import Any

from clapray.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "model_configs"
"""Directory of the bundled open_clip model configs (``clapray-*.json``)."""

MINI_CLIP_TAG = "clapray-shapes"
"""``backbone.pretrained`` value meaning "the mini-CLIP pretrained on shapes captions" (trained on first use)."""
MINI_CLIP_MODEL = "clapray-mini-resnet"
"""The bundled config the mini-CLIP pretraining trains by default (a small ResNet image tower)."""
MINI_CLIP_MODELS: tuple[str, ...] = (MINI_CLIP_MODEL, "clapray-mini-vit")
"""The bundled configs the mini-CLIP recipe can pretrain; the ViT one is for variants that need a
transformer image tower (MaPLe)."""

# First bytes of the weight files open_clip (through torch.load, safetensors or NumPy) can read.
_ZIP = b"PK\x03\x04"  # torch.save (zip format, default since torch 1.6), TorchScript archives, .npz
_NUMPY = b"\x93NUMPY"
_LEGACY_TORCH = b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"  # torch's pickled magic number
_SAFETENSORS_MAX_HEADER = 100 << 20


def _open_clip_config_dir() -> Path | None:
    """open_clip's ``model_configs`` directory, located without importing open_clip."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "model_configs"


@functools.cache
def model_configs() -> dict[str, dict[str, Any]]:
    """Every model config open_clip would know once the bundled ones are registered: name -> JSON."""
    configs: dict[str, dict[str, Any]] = {}
    for folder in (_open_clip_config_dir(), CONFIG_DIR):
        if folder is None or not folder.is_dir():
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                config = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(config, dict) and all(k in config for k in ("embed_dim", "vision_cfg", "text_cfg")):
                configs[path.stem] = config
    return configs


def resolve_model_name(model_name: Any) -> str:
    """The open_clip config name of ``backbone.model`` (``ViT-B/16`` -> ``ViT-B-16``); a one-line UserError,
    with close matches, for a name clapray cannot build."""
    if not isinstance(model_name, str) or not model_name:
        raise UserError(f"backbone model name must be a non-empty string, got {model_name!r}")
    if model_name.startswith(("hf-hub:", "local-dir:")):
        raise UserError(
            f"model name {model_name[:80]!r}: 'hf-hub:'/'local-dir:' names are not supported; use an "
            "open_clip config name with pretrained=<tag or checkpoint file>"
        )
    name = model_name.replace("/", "-")  # OpenAI spelling "ViT-B/16" -> open_clip "ViT-B-16"
    known = model_configs()
    if name not in known:
        by_lower = {k.lower(): k for k in known}
        close = difflib.get_close_matches(name.lower()[:100], list(by_lower), n=5, cutoff=0.6)
        hint = ", ".join(by_lower[c] for c in close) if close else "none"
        raise UserError(
            f"unknown backbone model {model_name[:80]!r}; close matches: {hint} "
            f"(open_clip.list_models() has all {len(known)} names)"
        )
    config = known[name]
    text_cfg = config.get("text_cfg", {})
    if config.get("custom_text") or "hf_model_name" in text_cfg or "multimodal_cfg" in config:
        # Prompt-learning variants need the standard text tower (token_embedding, transformer, ...),
        # which open_clip only builds in its CLIP class.
        raise UserError(
            f"backbone model {name!r} builds open_clip's CustomTextCLIP/CoCa; clapray needs the "
            "standard CLIP text tower (e.g. ViT-B-16, ViT-L-14)"
        )
    return name


def has_plain_vit_image_tower(model_name: str) -> bool:
    """Whether the config builds open_clip's own VisionTransformer without an attention pooler (what MaPLe's
    visual prompts need): not a timm tower, not a ModifiedResNet (``layers`` given per stage)."""
    vision = model_configs()[model_name].get("vision_cfg", {})
    return (not vision.get("timm_model_name") and isinstance(vision.get("layers"), int)
            and not vision.get("attentional_pool"))


def checkpoint_format(path: Path) -> str | None:
    """What kind of weights file ``path`` is, from its first bytes: ``"zip"`` (torch.save, TorchScript,
    .npz), ``"torch-legacy"``, ``"safetensors"``, ``"npy"``; ``None`` when it is none of these."""
    with open(path, "rb") as fh:
        head = fh.read(16)
    if head.startswith(_ZIP):
        return "zip"
    if head.startswith(_NUMPY):
        return "npy"
    if head.startswith(_LEGACY_TORCH):
        return "torch-legacy"
    if len(head) >= 9:
        (header_size,) = struct.unpack("<Q", head[:8])
        if 2 <= header_size <= _SAFETENSORS_MAX_HEADER and head[8:9] == b"{":
            return "safetensors"
    return None


def check_checkpoint_file(path: Path) -> None:
    """A one-line UserError unless ``path`` starts like a weights file open_clip can read."""
    try:
        kind = checkpoint_format(path)
    except OSError as err:
        raise UserError(f"pretrained checkpoint {path} cannot be read: {err.strerror or err}") from None
    if kind is None:
        raise UserError(f"pretrained checkpoint {path} is not a checkpoint (expected a torch.save or TorchScript "
                        "file, safetensors or NumPy weights; the file starts with none of their signatures)")
