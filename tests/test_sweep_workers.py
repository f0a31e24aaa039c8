"""Sweep trials in long-lived workers (utils/sweep_workers.py): the same results as one process
per trial, failures that do not stop a worker, SIGTERM and kill -9 of the runner."""
import csv
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import yaml

from tests.helpers import tiny_config, write_poisson_set
from utils import sweeps
from utils.sweep_workers import ProcessState

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")


def _results(path):
    with open(path) as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


def _worker_pids(log_path):
    """Pids of the workers that ran a log's steps (from the `$ ...` header lines)."""
    with open(log_path) as f:
        return [int(m) for m in re.findall(r"# \w+ in sweep worker (\d+)", f.read())]


def _sweep_file(path, name, params):
    text = "".join(f"  {k}: {{values: {json.dumps(v)}}}\n" for k, v in params.items())
    path.write_text(f"name: {name}\nmethod: grid\n"
                    f"metric: {{name: best_val_rel_l2, goal: minimize}}\nparameters:\n{text}")
    return str(path)


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_process_state_is_restored():
    """What one trial changes in its worker (threads, RNG, logging, signals, environment)
    is undone before the next."""
    import random

    import torch

    state = ProcessState()
    rand = torch.rand(3)
    state.restore()
    handler = logging.NullHandler()
    try:
        torch.set_num_threads(state.threads + 1)
        torch.manual_seed(123)
        random.seed(5)
        logging.getLogger().addHandler(handler)
        logging.getLogger().setLevel(logging.CRITICAL)
        signal.signal(signal.SIGUSR1, lambda *a: None)
        os.environ["SWEEP_WORKER_TEST"] = "1"
        torch.backends.cudnn.benchmark = not state.cudnn[0]
    finally:
        state.restore()
    assert torch.get_num_threads() == state.threads
    assert torch.equal(torch.rand(3), rand)          # the RNG state of the capture
    assert handler not in logging.getLogger().handlers
    assert logging.getLogger().level == state.log_level
    assert signal.getsignal(signal.SIGUSR1) == state.handlers[signal.SIGUSR1]
    assert "SWEEP_WORKER_TEST" not in os.environ
    assert torch.backends.cudnn.benchmark == state.cudnn[0]


# a worker serving one request with a stand-in `train` module whose trial leaves cyclic
# garbage; prints whether the collection after the trial freed it, and the frozen count
_GC_SCRIPT = """
import argparse, gc, json, os, sys, threading, types, weakref
sys.path.insert(0, sys.argv[1])
report = os.fdopen(os.dup(1), "w")   # the worker points fds 1 and 2 at trial logs
from utils.sweep_workers import serve

left = []
class Cycle:
    pass

def train_and_evaluate(args):
    c = Cycle()
    c.me = c                       # only the cycle collector frees it
    left.append(weakref.ref(c))

def build_parser():
    p = argparse.ArgumentParser()
    p.add_argument("rest", nargs="*")
    return p

sys.modules["train"] = types.SimpleNamespace(build_parser=build_parser,
                                             train_and_evaluate=train_and_evaluate)
done = threading.Event()

class Replies:
    def write(self, text):
        if '"rc"' in text:
            done.set()
    def flush(self):
        pass

def requests():
    yield json.dumps({"kind": "train", "argv": [], "log": None}) + "\\n"
    done.wait(60)                  # then EOF: the runner closed the pool

serve(requests(), Replies())
print(json.dumps({"freed": left[0]() is None, "frozen": gc.get_freeze_count()}), file=report, flush=True)
"""


def test_worker_collects_a_trials_garbage_and_freezes_the_rest():
    """Between trials the worker collects what a trial left (its cycles included), then
    freezes the survivors, so the next collection does not walk torch's objects again."""
    out = subprocess.run([sys.executable, "-c", _GC_SCRIPT, REPO], env=ENV, timeout=120,
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["freed"]               # freezing first would have kept the cycle for good
    assert result["frozen"] > 10000      # torch & co.


def test_worker_trials_equal_process_trials_and_survive_a_failure(tmp_path):
    """Three trials in ONE worker: two give the results of separate train.py processes to
    1e-6 (same seed, same subset); a failing one (n_train > data) is recorded as failed and
    the worker runs the next."""
    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(32, 8, 8))
    cfg = tiny_config(tmp_path, data, max_epochs=2, batch_size=4, in_memory=True)
    grid = sweeps.load_sweep(_sweep_file(tmp_path / "s.yaml", "w",
                                         {"n_train": [8, 999, 16], "seed": [1]}))
    worker = sweeps.LocalSweep(grid, cfg, "tiny", str(tmp_path / "res"), sweep_name="w")
    path, failed = worker.run()
    assert failed == ["n999_seed1"]
    rows = _results(path)
    assert [rows[t]["status"] for t in ("n8_seed1", "n999_seed1", "n16_seed1")] \
        == ["done", "failed", "done"]
    logs = tmp_path / "res" / "sweeps" / "w" / "logs"
    pids = [p for t in ("n8_seed1", "n999_seed1", "n16_seed1")
            for p in _worker_pids(logs / f"{t}.train.log")]
    assert len(pids) == 3 and len(set(pids)) == 1, pids    # one worker ran all three
    assert "n_train 999 is more than" in (logs / "n999_seed1.train.log").read_text()

    grid = sweeps.override_values(grid, ["n_train=8,16"])
    proc = sweeps.LocalSweep(grid, cfg, "tiny", str(tmp_path / "res"), sweep_name="p",
                             trial_mode="process")
    path_p, failed_p = proc.run()
    assert failed_p == []
    rows_p = _results(path_p)
    for t in ("n8_seed1", "n16_seed1"):
        assert rows[t]["subset_hash"] == rows_p[t]["subset_hash"] != ""
        for key in ("best_val_rel_l2", "test_rel_l2_mean", "test_rel_l2_median"):
            assert float(rows[t][key]) == pytest.approx(float(rows_p[t][key]), abs=1e-6), key


def _start_runner(tmp_path, max_epochs, name):
    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(32, 8, 8))
    cfg = tiny_config(tmp_path, data, max_epochs=max_epochs, batch_size=4, in_memory=True)
    sweep = _sweep_file(tmp_path / "s.yaml", name, {"lr": [1.0e-3, 3.0e-3], "subsample": [1]})
    cmd = [sys.executable, "utils/sweeps.py", "--sweep", sweep, "--yaml_config", cfg,
           "--config", "tiny", "--root_dir", str(tmp_path / "res"), "--jobs", "2",
           "--tag", "approach=scratch"]
    run = tmp_path / "res" / "sweeps" / name / "expts" / "tiny"
    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    return cmd, run, proc


def _wait_for_checkpoints(proc, run, trials, timeout=300):
    """Until every trial wrote ckpt.tar (it is training in a worker)."""
    deadline = time.time() + timeout   # generous: a loaded 2-core machine starts torch slowly
    while not all((run / t / "checkpoints" / "ckpt.tar").exists() for t in trials):
        assert proc.poll() is None, proc.stderr.read()
        assert time.time() < deadline, "trials did not start in time"
        time.sleep(0.1)


def _epochs(run, trial):
    with open(run / trial / "metrics.jsonl") as f:
        return [json.loads(line)["epoch"] for line in f]


def test_sigterm_then_kill_9_of_the_runner_then_rerun_finishes(tmp_path):
    """Two trials train in two workers. SIGTERM to the runner: both checkpoint, the runner
    exits 128 + 15. A rerun resumes them; kill -9 of that runner: its workers checkpoint and
    exit (EOF of their request pipe), none is left. A third run finishes both: every epoch
    once, one results row per trial."""
    import torch

    trials = ("lr1em3_s1", "lr3em3_s1")
    cmd, run, proc = _start_runner(tmp_path, 40, "stop")
    logs = run.parent.parent / "logs"
    try:
        _wait_for_checkpoints(proc, run, trials)
        proc.send_signal(signal.SIGTERM)
        rc = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert rc == 128 + signal.SIGTERM
    for t in trials:   # both checkpointed before the end, neither finished
        ckpt = torch.load(run / t / "checkpoints" / "ckpt.tar", weights_only=True)
        assert ckpt["epoch"] < 40 and not (run / t / "train_summary.json").exists()
        assert len(_worker_pids(logs / f"{t}.train.log")) == 1

    proc = subprocess.Popen(cmd, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 300
        # until both trials train again (resumed from their checkpoints)
        while not all((logs / f"{t}.train.log").read_text().count("resumed at epoch") == 1
                      for t in trials):
            assert proc.poll() is None, proc.stderr.read()
            assert time.time() < deadline, "trials did not resume in time"
            time.sleep(0.1)
        workers = [_worker_pids(logs / f"{t}.train.log")[1] for t in trials]
        assert len(set(workers)) == 2 and all(_alive(p) for p in workers)
    finally:
        proc.kill()
        proc.wait()
    deadline = time.time() + 60
    while any(_alive(p) for p in workers) and time.time() < deadline:
        time.sleep(0.1)
    left = [p for p in workers if _alive(p)]
    for p in left:
        os.kill(p, signal.SIGKILL)
    assert not left, "a sweep worker outlived its killed runner"
    for t in trials:   # the resumed trials checkpointed again on their way out
        assert (logs / f"{t}.train.log").read_text().count("stopped by signal") == 2

    done = subprocess.run(cmd, cwd=REPO, env=ENV, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    with open(run.parent.parent / "results.csv") as f:
        rows = {r["trial"]: r for r in csv.DictReader(f)}
    assert sorted(rows) == sorted(trials)       # no duplicate rows
    for name, r in rows.items():
        assert r["status"] == "done" and r["epochs"] == "40" and r["approach"] == "scratch"
        assert int(r["n_train"]) == 32 and 0 < float(r["test_rel_l2_mean"]) < 10
        summary = json.loads((run / name / "eval" / "summary.json").read_text())
        assert float(r["test_rel_l2_mean"]) == pytest.approx(summary["test_rel_l2_mean"])
        assert summary["n_test"] == 8
        assert not (run / name / "eval" / "examples.png").exists()   # no figure per trial
        hp = yaml.safe_load((run / name / "hyperparams.yaml").read_text())
        assert hp["lr"] == float(r["lr"])
        assert _epochs(run, name) == list(range(1, 41))     # each epoch once
        assert len(_worker_pids(logs / f"{name}.train.log")) == 3   # started, resumed twice


FAKE_WORKER = r'''#!{python}
import json, os, sys
for line in sys.stdin:
    req = json.loads(line)
    if req["kind"] == "die_before" and not os.path.exists(req["log"] + ".died"):
        open(req["log"] + ".died", "w").close()
        os._exit(9)
    print(json.dumps({{"started": os.getpid()}}), flush=True)
    if req["kind"] == "die_during":
        os._exit(9)
    print(json.dumps({{"rc": 0}}), flush=True)
'''


def test_dead_workers_are_replaced(tmp_path):
    """A worker that dies during a trial fails that trial only; one that dies before it
    started the trial hands it to a new worker."""
    from utils.sweep_workers import WorkerPool

    python = tmp_path / "python"
    python.write_text(FAKE_WORKER.format(python=sys.executable))
    python.chmod(0o755)
    log = str(tmp_path / "trial.log")
    pool = WorkerPool(1, str(python), str(tmp_path), ENV, str(tmp_path / "workers.log"))
    try:
        assert pool.run("train", [], log) == 0
        assert pool.run("die_during", [], log) == 9
        assert pool.run("train", [], log) == 0
        assert pool.run("die_before", [], log) == 0
        assert pool.run("train", [], log) == 0
    finally:
        pool.close()
    pids = _worker_pids(log)
    assert len(pids) == 6
    # the worker that died during its trial and the one that died before were replaced
    assert pids[0] == pids[1] != pids[2] == pids[3] != pids[4] == pids[5]


def test_set_for_gives_one_n_its_own_step_cap(tmp_path):
    """`--set_for n_train=16 max_steps=3` reaches the n = 16 trials only (their config and
    name; the --set cap stays with n = 8), and results.csv records each trial's cap."""
    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(32, 8, 8))
    cfg = tiny_config(tmp_path, data, max_epochs=2, batch_size=4, in_memory=True)
    sweep = _sweep_file(tmp_path / "s.yaml", "cap", {"lr": [1.0e-3], "n_train": [8, 16]})
    out = subprocess.run(
        [sys.executable, "utils/sweeps.py", "--sweep", sweep, "--yaml_config", cfg,
         "--config", "tiny", "--root_dir", str(tmp_path / "res"), "--set", "max_steps=2",
         "--set_for", "n_train=16", "max_steps=3"],
        cwd=REPO, env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    rows = _results(out.stdout.strip().splitlines()[-1])
    assert sorted(rows) == ["lr1em3_n16_maxsteps3", "lr1em3_n8"]
    run = tmp_path / "res" / "sweeps" / "cap" / "expts" / "tiny"
    for trial, cap in (("lr1em3_n8", 2), ("lr1em3_n16_maxsteps3", 3)):
        hyper = yaml.safe_load((run / trial / "hyperparams.yaml").read_text())
        assert hyper["max_steps"] == cap
        assert rows[trial]["status"] == "done"
        assert (rows[trial]["max_steps"], rows[trial]["iters"]) == (str(cap), str(cap))
