"""Replay the early-stopping rule on recorded validation curves: what would another
`early_stop_min_delta` (or patience) have cost in error and saved in steps?

    python utils/stop_replay.py RUN_DIR [RUN_DIR ...] [--min_delta 0.01 0.02 0.03 0.05]
                                [--patience 12] [--metric val_rel_l2]

For every run (its `metrics.jsonl`, one row per validation check) and every min_delta, one
line: the step at which the rule (`utils.optim.EarlyStopping`, the trainer's) would have
stopped it, and the best validation value up to that step divided by the run's own best
(1.000: nothing lost). The lr path is the one recorded, so the replay is an approximation:
a run trained with another min_delta also halves its lr (`scheduler: plateau`, which counts
improvements with the same margin) at other steps. RESULTS.md ("Stopping rule") uses it to
choose between a larger min_delta and larger step caps.
"""
import argparse
import math
import os
import sys

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.metrics_log import read_metrics  # noqa: E402
from utils.optim import EarlyStopping  # noqa: E402


def validation_curve(run_dir, metric):
    """[(step, value)] of `metric` at each validation check of the run in `run_dir`
    (checks without a finite value are skipped); UserError when there is none."""
    path = os.path.join(run_dir, "metrics.jsonl")
    try:
        rows = read_metrics(path)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot read {path}: {e}") from None
    curve = [(int(r["iters"]), float(r[metric])) for r in rows
             if isinstance(r.get(metric), (int, float)) and math.isfinite(r[metric])
             and isinstance(r.get("iters"), int)]
    if not curve:
        raise UserError(f"{path}: no validation check with {metric!r} (not a run directory?)")
    return curve


def replay(curve, patience, min_delta):
    """(stop step, best value up to it) of the stopping rule on `curve` [(step, value)];
    a run the rule does not stop ends at its last check."""
    rule = EarlyStopping(patience, min_delta)
    best = math.inf
    for step, value in curve:
        best = min(best, value)
        if rule.update(value):
            return step, best
    return curve[-1][0], best


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", help="run directories (each with metrics.jsonl)")
    p.add_argument("--min_delta", type=float, nargs="+", default=[0.01, 0.02, 0.03, 0.05])
    p.add_argument("--patience", type=int, default=12, help="checks without an improvement")
    p.add_argument("--metric", default="val_rel_l2", help="metrics.jsonl key (val_loss, ...)")
    args = p.parse_args(argv)
    if args.patience < 1 or not all(0 <= d < 1 for d in args.min_delta):
        raise UserError("--patience must be >= 1 and every --min_delta in [0, 1)")
    out = sys.stdout
    out.write("run | last step | best | " + " | ".join(
        f"min_delta {d:g}: stop step, best / run best" for d in args.min_delta) + "\n")
    for run in args.runs:
        curve = validation_curve(run, args.metric)
        run_best = min(v for _, v in curve)
        cells = []
        for d in args.min_delta:
            step, best = replay(curve, args.patience, d)
            cells.append(f"{step} {best / run_best:.3f}")
        out.write(f"{run} | {curve[-1][0]} | {run_best:.4g} | " + " | ".join(cells) + "\n")


if __name__ == "__main__":
    run_cli(main)
