"""Sweep wall time: trials in long-lived workers vs one process per trial, side by side.

    python benchmarks/bench_sweep.py                    # generates the data into a temp dir
    python benchmarks/bench_sweep.py --data data/study32 --jobs 2 --json out.json

Runs the same small sweep in each mode of --modes in one run, at the same --jobs, with
`utils/sweeps.py`'s runner, each into its own fresh results folder:
  before   one train.py process per trial, validation and checkpoints after every epoch
           (`--set val_every_steps=0 ckpt_every_s=0`): the sweep engine this benchmark's
           issue replaced, as a baseline;
  process  one train.py process per trial (`--trial_mode process`), the config's cadence;
  worker   long-lived workers (`--trial_mode worker`, the default), the config's cadence.
`process` vs `worker` isolates the workers; `before` vs `worker` is the whole change. The
sweep: the CPU-study config `poisson-cpu32-scratch-k5_10` (264K parameters, 32 x 32,
`--eval_test`), n_train in {8, 64, 512} x 2 seeds x one lr, with the study's `--set
min_steps=100 max_epochs=8` (`STUDY_SET` of run_study.sh). Data: the study's downstream
Poisson (5, 10) set (1024 / 64 / 256 samples, seed 1), generated with run_gen_data.sh unless
--data holds it.

Prints per mode the sweep's wall time, and per n_train (mean over seeds) the trial's wall
time split into: steps (the training loop: optimizer steps and their batches, from
metrics.jsonl), validation (the rest of each validation interval; the config validates every
`val_every_steps: 32` steps), and the rest (process start-up, data, model, checkpoint writes,
the test evaluation); `overhead` = wall - steps, also as a fraction of the wall. Then the
ratios of the sweep wall times to the worker mode's. The machine load (os.getloadavg) before
and after each mode is printed too: on a shared machine the numbers move with it.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

CONFIG = "poisson-cpu32-scratch-k5_10"
YAML = os.path.join(REPO_ROOT, "configs", "operators_poisson.yaml")
SPLITS = ("train", "val", "test")


def ensure_data(data_dir):
    """The downstream Poisson (5, 10) set of the CPU study in `data_dir` (generated if
    missing); returns --set overrides pointing the config at it."""
    from utils.h5io import dataset_path, scales_path

    paths = {f"{s}_path": dataset_path(data_dir, "poisson", s, 5, 10) for s in SPLITS}
    paths["scales_path"] = scales_path(data_dir, "poisson", 5, 10)
    if not all(os.path.isfile(p) for p in paths.values()):
        env = dict(os.environ, PRESET="demo", DATA_DIR=data_dir, N="32", PDES="poisson",
                   POISSON_RANGES="5,10", NTRAIN="1024", NVAL="64", NTEST="256", SEED="1",
                   PYTHON=sys.executable)
        subprocess.run(["bash", os.path.join(REPO_ROOT, "run_gen_data.sh")], env=env,
                       cwd=REPO_ROOT, check=True, stdout=subprocess.DEVNULL)
    return [f"{k}={os.path.abspath(v)}" for k, v in paths.items()]


def step_seconds(run_dir):
    """(seconds in the training loop, seconds of the validation intervals: training plus
    validation) of a run, summed over the rows of its metrics.jsonl (train_time_s,
    interval_time_s)."""
    from utils.metrics_log import read_metrics
    rows = read_metrics(os.path.join(run_dir, "metrics.jsonl"))
    return (sum(r["train_time_s"] for r in rows), sum(r["interval_time_s"] for r in rows))


# mode -> (the runner's trial_mode, --set overrides added to every trial's)
MODES = {"before": ("process", ["val_every_steps=0", "ckpt_every_s=0"]),
         "process": ("process", []),
         "worker": ("worker", [])}


def run_mode(mode, root, sets, args):
    """Run the sweep in `mode` (MODES); returns dict(wall_s, load, trials=[...])."""
    from utils import sweeps

    trial_mode, mode_sets = MODES[mode]
    cfg = sweeps.load_sweep(os.path.join(root, "sweep.yaml"))
    sweep = sweeps.LocalSweep(cfg, YAML, CONFIG, os.path.join(root, mode), sweep_name=mode,
                              sets=sets + mode_sets, jobs=args.jobs, trial_mode=trial_mode)
    walls = {}
    inner = sweep.trial_fn

    def timed(name, settings):
        t0 = time.perf_counter()
        ok = inner(name, settings)
        walls[name] = time.perf_counter() - t0
        return ok

    sweep.trial_fn = timed
    load0 = os.getloadavg()[0]
    t0 = time.perf_counter()
    _, failed = sweep.run()
    wall = time.perf_counter() - t0
    if failed:
        raise SystemExit(f"error: {mode}: trials failed: {failed} (logs in {sweep.sweep_dir})")
    trials = []
    for settings in sweeps.expand_grid(cfg):
        name = sweeps.trial_name(settings)
        steps, intervals = step_seconds(sweep.run_dir(name))
        trials.append(dict(name=name, n_train=settings["n_train"], wall_s=walls[name],
                           steps_s=steps, val_s=intervals - steps,
                           rest_s=walls[name] - intervals))
    return dict(mode=mode, wall_s=wall, load_before=load0, load_after=os.getloadavg()[0],
                trials=trials)


def report(res):
    print(f"\n{res['mode']}: sweep wall {res['wall_s']:.1f} s (load average "
          f"{res['load_before']:.1f} -> {res['load_after']:.1f})")
    print(f"{'n_train':>8} {'trial wall s':>13} {'steps s':>8} {'val s':>6} {'rest s':>7} "
          f"{'overhead s':>11} {'overhead %':>11}")
    by_n = {}
    for t in res["trials"]:
        by_n.setdefault(t["n_train"], []).append(t)
    for n, ts in sorted(by_n.items()):
        mean = {k: sum(t[k] for t in ts) / len(ts) for k in ("wall_s", "steps_s", "val_s",
                                                              "rest_s")}
        over = mean["wall_s"] - mean["steps_s"]
        print(f"{n:>8} {mean['wall_s']:>13.2f} {mean['steps_s']:>8.2f} {mean['val_s']:>6.2f} "
              f"{mean['rest_s']:>7.2f} {over:>11.2f} {100 * over / mean['wall_s']:>10.0f}%")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", default=None, help="folder with (or for) the Poisson (5,10) "
                   "32 x 32 set (default: a temporary folder)")
    p.add_argument("--jobs", type=int, default=2, help="trials at once, both modes")
    p.add_argument("--n_train", default="8,64,512")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--lr", default="1.0e-3")
    p.add_argument("--set", dest="sets", action="append",
                   default=None, help="KEY=VALUE for every trial (default: min_steps=100 "
                   "max_epochs=8, the study's STUDY_SET)")
    p.add_argument("--modes", default="before,process,worker",
                   help=f"order of the runs, from {', '.join(MODES)}")
    p.add_argument("--json", default=None, help="write the results here")
    args = p.parse_args(argv)
    modes = args.modes.split(",")
    if not set(modes) <= set(MODES):
        p.error(f"--modes: expected names from {', '.join(MODES)} (got {args.modes!r})")
    os.environ.setdefault("WANDB_MODE", "disabled")
    tmp = tempfile.mkdtemp(prefix="bench_sweep_")
    try:
        data = args.data or os.path.join(tmp, "data")
        os.makedirs(data, exist_ok=True)
        sets = ensure_data(data) + (args.sets or ["min_steps=100", "max_epochs=8"])
        with open(os.path.join(tmp, "sweep.yaml"), "w") as f:
            f.write("name: bench\nmethod: grid\nmetric: {name: best_val_rel_l2, goal: "
                    f"minimize}}\nparameters:\n  n_train: {{values: [{args.n_train}]}}\n"
                    f"  seed: {{values: [{args.seeds}]}}\n  lr: {{values: [{args.lr}]}}\n")
        print(f"{CONFIG}: n_train {args.n_train} x seeds {args.seeds} x lr {args.lr}, "
              f"--jobs {args.jobs}, --set {' '.join(sets[4:])}; {os.cpu_count()} CPUs, "
              f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}")
        results = [run_mode(mode, tmp, sets, args) for mode in modes]
        for res in results:
            report(res)
        walls = {r["mode"]: r["wall_s"] for r in results}
        for mode in ("process", "before"):
            if mode in walls and "worker" in walls:
                print(f"\n{mode} / worker sweep wall time: "
                      f"{walls[mode] / walls['worker']:.2f}x")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
