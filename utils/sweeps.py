"""The local sweep runner: a W&B sweep file's trials, run without a W&B server, resumably.

`python utils/sweeps.py --sweep ... --yaml_config ... --config ... --root_dir ...` reads the
sweep file and lists its trials (utils/sweep_files.py: the grid, or `random`/`bayes` trials
sampled offline with W&B's open-source `sweeps` engine when installed) and runs each trial as
`train.py --eval_test` (training, then the test evaluation of the best checkpoint in the same
process; the evaluation alone when a trial was trained without it): by default in one of
`--jobs` long-lived worker processes that run trial after trial in-process (`--trial_mode
worker`, utils/sweep_workers.py), or as one subprocess per trial (`--trial_mode process`:
`train.py`, then `eval.py` if needed; also with `--launcher`). With a W&B server, a trial is
`train.py --sweep_id ID` instead (utils/sweep_files.run_wandb_trial).
Layout, under `sweep_dir = {root_dir}/sweeps/{sweep_name}/`:

    results.csv                       one row per trial: settings, n_train, errors
                                      (utils/sweep_results.py)
    trials.json                       the proposed trials (random/bayes only; for resume)
    logs/{trial}.train.log, .eval.log trial output (appended on resume)
    logs/workers.log                  the workers' output between trials
    expts/{config}/{trial}/           the trial's train.py run dir (train.py is called with
                                      --root_dir {sweep_dir} --run_num {trial}); the test
                                      evaluation writes eval/summary.json inside it

A trial is done when its `eval/summary.json` exists; done trials are skipped, so an interrupted
sweep resumes (train.py itself resumes a half-trained trial from its own checkpoint). Trial
names come from the settings only (`lr1em3_s16`, `lr1em3_n64_seed2`, utils/sweep_files.py).

Seeds: a `seed` parameter (`--values seed=0,1,2` or in the sweep file) repeats every cell; the
seed sets the model initialisation, the epoch order and, with `n_train`, the random training
subset (utils/data_utils.training_rows). results.csv records `seed`, `n_train` and the
`subset_hash` of the rows each trial trained on.

The learning-rate search (utils/lr_search.py): `--extend_lr K` extends the lr grid of each n
while the lr chosen on the seed-averaged validation metric lies at its edge (up to K steps per
direction); `--lr_search seeded` and/or `--stop_at_error X` run the n values in ascending
order, one n at a time: the smallest n runs the full lr grid, each next n (seeded) only the
previous n's choice and its neighbours (2 lrs once the choice is stable), with the edge
extension per n, and `--stop_at_error` stops after the first n whose chosen lr has a mean test
error (`test_rel_l2_mean`) <= X. The ascent's decisions are logged and written to
`ascent.json`.

Per-n settings: `--set_for n_train=4096 max_steps=30000` (repeatable) sets `max_steps=30000`
for the trials whose `n_train` is 4096 only (any swept parameter but `lr` and `seed` selects;
e.g. a step cap that grows with the training set). The setting wins over `--set` and becomes
part of those trials' settings, hence of their names (`lr1em3_n4096_seed0_maxsteps30000`)
and of results.csv: a rerun with another per-n value runs new trials instead of reusing
ones trained with the old value, and the trials of the other n stay valid (DESIGN.md
section 10).
"""
import argparse
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if __name__ == "__main__" and sys.path \
        and os.path.abspath(sys.path[0]) == os.path.join(REPO_ROOT, "utils"):
    # run as `python utils/sweeps.py`: Python puts utils/ first on the path, where this file
    # would shadow W&B's `sweeps` engine (random/bayes); the repository root takes its place
    sys.path[0] = REPO_ROOT
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)
from utils import sweep_results  # noqa: E402
from utils.cli import cli, report  # noqa: E402
from utils.errors import SweepError, UserError  # noqa: E402
from utils.fileio import read_json, write_json_atomic, write_text_atomic  # noqa: E402
from utils.lr_search import (ASCENT_FILE, LR_SEARCHES, NAscent, check_ascent,  # noqa: E402
                             extend_lr_grid, lr_choices)
from utils.run_guard import DirLock, child_of_this_process, file_lock  # noqa: E402
from utils.run_layout import RunLayout, sweep_dir  # noqa: E402
# the sweep-file functions scripts and tests also use from here (`sweeps.load_sweep`, ...)
from utils.sweep_files import (LR_KEY, REPEAT_KEYS, absolute_path_sets,  # noqa: E402
                               check_set_for, check_values, expand_grid, load_sweep,
                               override_values, propose_trials, trial_name, with_set_for,
                               yaml_text)
from utils.sweep_workers import WorkerPool  # noqa: E402
from utils.YParams import parse_overrides, read_yaml  # noqa: E402

logger = logging.getLogger(__name__)
EVAL_SKIP_KEYS = ("subsample", "n_train")   # training-set keys: eval.py uses the whole test set
ORPHAN_WAIT_S = 120   # how long a trial waits for a run directory another process still holds
TEST_METRIC = "test_rel_l2_mean"   # the test error --stop_at_error compares (results.csv)
TRIAL_MODES = ("worker", "process")


# ----------------------------------------------------------------------------- local runner
class LocalSweep:
    """Runs a sweep file's trials as train.py / eval.py subprocesses (see module docstring).

    Args:
        cfg: checked sweep dict (`load_sweep`).
        yaml_config, config: the training config the trials start from.
        root_dir: results root; the sweep lives in {root_dir}/sweeps/{sweep_name}/.
        sets: extra `key=value` overrides passed to train.py and eval.py of every trial.
        tags: `key=value` constant columns written into results.csv (e.g. approach=finetune).
        launcher: command prefix for train.py (e.g. "torchrun --standalone --nproc_per_node=4").
        jobs: trials run at once (each gets cpu_count // jobs torch threads unless
            OMP_NUM_THREADS is set).
        trial_mode: 'worker' (trials in `jobs` long-lived worker processes) or 'process'
            (a train.py / eval.py subprocess per trial; always with a launcher).
        count: number of trials for random / bayes sweeps.
        extend_lr: grid sweeps: extend each group's lr grid by up to this many steps in each
            direction while its seed-averaged choice is at the grid's edge (module docstring).
        lr_search: 'grid' (every lr at every n) or 'seeded' (the n ascent, module docstring).
        stop_at_error: grid sweeps: stop the n ascent after the first n whose chosen lr has
            a mean test error <= this (None: every n).
        set_for: grid sweeps: per-value settings, pairs (`PARAM=VALUE`, `KEY=VALUE`): KEY is
            set to VALUE in the settings of the trials whose swept PARAM has that value
            (`--set_for`; checked by `check_set_for`).
        trial_fn: runs one trial, `trial_fn(name, settings) -> bool` (success), leaving
            `summary_paths(name)` behind; default `run_trial` (train.py then eval.py).
            Tests pass a stand-in objective.
    """

    def __init__(self, cfg, yaml_config, config, root_dir, sweep_name=None, sets=(),
                 tags=(), launcher="", jobs=1, count=None, python=sys.executable,
                 repo_root=REPO_ROOT, extend_lr=0, trial_fn=None, trial_mode="worker",
                 lr_search="grid", stop_at_error=None, set_for=()):
        self.cfg = cfg
        self.yaml_config = os.path.abspath(yaml_config)
        self.config = config
        self.root_dir = os.path.abspath(root_dir)
        from utils.run_guard import check_plain_name

        self.sweep_name = sweep_name or cfg.get("name") or "sweep"
        try:
            check_plain_name(self.sweep_name, "sweep name")
            check_plain_name(config, "--config")
        except UserError as e:
            raise SweepError(str(e)) from None
        self.sweep_dir = sweep_dir(self.root_dir, self.sweep_name)
        self.sets = absolute_path_sets(sets)
        self.tags = _parse_pairs(tags, "--tag")
        self.launcher = shlex.split(launcher) if launcher else []
        self.jobs = int(jobs)
        if self.jobs < 1:
            raise SweepError("--jobs must be >= 1")
        self.count = count
        if trial_mode not in TRIAL_MODES:
            raise SweepError(f"--trial_mode must be one of {TRIAL_MODES}, got {trial_mode!r}")
        if trial_mode == "worker" and self.launcher:
            logger.info("--launcher %s: one process per trial (--trial_mode process)", launcher)
            trial_mode = "process"
        self.trial_mode = trial_mode
        if cfg["method"] != "grid" and (count is None or count < 1):
            raise SweepError(f"method {cfg['method']} needs --count N (number of trials)")
        self.python = python
        self.repo_root = repo_root    # where train.py / eval.py live (tests use stand-ins)
        self.metric = (cfg.get("metric") or {}).get("name", "best_val_rel_l2")
        self.goal = (cfg.get("metric") or {}).get("goal", "minimize")
        if self.goal not in ("minimize", "maximize"):
            raise SweepError(f"metric goal must be minimize or maximize, got {self.goal!r}")
        self.trial_fn = trial_fn or self.run_trial
        if isinstance(extend_lr, bool) or not isinstance(extend_lr, int) or extend_lr < 0:
            raise SweepError(f"--extend_lr must be an integer >= 0, got {extend_lr!r}")
        self.extend_lr = extend_lr
        if extend_lr:
            lr_values = (cfg["parameters"].get(LR_KEY) or {}).get("values") or []
            if cfg["method"] != "grid" or len(lr_values) < 2 or not all(
                    isinstance(v, (int, float)) and v > 0 for v in lr_values):
                raise SweepError("--extend_lr needs a grid sweep with at least two positive "
                                 f"`{LR_KEY}` values")
        check_ascent(cfg, lr_search, stop_at_error, LR_KEY)
        self.lr_search, self.stop_at_error = lr_search, stop_at_error
        swept = set(cfg["parameters"])
        clash = swept & {k for k, _ in (s.partition("=")[::2] for s in self.sets)}
        if clash:
            raise SweepError(f"--set {sorted(clash)} clashes with the sweep's own parameters")
        check_values(cfg, self.sets)
        self.set_for = check_set_for(cfg, set_for)
        self._check_config()
        # reentrant: `stop` runs as a signal handler, maybe in the thread that holds it
        self._lock = threading.RLock()
        self._children = set()   # running train.py / eval.py processes
        self._workers = None     # the WorkerPool while `run` runs in worker mode
        self.stopped = None      # the signal that stopped the sweep

    # -- checks and layout
    def _check_config(self):
        doc = read_yaml(self.yaml_config, "yaml config", error=SweepError)
        if self.config not in doc:
            raise SweepError(f"config {self.config!r} not in {self.yaml_config} "
                             f"(have {sorted(doc)})")
        for script in ("train.py", "eval.py") if self.trial_fn == self.run_trial else ():
            if not os.path.isfile(os.path.join(self.repo_root, script)):
                raise SweepError(f"{script} not found in {self.repo_root}")

    def layout(self, name):
        """train.py's run of trial `name` (train.py --root_dir sweep_dir --run_num name)."""
        return RunLayout.of(self.sweep_dir, self.config, name)

    def run_dir(self, name):
        return self.layout(name).run_dir

    def summary_paths(self, name):
        run = self.layout(name)
        return run.train_summary, run.best_ckpt, run.eval_summary

    def is_done(self, name):
        return os.path.isfile(self.summary_paths(name)[2])

    # -- trial proposals
    def _trials_file(self):
        return os.path.join(self.sweep_dir, "trials.json")

    def _load_proposed(self):
        data = read_json(self._trials_file())
        return [] if data is None else [dict(t) for t in data]

    def _propose(self, known, n):
        """n more random/bayes trials from W&B's sweep engine, given how the `known` did."""
        scored = []
        for settings in known:
            row = self.trial_row(trial_name(settings), settings)
            done = row["status"] == "done" and row.get(self.metric) not in (None, "")
            scored.append((settings, float(row[self.metric]) if done else None))
        return propose_trials(self.cfg, scored, n, self.metric)

    # -- running
    def _cmd_env(self):
        env = dict(os.environ)
        env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // self.jobs)))
        env.setdefault("WANDB_MODE", "disabled")
        return env

    def _arguments(self, name, settings):
        """(train.py arguments of the trial, those of its evaluation alone)."""
        sets = []
        for s in self.sets + [f"{k}={yaml_text(v)}" for k, v in settings.items()]:
            sets += ["--set", s]
        # subsample thins the TRAINING set only: never pass it to eval.py (full test set)
        eval_sets = []
        for s in self.sets + [f"{k}={yaml_text(v)}" for k, v in settings.items()
                              if k not in EVAL_SKIP_KEYS]:
            eval_sets += ["--set", s]
        common = ["--yaml_config", self.yaml_config, "--config", self.config,
                  "--root_dir", self.sweep_dir, "--run_num", name]
        # --eval_test: the trial's test evaluation in the training process (saves starting a
        # second one); the evaluation alone is the fallback when it did not happen (e.g. a
        # trial trained by an earlier runner). No examples figure per trial: drawing it took
        # longer than the evaluation itself (benchmarks/README.md, bench_sweep)
        return common + sets + ["--eval_test", "--eval_examples", "0"], common + eval_sets

    def _commands(self, name, settings):
        """The subprocess commands of a trial: train.py --eval_test, eval.py."""
        train_args, eval_args = self._arguments(name, settings)
        train = self.launcher + ([] if self.launcher else [self.python]) \
            + [os.path.join(self.repo_root, "train.py")] + train_args
        evalc = [self.python, os.path.join(self.repo_root, "eval.py")] + eval_args \
            + ["--weights", self.summary_paths(name)[1]]
        return train, evalc

    def _run_step(self, kind, name, settings):
        """Train (`kind` 'train': train.py --eval_test) or only evaluate ('eval') trial
        `name`, in a worker or a subprocess (`trial_mode`); output appended to
        logs/{name}.{kind}.log. Returns the exit status (None: not started, stopping)."""
        log = os.path.join(self.sweep_dir, "logs", f"{name}.{kind}.log")
        if self.trial_mode == "process":
            train, evalc = self._commands(name, settings)
            return self._run_logged(train if kind == "train" else evalc, log)
        train_args, eval_args = self._arguments(name, settings)
        return self._workers.run(kind, train_args if kind == "train" else eval_args, log)

    def _run_logged(self, cmd, log_path):
        """Run `cmd` with output to `log_path`; returns its exit status (None: not started,
        the sweep is stopping).

        The child gets its own session (a terminal's Ctrl-C reaches the runner only, which
        forwards SIGTERM, see `stop`) and SIGTERM from the kernel if the runner dies, even by
        kill -9 (train.py then checkpoints and exits): no trial outlives its runner."""
        preexec = child_of_this_process(signal.SIGTERM)
        with open(log_path, "a") as log:
            log.write("$ " + shlex.join(cmd) + "\n")
            log.flush()
            with self._lock:
                if self.stopped:
                    return None
                proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.repo_root, env=self._cmd_env(),
                                        start_new_session=True, preexec_fn=preexec)
                self._children.add(proc)
            try:
                return proc.wait()
            finally:
                with self._lock:
                    self._children.discard(proc)

    def stop(self, signum=signal.SIGTERM, frame=None):
        """Start no further trial and ask the running ones to checkpoint and exit (SIGTERM)."""
        with self._lock:
            self.stopped = signum
            children = list(self._children)
            workers = self._workers
        for proc in children:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        n_workers = workers.signal_busy(signal.SIGTERM) if workers is not None else 0
        logger.warning("sweep %s: signal %d, stopping %d running trial(s) (they checkpoint; "
                       "rerun the same command to resume)", self.sweep_name, signum,
                       len(children) + n_workers)

    def _wait_for_run_dir(self, name):
        """False if another process holds the trial's run directory for ORPHAN_WAIT_S: e.g.
        the trainer of an earlier runner killed with -9, still writing its last checkpoint."""
        lock = DirLock(self.run_dir(name))
        deadline = time.monotonic() + ORPHAN_WAIT_S
        if lock.held_elsewhere():
            logger.warning("trial %s: run directory in use by another process, waiting up to "
                           "%g s", name, ORPHAN_WAIT_S)
        while lock.held_elsewhere():
            if time.monotonic() > deadline or self.stopped:
                return False
            time.sleep(0.2)
        return True

    def run_trial(self, name, settings):
        """Train (unless already trained) then evaluate one trial; return True on success
        (None: stopped by a signal before it finished)."""
        train_summary, ckpt, _ = self.summary_paths(name)
        logs = os.path.join(self.sweep_dir, "logs")
        t0 = time.monotonic()
        if not (os.path.isfile(train_summary) and os.path.isfile(ckpt)):
            if not self._wait_for_run_dir(name):
                if self.stopped:
                    return None
                logger.error("trial %s: its run directory %s is in use by another process",
                             name, self.run_dir(name))
                return False
            logger.info("trial %s: training %s", name, settings)
            rc = self._run_step("train", name, settings)
            if self.stopped and not os.path.isfile(train_summary):
                return None      # the trainer checkpointed; a rerun resumes it
            if rc != 0 or not os.path.isfile(ckpt) or not os.path.isfile(train_summary):
                logger.error("trial %s: train.py failed (exit %s), see %s", name, rc,
                             os.path.join(logs, f"{name}.train.log"))
                return False
            if self.is_done(name):
                logger.info("trial %s: done in %.1f s", name, time.monotonic() - t0)
                return True
        logger.info("trial %s: evaluating %s", name, ckpt)
        rc = self._run_step("eval", name, settings)
        if self.stopped and not self.is_done(name):
            return None
        if rc != 0 or not self.is_done(name):
            logger.error("trial %s: eval.py failed (exit %s), see %s", name, rc,
                         os.path.join(logs, f"{name}.eval.log"))
            return False
        logger.info("trial %s: done in %.1f s", name, time.monotonic() - t0)
        return True

    def trial_row(self, name, settings, failed=False):
        """One results.csv row (utils/sweep_results.trial_row) of trial `name`."""
        train_summary, _, eval_summary = self.summary_paths(name)
        return sweep_results.trial_row(name, settings, train_summary, eval_summary,
                                       config=self.config, run_dir=self.run_dir(name),
                                       tags=self.tags, failed=failed)

    def write_results(self, trials, failed=()):
        """Write {sweep_dir}/results.csv atomically (all trials, done ones with numbers)."""
        rows = [self.trial_row(trial_name(s), s, failed=trial_name(s) in failed) for s in trials]
        with self._lock:
            return sweep_results.write_results(os.path.join(self.sweep_dir, "results.csv"),
                                               trials, rows, self.tags)

    def _run_batch(self, todo, all_trials, failed):
        """Run `todo`; a trial another runner is running is waited for at the end, and run
        here only if that runner did not finish it."""
        busy = []

        def one(settings, wait=False):
            if self.stopped:
                return
            name = trial_name(settings)
            # a trial's flock: two runners of one sweep (or two threads) never run it at once
            with file_lock(os.path.join(self.sweep_dir, "logs", f"{name}.lock"), wait) as mine:
                if not mine:
                    with self._lock:
                        busy.append(settings)
                    return
                ok = self.is_done(name) or self.trial_fn(name, settings)
            with self._lock:
                if ok is False:
                    failed.add(name)
            self.write_results(all_trials, failed)

        def run_all(items, wait):
            if self.jobs == 1:
                for s in items:
                    one(s, wait)
            else:
                with ThreadPoolExecutor(max_workers=self.jobs) as pool:
                    list(pool.map(lambda s: one(s, wait), items))

        run_all(todo, False)
        if busy and not self.stopped:
            logger.info("sweep %s: waiting for %d trial(s) that another runner is running: %s",
                        self.sweep_name, len(busy), " ".join(trial_name(s) for s in busy))
            run_all(list(busy), True)

    def _check_fixed_settings(self):
        """Trial names come from the swept settings only, so a rerun with another config or
        other --set values would take the old trials as done: refuse it. The first run
        records them in {sweep_dir}/sweep.json, with the fingerprint of the pre-trained
        weights the trials start from (`--set pretrained=`): weights trained on or retrained
        under the same path since are refused too (old and new trials would mix)."""
        path = os.path.join(self.sweep_dir, "sweep.json")
        fixed = {"config": self.config, "sets": sorted(self.sets)}
        weights = self._weights_fingerprint()
        old = recorded = read_json(path)
        if old is not None and isinstance(old.get("sets"), list):
            # a sweep.json of a runner that passed relative --set paths on: its trials read
            # them in the repository root, where they ran
            old = dict(old, sets=sorted(absolute_path_sets(old["sets"], self.repo_root)))
        if old is None:
            write_text_atomic(path, json.dumps(dict(fixed, **weights), indent=1) + "\n")
        elif {k: old.get(k) for k in fixed} != fixed:
            raise SweepError(f"sweep {self.sweep_name} in {self.sweep_dir} was run with config "
                             f"{old.get('config')!r} and --set {old.get('sets')}, not "
                             f"{self.config!r} and --set {fixed['sets']}; give it another --name")
        elif weights and old.get("weights") is None:     # a sweep.json from before the check
            write_text_atomic(path, json.dumps(dict(recorded, **weights), indent=1) + "\n")
        elif weights and old["weights"] != weights["weights"]:
            raise SweepError(f"sweep {self.sweep_name}: the pre-trained weights "
                             f"{weights['weights']['file']} changed since its trials started "
                             f"(trained on or retrained); give it another --name, or move "
                             f"{self.sweep_dir} aside")

    def _weights_fingerprint(self):
        """{'weights': {file, size, sha256}} of the `--set pretrained=` file ({} without one,
        or when it does not exist: the trials then fail with train.py's own message)."""
        weights = parse_overrides(self.sets).get("pretrained")
        if not isinstance(weights, str) or not os.path.isfile(weights):
            return {}
        from utils.checkpoint import file_fingerprint   # torch only where weights are used

        return {"weights": dict(file=weights, **file_fingerprint(weights))}

    def run(self):
        """Run every trial not yet done; return (results.csv path, names of failed trials).

        SIGTERM / SIGINT stop the sweep (`stop`); `self.stopped` is then the signal."""
        handlers = {}
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGTERM, signal.SIGINT):
                handlers[sig] = signal.signal(sig, self.stop)
        try:
            if self.trial_mode == "worker":   # workers start when the first trial needs one
                os.makedirs(os.path.join(self.sweep_dir, "logs"), exist_ok=True)
                with self._lock:
                    self._workers = WorkerPool(
                        self.jobs, self.python, self.repo_root, self._cmd_env(),
                        os.path.join(self.sweep_dir, "logs", "workers.log"),
                        stopping=lambda: self.stopped is not None)
            return self._run()
        finally:
            for sig, h in handlers.items():
                signal.signal(sig, h)
            if self._workers is not None:
                self._workers.close()   # idle workers exit; after a stop, once checkpointed
                with self._lock:
                    self._workers = None

    def _run(self):
        os.makedirs(os.path.join(self.sweep_dir, "logs"), exist_ok=True)
        self._check_fixed_settings()
        failed = set()
        if self.cfg["method"] == "grid":
            trials = with_set_for(expand_grid(self.cfg), self.set_for)
            names = [trial_name(s) for s in trials]
            if len(set(names)) != len(names):
                raise SweepError("two grid trials get the same name; check the sweep values")
            if self.lr_search == "seeded" or self.stop_at_error is not None:
                trials = self._run_ascent(trials, failed)
            else:
                todo = [s for s in trials if not self.is_done(trial_name(s))]
                logger.info("sweep %s: %d trials, %d done, %d to run (%d at once)",
                            self.sweep_name, len(trials), len(trials) - len(todo), len(todo),
                            self.jobs)
                self.write_results(trials)
                self._run_batch(todo, trials, failed)
                if self.extend_lr and not self.stopped:
                    trials = extend_lr_grid(
                        trials, self.cfg["parameters"][LR_KEY]["values"], self.extend_lr,
                        self._metric, self._batch_runner(failed),
                        lambda: self.stopped is not None, self.goal == "maximize",
                        self.sweep_name, LR_KEY, REPEAT_KEYS)
        else:
            # propose in batches of `jobs` so that bayes sees the finished trials; the
            # proposals are saved first, so a resumed sweep finishes the same trials
            trials = self._load_proposed()
            while True:
                todo = [s for s in trials if not self.is_done(trial_name(s))
                        and trial_name(s) not in failed]
                if not todo and len(trials) < self.count:
                    new = self._propose(trials, min(self.jobs, self.count - len(trials)))
                    seen = {trial_name(s) for s in trials}
                    new = [s for s in new if trial_name(s) not in seen]
                    if not new:
                        logger.warning("sweep engine proposed no new trial; stopping")
                        break
                    trials += new
                    write_text_atomic(self._trials_file(), json.dumps(trials, indent=1))
                    continue
                if not todo or self.stopped:
                    break
                self._run_batch(todo, trials, failed)
        path = self.write_results(trials, failed)
        logger.info("sweep %s: results in %s (%d failed)", self.sweep_name, path, len(failed))
        return path, sorted(failed)


    # -- learning-rate search (utils/lr_search.py)
    def _metric(self, settings, key=None):
        """The trial's metric (or column `key` of its row) when it is done, else None."""
        row = self.trial_row(trial_name(settings), settings)
        try:
            return float(row[key or self.metric]) if row["status"] == "done" else None
        except (TypeError, ValueError):
            return None

    def lr_choices(self, trials):
        """utils/lr_search.lr_choices of `trials`: per group (all settings but lr and seed)
        the lr chosen on the metric averaged over seeds, and its edge flags."""
        return lr_choices(trials, self.cfg["parameters"][LR_KEY]["values"], self._metric,
                          self.goal == "maximize", LR_KEY, REPEAT_KEYS)

    def _batch_runner(self, failed):
        """run_batch(new, trials) of the lr search: results.csv, then the new trials not
        done yet."""
        def run_batch(new, trials):
            self.write_results(trials, failed)
            self._run_batch([s for s in new if not self.is_done(trial_name(s))], trials,
                            failed)
        return run_batch

    def _run_ascent(self, grid, failed):
        """The n ascent (utils/lr_search.NAscent) over the grid's trials; its decisions go
        to {sweep_dir}/ascent.json. Returns every trial it decided."""
        ascent = NAscent(grid, LR_KEY, REPEAT_KEYS, mode=self.lr_search, extend=self.extend_lr,
                         stop_at_error=self.stop_at_error, maximize=self.goal == "maximize",
                         name=self.sweep_name,
                         follow={key for _, _, key, _ in self.set_for})
        logger.info("sweep %s: n ascent over %s, lr search %s%s (%d at once)",
                    self.sweep_name, ascent.n_key or "one n", self.lr_search,
                    "" if self.stop_at_error is None else
                    f", stopping at a test error <= {self.stop_at_error:g}", self.jobs)
        trials = ascent.run(self._batch_runner(failed), self._metric,
                            lambda s: self._metric(s, TEST_METRIC),
                            failed=lambda s: trial_name(s) in failed,
                            stopped=lambda: self.stopped is not None)
        write_json_atomic(os.path.join(self.sweep_dir, ASCENT_FILE), ascent.record())
        return trials


def _parse_pairs(items, flag):
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep or not k:
            raise SweepError(f"{flag} expects KEY=VALUE (got {item!r})")
        out[k] = v
    return out


@cli()
def main(argv=None):
    p = argparse.ArgumentParser(description="Run a W&B sweep file locally (no W&B server).")
    p.add_argument("--sweep", required=True, help="W&B sweep file, e.g. configs/sweep_config.yaml")
    p.add_argument("--yaml_config", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--root_dir", required=True, help="trials go to ROOT/sweeps/NAME/")
    p.add_argument("--name", default=None, help="sweep name (default: the file's `name`)")
    p.add_argument("--jobs", type=int, default=1, help="trials run at once")
    p.add_argument("--count", type=int, default=None, help="trials for random/bayes")
    p.add_argument("--set", dest="sets", action="append", default=[],
                   help="KEY=VALUE passed to train.py/eval.py of every trial (repeatable)")
    p.add_argument("--set_for", action="append", nargs=2, default=[],
                   metavar=("PARAM=VALUE", "KEY=VALUE"),
                   help="KEY=VALUE for the trials whose swept PARAM has VALUE only, e.g. "
                        "--set_for n_train=4096 max_steps=30000 (repeatable; wins over --set; "
                        "part of those trials' settings and names)")
    p.add_argument("--values", action="append", default=[],
                   help="KEY=V1,V2,.. replaces a sweep parameter's values (repeatable)")
    p.add_argument("--tag", action="append", default=[],
                   help="KEY=VALUE constant column in results.csv, e.g. approach=finetune")
    p.add_argument("--extend_lr", type=int, default=0, metavar="K",
                   help="grid sweeps: while the lr chosen on the validation metric averaged "
                        "over seeds is the smallest/largest of an n's grid, add up to K more "
                        "lr values in that direction (grid spacing) and run them (default 0)")
    p.add_argument("--lr_search", choices=LR_SEARCHES, default="grid",
                   help="grid: every lr at every n (default); seeded: n in ascending order, "
                        "each n the lr chosen at the previous n and its neighbours (2 lrs "
                        "once the choice is stable), --extend_lr per n")
    p.add_argument("--stop_at_error", type=float, default=None, metavar="X",
                   help="grid sweeps: run n in ascending order and stop after the first n "
                        "whose chosen lr has a mean test error (test_rel_l2_mean) <= X")
    p.add_argument("--launcher", default="",
                   help='prefix for train.py, e.g. "torchrun --standalone --nproc_per_node=4" '
                        '(one process per trial)')
    p.add_argument("--trial_mode", choices=TRIAL_MODES, default="worker",
                   help="worker: trials run one after another in --jobs long-lived processes "
                        "(default); process: one train.py process per trial")
    args = p.parse_args(argv)
    cfg = override_values(load_sweep(args.sweep), args.values)
    sweep = LocalSweep(cfg, args.yaml_config, args.config, args.root_dir,
                       sweep_name=args.name, sets=args.sets, tags=args.tag,
                       launcher=args.launcher, jobs=args.jobs, count=args.count,
                       extend_lr=args.extend_lr, trial_mode=args.trial_mode,
                       lr_search=args.lr_search, stop_at_error=args.stop_at_error,
                       set_for=args.set_for)
    path, failed = sweep.run()
    print(path)
    if sweep.stopped:
        report(f"stopped by signal {sweep.stopped}; the running trials checkpointed, rerun the "
               f"same command to resume", 128 + sweep.stopped)
    if failed:
        report(f"{len(failed)} trial(s) failed: {' '.join(failed)}", 1)


if __name__ == "__main__":
    main()
