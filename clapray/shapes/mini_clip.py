"""The cached mini-CLIP: where its checkpoint lives, pretraining it on first use, loading it.

A checkpoint is an ordinary open_clip state-dict file under ``<cache>/<settings key>/model.pt`` (the key
hashes every setting, the recipe and generator versions and the model config, so a stale checkpoint is
never reused), with an ``info.json`` beside it. :func:`ensure_mini_clip` returns the path, pretraining
under a directory lock if it is missing; :func:`clapray.model.load_backbone` loads it as
``pretrained=<path>``.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import open_clip
import torch
from torch import Tensor

from clapray.errors import UserError
from clapray.fileio import directory_lock, write_bytes_atomic
from clapray.model.backbone import Backbone, load_backbone
from clapray.shapes.pretrain import MODEL_NAME, PretrainSettings, make_settings, pretrain

CHECKPOINT_NAME = "model.pt"
INFO_NAME = "info.json"
CACHE_ENV = "CLAPRAY_CACHE"


def default_cache_dir() -> Path:
    """``$CLAPRAY_CACHE/mini-clip`` if the variable is set, else ``~/.cache/clapray/mini-clip``."""
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "clapray"
    return base / "mini-clip"


def checkpoint_path(settings: PretrainSettings, cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """Where the checkpoint of ``settings`` lives: ``<cache_dir>/<key>/model.pt``."""
    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return root.absolute() / settings.key() / CHECKPOINT_NAME


def state_dict_bytes(state_dict: Mapping[str, Tensor]) -> bytes:
    """The serialised checkpoint. Saved through a buffer: ``torch.save`` names the archive's records
    after the file, which would make the bytes depend on the (temporary) file name."""
    buffer = io.BytesIO()
    torch.save(dict(state_dict), buffer)
    return buffer.getvalue()


def is_cached(path: Path) -> bool:
    """Whether a checkpoint file is in place (non-empty; it is only ever written whole)."""
    return path.is_file() and path.stat().st_size > 0


def ensure_mini_clip(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    force: bool = False,
    threads: int | None = 2,
    log: Callable[[str], None] | None = None,
    **overrides: Any,
) -> Path:
    """Path of the pretrained mini-CLIP checkpoint, pretraining it first if it is missing.

    The model is :data:`~clapray.shapes.pretrain.MODEL_NAME` (``clapray-mini-resnet``) unless the
    ``model_name`` override names another of :data:`~clapray.model.catalog.MINI_CLIP_MODELS`.

    Args:
        cache_dir: directory holding ``<key>/model.pt``; ``None`` uses :func:`default_cache_dir`.
        force: retrain and replace the checkpoint even if it exists.
        threads: intra-op threads while training (part of what makes the bytes reproducible).
        log: receives progress lines; ``None`` is silent.
        **overrides: fields of :class:`PretrainSettings` (``seed``, ``steps``, ...).

    Returns:
        The absolute checkpoint path, loadable with ``load_backbone(model_name, pretrained=str(path))``.

    Concurrent callers (threads or processes) serialise on a lock file next to the checkpoint; the
    file is written under a unique temporary name and renamed, so it is never seen half-written.
    """
    settings = make_settings(**overrides)
    path = checkpoint_path(settings, cache_dir)
    if is_cached(path) and not force:
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise UserError(f"pretrain: cannot create the cache directory {path.parent}: {err}; "
                        f"choose another with --cache-dir or ${CACHE_ENV}") from None
    with directory_lock(path.parent):
        # Another process may have finished the same checkpoint while this one waited for the lock.
        if is_cached(path) and not force:
            return path
        if log is not None:
            log(f"pretrain: the mini-CLIP ({settings.model_name}, {settings.steps} steps on generated shapes "
                f"captions) is not cached yet; training it once (a few minutes on CPU) -> {path}")
        result = pretrain(settings, threads=threads, log=log)
        try:
            write_bytes_atomic(path, state_dict_bytes(result.state_dict))
            info = {
                "model_name": settings.model_name,
                "key": settings.key(),
                "fingerprint": settings.fingerprint(),
                "final_loss": result.final_loss,
                "logit_scale": result.logit_scale,
                "pool_size": result.pool_size,
                "train_wall_s": round(result.wall_s, 1),
                "torch": torch.__version__,
                "open_clip": open_clip.__version__,
            }
            write_bytes_atomic(path.with_name(INFO_NAME), (json.dumps(info, indent=2) + "\n").encode())
        except OSError as err:
            raise UserError(f"pretrain: cannot write the checkpoint {path}: {err}; free some space or "
                            f"choose another cache directory") from None
    return path


def load_mini_clip(path: str | os.PathLike[str], *, model_name: str = MODEL_NAME,
                   device: str | torch.device = "cpu") -> Backbone:
    """The frozen backbone of a pretrained checkpoint (thin wrapper over :func:`load_backbone`)."""
    return load_backbone(model_name, pretrained=str(path), device=device)


