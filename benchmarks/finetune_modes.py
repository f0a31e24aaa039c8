"""Fine-tuning modes compared: full, head, frozen_fourier, lora and from scratch.

    python benchmarks/finetune_modes.py --pretrained PATH/ckpt_best.tar
        [--yaml_config configs/operators_poisson.yaml] [--ft_config poisson-cpu-ft-k5_10]
        [--scratch_config poisson-cpu-scratch-k5_10] [--sizes 32,512] [--seeds 0,1,2]
        [--steps 64] [--lr 1e-3] [--lora_rank 4] [--jobs 2]
        [--root_dir results/finetune_modes] [--out_dir assets] [--prefix finetune_modes]

Every (approach, n, seed) is one trial of utils/sweeps.py's LocalSweep (train.py, then
eval.py on the best-validation checkpoint over the full downstream test set), with the SAME
number of optimizer steps for every n: `subsample` = N_train / n and max_epochs =
steps / (n / batch_size) (both must divide exactly). Fine-tuned trials start from
`--pretrained` with `finetune_mode` set; scratch trials use the scratch config.
Rerunning the same command resumes (finished trials are skipped); --report_only
summarises the trials finished so far without training.

Then every mode's training step is timed (CPU time, one thread) on one batch of the config's
size, the modes alternating (`--timing_rounds` rounds) so that the load of a shared machine hits them alike;
scratch trains the same tensors as full, so its step is full's.

Writes {out_dir}/{prefix}_runs.csv (one row per trial), {prefix}.csv (per approach and n:
trainable parameters, test relative L2 mean and std over seeds, ms per step) and
{prefix}.png (test error vs n), and prints the summary as a Markdown table.
"""
import argparse
import logging
import os
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import h5py
import numpy as np

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from utils.errors import UserError  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.config_schema import FINETUNE_MODES  # noqa: E402
from utils.fileio import savefig_atomic, write_csv_atomic  # noqa: E402
from utils.sweeps import LocalSweep, trial_name  # noqa: E402
from utils.YParams import YParams  # noqa: E402

MODES = tuple(FINETUNE_MODES)
APPROACHES = MODES + ("scratch",)


def _ints(text, flag):
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise UserError(f"{flag} expects comma-separated integers, got {text!r}") from None
    if not vals or min(vals) < 0:
        raise UserError(f"{flag} expects non-negative integers, got {text!r}")
    return vals


def plan(args):
    """[(LocalSweep, settings)] of every trial, and the per-n training lengths.

    Seed-major order: every (approach, n) gets its first seed before any gets a second, so
    an interrupted comparison already covers every cell.
    """
    params = YParams(args.yaml_config, args.ft_config)
    with h5py.File(params.train_path, "r") as f:
        n_total = f["fields"].shape[0]
    batch = int(params.batch_size)
    sweeps, lengths = [], {}
    for n in args.sizes:
        if n < batch or n_total % n or n % batch or args.steps % (n // batch):
            raise UserError(f"n={n}: need n >= batch {batch}, N_train {n_total} divisible by n, "
                            f"n by the batch and --steps {args.steps} by n/batch")
        epochs = args.steps // (n // batch)
        lengths[n] = dict(subsample=n_total // n, max_epochs=epochs)
        common = [f"subsample={n_total // n}", f"max_epochs={epochs}", f"lr={args.lr}",
                  "max_cosine_lr_epochs=null"]
        for approach in APPROACHES:
            if approach == "scratch":
                config, sets = args.scratch_config, common + ["pretrained=null"]
            else:
                config = args.ft_config
                sets = common + [f"pretrained={os.path.abspath(args.pretrained)}",
                                 f"finetune_mode={approach}"]
                if approach == "lora":
                    sets.append(f"lora_rank={args.lora_rank}")
            sweep = LocalSweep(dict(method="grid", parameters={"seed": {"values": args.seeds}}),
                               args.yaml_config, config, args.root_dir,
                               sweep_name=f"{approach}_n{n}", sets=sets,
                               tags=[f"approach={approach}", f"n={n}"], jobs=1)
            os.makedirs(os.path.join(sweep.sweep_dir, "logs"), exist_ok=True)
            sweeps.append(sweep)
    return [(sw, dict(seed=s)) for s in args.seeds for sw in sweeps], lengths


def run_trials(trials, jobs):
    """Run the trials not done yet, `jobs` at once; return the failed trial names."""
    todo = [(sw, s) for sw, s in trials if not sw.is_done(trial_name(s))]
    logging.info("%d trials, %d done, %d to run (%d at once)", len(trials),
                 len(trials) - len(todo), len(todo), jobs)
    env_threads = str(max(1, (os.cpu_count() or 1) // jobs))
    os.environ.setdefault("OMP_NUM_THREADS", env_threads)

    def one(item):
        sweep, settings = item
        ok = sweep.run_trial(trial_name(settings), settings)
        return None if ok else f"{sweep.sweep_name}/{trial_name(settings)}"
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        failed = [f for f in pool.map(one, todo) if f]
    for sweep in {id(sw): sw for sw, _ in trials}.values():   # each sweep's results.csv
        sweep.write_results([s for sw, s in trials if sw is sweep])
    return failed


def time_steps(args, rounds):
    """Median seconds of one training step (forward, backward, Adam) per mode.

    CPU time of this process with one torch thread: on a machine shared with other jobs,
    wall time measures the neighbours, CPU time the step's own work.
    """
    import torch

    from models.fno import fno
    from utils.finetune import apply_finetune_mode
    from utils.loss_utils import TrainingLoss
    from utils.optim import build_optimizer

    params = YParams(args.yaml_config, args.ft_config)
    torch.manual_seed(0)
    torch.set_num_threads(1)
    b, h, w = int(params.batch_size), int(params.nx), int(params.ny)
    x = torch.randn(b, int(params.in_dim), h, w)
    y = torch.randn(b, int(params.out_dim), h, w)
    loss_fn = TrainingLoss.from_params(params)
    setups = {}
    for mode in MODES:
        model = fno(params)
        apply_finetune_mode(model, dict(finetune_mode=mode,
                                        lora_rank=args.lora_rank if mode == "lora" else None))
        setups[mode] = (model, build_optimizer(params, model))
    times = {m: [] for m in MODES}
    for r in range(rounds + 1):          # round 0 warms up
        for mode, (model, opt) in setups.items():
            t0 = time.process_time()
            loss = loss_fn(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if r:
                times[mode].append(time.process_time() - t0)
    return {m: statistics.median(t) for m, t in times.items()}


def summarise(rows, step_s):
    out = []
    for approach in APPROACHES:
        for n in sorted({r["n"] for r in rows}):
            sel = [r for r in rows if r["approach"] == approach and r["n"] == n
                   and r["status"] == "done"]
            if not sel:
                continue
            errs = [float(r["test_rel_l2_mean"]) for r in sel]
            out.append(dict(
                approach=approach, n=n, seeds=len(sel), trainable_params=int(sel[0]["n_params"]),
                test_rel_l2_mean=float(np.mean(errs)),
                test_rel_l2_std=float(np.std(errs, ddof=1)) if len(errs) > 1 else float("nan"),
                ms_per_step=1e3 * step_s["full" if approach == "scratch" else approach]
                if step_s else float("nan")))
    return out


def plot(summary, path, title):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, approach in enumerate(APPROACHES):
        sel = [r for r in summary if r["approach"] == approach]
        if sel:
            ax.errorbar([r["n"] * (1 + 0.04 * (i - 2)) for r in sel],
                        [r["test_rel_l2_mean"] for r in sel],
                        yerr=[r["test_rel_l2_std"] for r in sel], marker="os^vD"[i],
                        capsize=3, label=approach)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("downstream training examples n")
    ax.set_ylabel("test relative L2 error (mean, std over seeds)")
    ax.set_title(title, fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    savefig_atomic(fig, path, dpi=130, bbox_inches="tight")
    plt.close(fig)


def markdown(summary):
    """One row per approach: trainable parameters, test error per n (mean ± std over seeds;
    the number of seeds when not all finished), CPU ms per step."""
    sizes = sorted({r["n"] for r in summary})
    lines = ["| approach | trainable parameters | " + " | ".join(
        f"test rel. L2, n = {n}" for n in sizes) + " | CPU ms / step |",
        "|---" * (len(sizes) + 3) + "|"]
    for approach in APPROACHES:
        cells = {r["n"]: r for r in summary if r["approach"] == approach}
        if not cells:
            continue
        first = next(iter(cells.values()))
        errs = []
        for n in sizes:
            r = cells.get(n)
            errs.append("-" if r is None else f"{r['test_rel_l2_mean']:.4f} ± "
                        f"{r['test_rel_l2_std']:.4f}" + ("" if r["seeds"] == max(
                            c["seeds"] for c in summary) else f" ({r['seeds']} seeds)"))
        lines.append(f"| {approach} | {first['trainable_params']:,} | " + " | ".join(errs)
                     + f" | {first['ms_per_step']:.0f} |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pretrained", required=True, help="pre-trained checkpoint")
    p.add_argument("--yaml_config", default="configs/operators_poisson.yaml")
    p.add_argument("--ft_config", default="poisson-cpu-ft-k5_10")
    p.add_argument("--scratch_config", default="poisson-cpu-scratch-k5_10")
    p.add_argument("--sizes", default="32,512", help="downstream training set sizes n")
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--steps", type=int, default=64, help="optimizer steps of every trial")
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate of every trial")
    p.add_argument("--lora_rank", type=int, default=4)
    p.add_argument("--jobs", type=int, default=2, help="trials at once")
    p.add_argument("--timing_rounds", type=int, default=5, help="0: skip the step timing")
    p.add_argument("--report_only", action="store_true",
                   help="train nothing: summarise the trials finished so far")
    p.add_argument("--root_dir", default="results/finetune_modes")
    p.add_argument("--out_dir", default="assets")
    p.add_argument("--prefix", default="finetune_modes")
    args = p.parse_args(argv)
    args.sizes, args.seeds = _ints(args.sizes, "--sizes"), _ints(args.seeds, "--seeds")
    if args.steps < 1 or args.jobs < 1 or args.lr <= 0:
        raise UserError("--steps and --jobs must be >= 1 and --lr > 0")
    if not os.path.isfile(args.pretrained):
        raise UserError(f"pre-trained checkpoint not found: {args.pretrained}")
    os.makedirs(args.out_dir, exist_ok=True)
    trials, lengths = plan(args)
    logging.info("training lengths (same %d steps): %s", args.steps, lengths)
    failed = [] if args.report_only else run_trials(trials, args.jobs)
    step_s = time_steps(args, args.timing_rounds) if args.timing_rounds else {}
    rows = []
    for sweep, settings in trials:
        row = sweep.trial_row(trial_name(settings), settings)
        row["n"] = int(row["n"])
        rows.append(row)
    fields = ["approach", "n", "seed", "n_train", "n_params", "best_val_rel_l2", "best_epoch",
              "epochs", "test_rel_l2_mean", "test_rel_l2_median", "n_test", "status"]
    write_csv_atomic(os.path.join(args.out_dir, f"{args.prefix}_runs.csv"), rows, fields)
    summary = summarise(rows, step_s)
    write_csv_atomic(os.path.join(args.out_dir, f"{args.prefix}.csv"), summary,
                     list(summary[0]) if summary else ["approach"])
    if summary:
        plot(summary, os.path.join(args.out_dir, f"{args.prefix}.png"),
             f"{args.ft_config} / {args.scratch_config}: {args.steps} steps, lr {args.lr:g}, "
             f"{len(args.seeds)} seeds")
    print(markdown(summary))
    if failed:
        print(f"error: {len(failed)} trial(s) failed: {' '.join(failed)}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    run_cli(main)
