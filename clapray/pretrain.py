"""``python -m clapray.pretrain``: the mini-CLIP checkpoint, pretrained on first use, and its evaluation.

The mini-CLIP (a small stand-in for pretrained CLIP, contrastively pretrained on generated shapes
captions) lives in :mod:`clapray.shapes`; this module is its command line::

    python -m clapray.pretrain [--model NAME] [--seed N] [--steps N] [--cache-dir DIR] [--force] [--no-eval]

prints the checkpoint path (training it first if it is not cached) and an evaluation on the held-out
continual classes. From Python, :func:`clapray.shapes.mini_clip.ensure_mini_clip` returns the path.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from clapray.errors import UserError, exit_on_user_error
from clapray.model.catalog import MINI_CLIP_MODELS
from clapray.shapes.evaluate import evaluate
from clapray.shapes.mini_clip import CACHE_ENV, checkpoint_path, ensure_mini_clip, is_cached, load_mini_clip
from clapray.shapes.pool import pretrain_classes
from clapray.shapes.pretrain import MODEL_NAME, PretrainSettings, make_settings


def _parser() -> argparse.ArgumentParser:
    defaults = PretrainSettings()
    parser = argparse.ArgumentParser(
        prog="python -m clapray.pretrain",
        description=f"Pretrain (or reuse) the small CLIP stand-in {MODEL_NAME} on the shapes pretraining "
                    "classes, print its checkpoint path and evaluate it on the held-out continual classes.",
    )
    parser.add_argument("--model", choices=MINI_CLIP_MODELS, default=defaults.model_name,
                        help="the bundled config to pretrain (default %(default)s; the ViT one for MaPLe)")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help="pretraining seed (default %(default)s)")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help="optimiser steps (default %(default)s)")
    parser.add_argument("--cache-dir", default=None,
                        help=f"directory of cached checkpoints (default ${CACHE_ENV}/mini-clip or "
                             "~/.cache/clapray/mini-clip)")
    parser.add_argument("--force", action="store_true", help="retrain even if the checkpoint is cached")
    parser.add_argument("--threads", type=int, default=2,
                        help="intra-op threads while training (default %(default)s; the checkpoint's bytes "
                             "are reproducible for a fixed value)")
    parser.add_argument("--no-eval", action="store_true", help="skip the evaluation on the continual classes")
    return parser


@exit_on_user_error
def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m clapray.pretrain``."""
    args = _parser().parse_args(argv)
    if args.threads < 1:
        raise UserError(f"--threads: expected an integer >= 1, got {args.threads}")
    settings = make_settings(seed=args.seed, steps=args.steps, model_name=args.model)
    path = checkpoint_path(settings, args.cache_dir)
    cached = is_cached(path) and not args.force
    if cached:
        print(f"pretrain: reusing {path} (use --force to retrain)")
    else:
        print(f"pretrain: training {settings.model_name} ({settings.steps} steps, "
              f"batch {settings.batch_size}) on {len(pretrain_classes(settings.patterned))} classes")
    start = time.perf_counter()
    path = ensure_mini_clip(args.cache_dir, force=args.force, threads=args.threads, log=print,
                            seed=args.seed, steps=args.steps, model_name=args.model)
    if not cached:
        print(f"pretrain: done in {time.perf_counter() - start:.0f}s")
    print(path)
    if not args.no_eval:
        backbone = load_mini_clip(path, model_name=settings.model_name)
        print(f"eval: continual classes, {evaluate(backbone).summary()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
