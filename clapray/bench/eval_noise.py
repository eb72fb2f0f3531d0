"""``python -m clapray.bench eval-noise``: how much one final model's numbers move with the evaluation's draws.

Trains one run (a shipped config or a YAML, CPU by default), then evaluates its final model again with K
different Monte-Carlo seeds under each evaluation setting — the batch order (``shuffled``, the official
protocol, or ``sorted``) and M (``mc_samples_eval``) — and prints the mean, standard deviation and range
of Last and of the per-batch ECE over the K draws. A difference between two configurations smaller than
this spread is noise, whatever a single draw says.
"""

from __future__ import annotations

import argparse
import statistics

DESCRIPTION = "evaluation noise: Last and ECE of one trained model over K Monte-Carlo seeds, per protocol and M"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", nargs="?", default="shapes_cl", help="run YAML or shipped name (default shapes_cl)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="FIELD=VALUE",
                        help="override a run field (repeatable)")
    parser.add_argument("--seeds", type=int, default=5, help="Monte-Carlo seeds per setting (default 5)")
    parser.add_argument("--samples", default="5,20", help="values of M to compare (default 5,20)")
    parser.add_argument("--orders", default="sorted,shuffled", help="batch orders to compare (default sorted,shuffled)")


def main(args: argparse.Namespace) -> int:
    from clapray.config import load_run_config, resolve_config_argument
    from clapray.errors import UserError
    from clapray.learner import ContinualLearner

    if args.seeds < 2:
        raise UserError(f"bench eval-noise: --seeds: expected an integer >= 2, got {args.seeds}")
    try:
        samples = [int(v) for v in args.samples.split(",")]
    except ValueError:
        raise UserError(f"bench eval-noise: --samples: expected integers separated by commas, got {args.samples!r}") from None
    orders = args.orders.split(",")
    if any(o not in ("sorted", "shuffled") for o in orders) or any(m < 1 for m in samples):
        raise UserError("bench eval-noise: --orders takes sorted and/or shuffled, --samples integers >= 1")
    cfg = load_run_config(resolve_config_argument(args.config), args.overrides)
    learner = ContinualLearner(cfg)
    learner.run()
    print(f"eval-noise: {cfg.name}: {learner.num_tasks} tasks trained (seeds.init {cfg.seeds.init}); "
          f"final model evaluated with {args.seeds} Monte-Carlo seeds per setting")
    print(f"{'order':9s} {'M':>3s}  {'Last mean':>9s} {'std':>6s} {'range':>13s}  {'ECE/batch mean':>14s} {'std':>6s}")
    for order in orders:
        for m in samples:
            runs = [learner.reevaluate(seed=s, mc_samples=m, order=order) for s in range(args.seeds)]
            last = [r["last_acc"] for r in runs]
            ece = [r["ece_per_batch"] for r in runs]
            print(f"{order:9s} {m:3d}  {statistics.mean(last):9.2f} {statistics.stdev(last):6.2f} "
                  f"{min(last):6.2f}-{max(last):6.2f}  {statistics.mean(ece):14.4f} {statistics.stdev(ece):6.4f}")
    return 0
