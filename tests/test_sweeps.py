"""Sweeps: trial naming, grid expansion, local runner (resume), W&B trial settings under DDP."""
import csv
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import yaml

from utils import sweep_files, sweeps
from utils.errors import UserError
from utils.sweeps import LocalSweep, SweepError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- names, files
def test_trial_names_stable_and_safe():
    assert sweeps.trial_name({"lr": 1e-3, "subsample": 16}) == "lr1em3_s16"
    # order of the settings does not matter; lr and subsample lead, others sorted
    assert sweeps.trial_name({"subsample": 4096, "lr": 5e-5}) == "lr5em5_s4096"
    assert sweeps.trial_name({"embed_cut": 32, "subsample": 1, "lr": 2.5e-4,
                              "act": "gelu x/y"}) == "lr2p5em4_s1_actgelu-x-y_embedcut32"
    names = {sweeps.trial_name({"lr": lr, "subsample": s})
             for lr in (1e-5, 5e-5, 1e-4, 5e-4, 1e-3) for s in (1, 2, 4)}
    assert len(names) == 15
    assert all(n.replace("_", "").isalnum() for n in names)
    assert sweeps.trial_name({"seed": 2, "n_train": 64, "lr": 1e-3}) == "lr1em3_n64_seed2"


@pytest.mark.parametrize("v", [1e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e20, 0.5, 3, True, None,
                               "poisson", [1, 2], np.float64(3.1e-5), np.int64(8)])
def test_yaml_text_round_trips_through_set_parser(v):
    # train.py parses --set values with yaml.safe_load; PyYAML reads '1e-05' as a string
    assert yaml.safe_load(sweeps.yaml_text(v)) == v


def test_published_grid():
    cfg = sweeps.load_sweep(os.path.join(REPO, "configs", "sweep_config.yaml"))
    assert cfg["method"] == "grid"
    assert cfg["metric"] == {"name": "best_val_rel_l2", "goal": "minimize"}
    trials = sweeps.expand_grid(cfg)
    assert len(trials) == 65
    assert sorted({t["lr"] for t in trials}) == [1e-5, 5e-5, 1e-4, 5e-4, 1e-3]
    assert sorted({t["subsample"] for t in trials}) == [2 ** k for k in range(13)]
    assert all(isinstance(t["lr"], float) for t in trials)
    assert len({sweeps.trial_name(t) for t in trials}) == 65


def test_sweep_file_errors(tmp_path):
    bad = tmp_path / "s.yaml"
    bad.write_text("method: grid\nparameters:\n  lr:\n    distribution: uniform\n")
    with pytest.raises(SweepError, match="needs `value` or `values`"):
        sweeps.load_sweep(str(bad))
    bad.write_text("method: hyperband\nparameters:\n  lr: {values: [1]}\n")
    with pytest.raises(SweepError, match="not one of"):
        sweeps.load_sweep(str(bad))
    # numbers written without a dot (YAML 1.1 strings) are read as W&B reads them
    bad.write_text("parameters:\n  lr: {values: [1e-5, 1E-3]}\n")
    assert sweeps.expand_grid(sweeps.load_sweep(str(bad))) == [{"lr": 1e-5}, {"lr": 1e-3}]
    p = subprocess.run([sys.executable, "utils/sweeps.py", "--sweep", str(tmp_path / "no.yaml"),
                        "--yaml_config", "x.yaml", "--config", "c", "--root_dir",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True)
    assert p.returncode == 2
    assert p.stderr.strip() == f"error: sweep file not found: {tmp_path / 'no.yaml'}"



def test_cli_random_sweep_reaches_the_sweep_engine(tmp_path):
    """`python utils/sweeps.py` of a random sweep imports W&B's `sweeps` engine, not itself
    (the script's folder, utils/, holds a sweeps.py too). A stand-in engine proposes nothing."""
    engine = tmp_path / "engine"
    engine.mkdir()
    (engine / "sweeps.py").write_text(textwrap.dedent("""
        class RunState:
            running, finished = "running", "finished"
        class SweepRun:
            def __init__(self, **kwargs):
                pass
        def next_runs(spec, runs, n):
            return []
    """))
    (tmp_path / "s.yaml").write_text("method: random\nparameters:\n  lr: {values: [0.1, 0.2]}\n")
    (tmp_path / "ops.yaml").write_text("base: {lr: 1.0}\n")
    env = dict(os.environ, PYTHONPATH=str(engine), OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    p = subprocess.run([sys.executable, "utils/sweeps.py", "--sweep", str(tmp_path / "s.yaml"),
                        "--yaml_config", str(tmp_path / "ops.yaml"), "--config", "base",
                        "--root_dir", str(tmp_path / "res"), "--count", "1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr[-2000:]
    assert "sweep engine proposed no new trial" in p.stderr

# ----------------------------------------------------------------------------- local runner
FAKE_TRAIN = r'''
import argparse, json, os, sys, yaml
p = argparse.ArgumentParser()
for a in ("--yaml_config", "--config", "--run_num", "--root_dir", "--weights"):
    p.add_argument(a)
p.add_argument("--set", action="append", default=[])
p.add_argument("--eval_test", action="store_true")
p.add_argument("--eval_examples", type=int)
a = p.parse_args()
s = {k: yaml.safe_load(v) for k, v in (x.split("=", 1) for x in a.set)}
run = os.path.join(a.root_dir, "expts", a.config, a.run_num)
with open(os.path.join(a.root_dir, "calls.log"), "a") as f:
    f.write(f"{os.path.basename(sys.argv[0])} {a.run_num} {sorted(s)}\n")
if os.environ.get("FAKE_FAIL") == os.path.basename(sys.argv[0]) + ":" + a.run_num:
    sys.exit(3)


def evaluate():   # the test evaluation: eval.py, or train.py --eval_test after training
    if os.environ.get("FAKE_FAIL") == "eval:" + a.run_num:
        sys.exit(3)
    os.makedirs(os.path.join(run, "eval"), exist_ok=True)
    json.dump({"test_rel_l2_mean": 2 * s["lr"], "test_rel_l2_median": 0.1, "n_test": 8},
              open(os.path.join(run, "eval", "summary.json"), "w"))


if os.path.basename(sys.argv[0]) == "train.py":
    assert isinstance(s["lr"], float) and s["max_epochs"] == 2 and a.eval_test
    os.makedirs(os.path.join(run, "checkpoints"), exist_ok=True)
    open(os.path.join(run, "checkpoints", "ckpt_best.tar"), "w").write("w")
    json.dump({"n_train": 64 // s["subsample"], "best_val_rel_l2": s["lr"] * s["subsample"],
               "best_val_loss": 1.0, "best_epoch": 1, "epochs": 2, "n_params": 123,
               "stopped_early": False, "capped_while_improving": s["subsample"] == 2},
              open(os.path.join(run, "train_summary.json"), "w"))
    evaluate()
else:
    assert "subsample" not in s and a.weights.endswith("ckpt_best.tar")
    evaluate()
'''


@pytest.fixture
def fake_repo(tmp_path):
    """Stand-in train.py / eval.py that record their calls (runner logic only, fast)."""
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "train.py").write_text(FAKE_TRAIN)
    (repo / "eval.py").write_text(FAKE_TRAIN)
    (repo / "ops.yaml").write_text("base: {lr: 1.0}\n")
    (repo / "sweep.yaml").write_text(
        "name: t\nmethod: grid\nmetric: {name: best_val_rel_l2, goal: minimize}\n"
        "parameters:\n  lr: {values: [1.0e-4, 1.0e-3]}\n  subsample: {values: [1, 2]}\n")
    return repo


def _calls(root):
    with open(os.path.join(root, "sweeps", "t", "calls.log")) as f:
        return [line.split()[:2] for line in f]


def _results(path):
    with open(path) as f:
        return {r["trial"]: r for r in csv.DictReader(f)}


def test_local_runner_resumes(fake_repo, tmp_path, monkeypatch):
    root = str(tmp_path / "results")
    cfg = sweeps.load_sweep(str(fake_repo / "sweep.yaml"))

    def make(jobs=1):
        return LocalSweep(cfg, str(fake_repo / "ops.yaml"), "base", root, sets=["max_epochs=2"],
                          tags=["approach=scratch"], jobs=jobs, repo_root=str(fake_repo),
                          trial_mode="process")

    # first run: the test evaluation of one trial (after its training) and the training of
    # another fail (an interrupted sweep)
    monkeypatch.setenv("FAKE_FAIL", "eval:lr1em3_s1")
    with monkeypatch.context() as m:
        m.setattr(LocalSweep, "run_trial", _fail_one(LocalSweep.run_trial, "lr1em4_s2"))
        path, failed = make().run()
    assert failed == ["lr1em3_s1", "lr1em4_s2"]
    rows = _results(path)
    assert [rows[t]["status"] for t in ("lr1em4_s1", "lr1em4_s2", "lr1em3_s1", "lr1em3_s2")] \
        == ["done", "failed", "failed", "done"]
    assert rows["lr1em4_s1"]["n_train"] == "64" and rows["lr1em3_s2"]["n_train"] == "32"
    assert float(rows["lr1em3_s2"]["best_val_rel_l2"]) == pytest.approx(2e-3)
    assert float(rows["lr1em3_s2"]["test_rel_l2_mean"]) == pytest.approx(2e-3)
    assert rows["lr1em3_s2"]["approach"] == "scratch"
    # the trainer's flags (train_summary.json) are columns
    assert (rows["lr1em3_s2"]["capped_while_improving"], rows["lr1em4_s1"]["stopped_early"]) \
        == ("True", "False")
    n_before = len(_calls(root))

    # resume: done trials are skipped, the trained one is only evaluated (eval.py), the other
    # trained and evaluated in one process
    monkeypatch.delenv("FAKE_FAIL")
    path, failed = make(jobs=2).run()
    assert failed == []
    new = sorted(map(tuple, _calls(root)[n_before:]))
    assert new == [("eval.py", "lr1em3_s1"), ("train.py", "lr1em4_s2")]
    rows = _results(path)
    assert {r["status"] for r in rows.values()} == {"done"} and len(rows) == 4

    # a third run does nothing
    make().run()
    assert len(_calls(root)) == n_before + 2
    # other fixed settings would silently reuse these trials: refused, nothing run
    with pytest.raises(SweepError, match="was run with config 'base' and --set"):
        LocalSweep(cfg, str(fake_repo / "ops.yaml"), "base", root, sets=["max_epochs=3"],
                   repo_root=str(fake_repo)).run()
    assert len(_calls(root)) == n_before + 2



def test_changed_pretrained_weights_are_refused(fake_repo, tmp_path):
    """A fine-tuning sweep records the fingerprint of its pre-trained weights: the same path
    with other content (the pre-training trained on since) is refused with one line before
    any trial runs; the same content, or a sweep.json written before the check, passes."""
    root = str(tmp_path / "results")
    cfg = sweeps.load_sweep(str(fake_repo / "sweep.yaml"))
    weights = tmp_path / "ckpt_best.tar"
    weights.write_bytes(b"weights of step 36000")

    def run():
        return LocalSweep(cfg, str(fake_repo / "ops.yaml"), "base", root,
                          sets=["max_epochs=2", f"pretrained={weights}"],
                          repo_root=str(fake_repo), trial_mode="process").run()

    assert run()[1] == []
    n_calls = len(_calls(root))
    record = json.loads((tmp_path / "results" / "sweeps" / "t" / "sweep.json").read_text())
    assert record["weights"]["file"] == str(weights) and record["weights"]["size"] == 21
    run()                                              # unchanged: nothing to do, no error
    weights.write_bytes(b"weights of step 72000")       # trained on: same size, other bytes
    with pytest.raises(SweepError, match="the pre-trained weights .*ckpt_best.tar changed"):
        run()
    assert len(_calls(root)) == n_calls
    # a sweep.json from before the check has no fingerprint: it is recorded, not refused
    del record["weights"]
    (tmp_path / "results" / "sweeps" / "t" / "sweep.json").write_text(json.dumps(record))
    run()
    assert "weights" in json.loads((tmp_path / "results" / "sweeps" / "t" / "sweep.json")
                                   .read_text())

def _fail_one(run_trial, name):
    def wrapped(self, n, settings):
        return False if n == name else run_trial(self, n, settings)
    return wrapped


def test_local_runner_user_errors(fake_repo, tmp_path, monkeypatch):
    cfg = sweeps.load_sweep(str(fake_repo / "sweep.yaml"))
    with pytest.raises(SweepError, match="config 'nope' not in"):
        LocalSweep(cfg, str(fake_repo / "ops.yaml"), "nope", str(tmp_path),
                   repo_root=str(fake_repo))
    with pytest.raises(SweepError, match="clashes"):
        LocalSweep(cfg, str(fake_repo / "ops.yaml"), "base", str(tmp_path), sets=["lr=1"],
                   repo_root=str(fake_repo))
    cfg_random = dict(cfg, method="random")
    with pytest.raises(SweepError, match="needs --count"):
        LocalSweep(cfg_random, str(fake_repo / "ops.yaml"), "base", str(tmp_path),
                   repo_root=str(fake_repo))
    # random/bayes without W&B's optional `sweeps` engine: one clear error, nothing run
    monkeypatch.setitem(sys.modules, "sweeps", None)
    with pytest.raises(SweepError, match="pip install sweeps==0.2.0"):
        LocalSweep(cfg_random, str(fake_repo / "ops.yaml"), "base", str(tmp_path), count=2,
                   repo_root=str(fake_repo)).run()
    assert not os.path.exists(tmp_path / "sweeps" / "t" / "calls.log")
    # every value a trial can get is checked like a train.py --set before any trial starts
    # (one line, not one failed trial per grid point)
    for values, sets, msg in [(["lr=1e-3,abc"], [], "lr must be a number, got 'abc'"),
                              (["subsample=0"], [], "subsample must be >= 1"),
                              ([], ["foo=1"], "unknown key 'foo' in --set")]:
        with pytest.raises(SweepError, match=msg):
            fresh = sweeps.load_sweep(str(fake_repo / "sweep.yaml"))
            LocalSweep(sweeps.override_values(fresh, values), str(fake_repo / "ops.yaml"), "base",
                       str(tmp_path / "v"), sets=sets, repo_root=str(fake_repo))
    assert not os.path.exists(tmp_path / "v")
    # W&B's log_uniform bounds are exponents (e^-11.5 .. e^-4), its _values bounds values
    sweeps.check_values({"parameters": {"lr": {"distribution": "log_uniform", "min": -11.5,
                                               "max": -4}}}, [])
    with pytest.raises(SweepError, match="lr must be >= 0"):
        sweeps.check_values({"parameters": {"lr": {"distribution": "log_uniform_values",
                                                   "min": -1, "max": 1e-3}}}, [])
    with pytest.raises(SweepError, match="not a parameter"):
        sweeps.override_values(cfg, ["epochs="])
    with pytest.raises(SweepError, match="expects KEY="):
        sweeps.override_values(cfg, ["=1,2"])
    assert sweeps.expand_grid(sweeps.override_values(cfg, ["subsample=4,8"]))[0] == \
        {"lr": 1e-4, "subsample": 4}


# ----------------------------------------------------------------------------- lr-grid extension
# stand-in objective: validation error = (log10(lr / lr_opt))^2, where the optimum depends on
# n_train and, for n_train 16, on the seed (seed 0 alone would choose 1e-3, seed 1 alone 1e-2,
# the average over both chooses the interior 3e-3)
LR_OPT = {8: 5e-2, 16: 3e-3, 64: 1e-4}


def stand_in_val(settings):
    shift = {0: -0.45, 1: 0.45}[settings["seed"]] if settings["n_train"] == 16 else 0.0
    return float(np.log10(settings["lr"] / LR_OPT[settings["n_train"]]) - shift) ** 2


def objective_sweep(tmp_path, extend_lr, calls):
    (tmp_path / "ops.yaml").write_text("base: {lr: 1.0}\n")
    cfg = sweeps.override_values(
        sweeps.load_sweep(os.path.join(REPO, "configs", "sweep_config.yaml")),
        ["subsample=", "lr=1.0e-3,3.0e-3,1.0e-2", "n_train=8,16,64", "seed=0,1"])
    sweep = LocalSweep(cfg, str(tmp_path / "ops.yaml"), "base", str(tmp_path / "res"),
                       sweep_name="obj", tags=["approach=scratch"], jobs=2,
                       extend_lr=extend_lr, trial_fn=lambda name, s: stand_in(sweep, name, s))

    def stand_in(sw, name, settings):   # writes what train.py + eval.py would
        calls.append(name)
        train_summary, ckpt, eval_summary = sw.summary_paths(name)
        os.makedirs(os.path.dirname(eval_summary), exist_ok=True)
        with open(train_summary, "w") as f:
            json.dump({"best_val_rel_l2": stand_in_val(settings), "n_train": settings["n_train"],
                       "seed": settings["seed"], "subset_hash": f"h{settings['n_train']}"}, f)
        with open(eval_summary, "w") as f:
            json.dump({"test_rel_l2_mean": 1.0}, f)
        return True
    return sweep


def test_lr_grid_extension_reaches_a_known_optimum(tmp_path, caplog):
    calls = []
    path, failed = objective_sweep(tmp_path, 3, calls).run()
    assert failed == []
    choices = objective_sweep(tmp_path, 3, []).lr_choices(
        [{"lr": float(r["lr"]), "n_train": int(r["n_train"]), "seed": int(r["seed"])}
         for r in _results(path).values()])
    got = {dict(k)["n_train"]: c for k, c in choices.items()}
    # n 8: optimum 5e-2 above the grid -> 1e-2**2/3e-3 = 0.0333333, then 0.111111 (interior)
    assert got["8"]["lrs"] == [1e-3, 3e-3, 1e-2, 0.0333333, 0.111111]
    assert got["8"]["lr"] == 0.0333333 and got["8"]["edge"] == ""
    # n 64: optimum 1e-4 below -> 3.33333e-4, 1.11111e-4, 3.7037e-5 (then 1.11111e-4 interior)
    assert got["64"]["lrs"] == [3.7037e-5, 1.11111e-4, 3.33333e-4, 1e-3, 3e-3, 1e-2]
    assert got["64"]["lr"] == 1.11111e-4 and got["64"]["edge"] == ""
    # n 16: each seed alone is at an edge, their average is interior: nothing added
    assert got["16"]["lrs"] == [1e-3, 3e-3, 1e-2] and got["16"]["lr"] == 3e-3
    # every new lr ran for both seeds, every trial exactly once
    assert len(calls) == len(set(calls)) == 2 * (3 + 5 + 6)
    rows = _results(path)
    assert rows["lr3p33333em2_n8_seed1"]["status"] == "done"
    header = open(path).readline().strip().split(",")
    assert header.count("n_train") == 1 and header.count("seed") == 1
    assert {"subset_hash", "approach", "lr"} <= set(header)
    # resume: the same command runs nothing
    again = []
    objective_sweep(tmp_path, 3, again).run()
    assert again == []


def test_lr_grid_extension_limit_leaves_an_edge_flagged(tmp_path, caplog):
    calls = []
    with caplog.at_level("WARNING"):
        path, _ = objective_sweep(tmp_path, 1, calls).run()
    lrs = {(r["n_train"], float(r["lr"])) for r in _results(path).values()}
    assert ("8", 0.0333333) in lrs and ("8", 0.111111) not in lrs
    assert ("64", 3.33333e-4) in lrs and ("64", 1.11111e-4) not in lrs
    assert len(calls) == 2 * (3 + 4 + 4)
    edge = [r.getMessage() for r in caplog.records if "still the" in r.getMessage()]
    assert len(edge) == 2 and any("n_train=8" in m and "upper" in m for m in edge)
    # without --extend_lr the grid is run as given
    plain = []
    (tmp_path / "plain").mkdir()
    objective_sweep(tmp_path / "plain", 0, plain).run()
    assert len(plain) == 2 * 3 * 3
    with pytest.raises(SweepError, match="--extend_lr must be"):
        objective_sweep(tmp_path, -1, [])


def test_two_runners_of_one_sweep_never_run_a_trial_twice(tmp_path):
    """Two runners of the same sweep at once (e.g. a sweep restarted while still running):
    each trial runs once, and both end with every trial done, extensions included."""
    import threading
    import time

    calls = []

    def slow(sweep):
        inner = sweep.trial_fn

        def fn(name, settings):
            time.sleep(0.02)
            return inner(name, settings)
        sweep.trial_fn = fn
        return sweep

    results = []
    # both runners are built before either starts (building one rewrites the config file the
    # other reads); each thread then only runs its sweep
    sweeps_ = [slow(objective_sweep(tmp_path, 1, calls)) for _ in range(2)]
    runners = [threading.Thread(target=lambda s=s: results.append(s.run())) for s in sweeps_]
    for t in runners:
        t.start()
    for t in runners:
        t.join()
    assert len(results) == 2, "a runner raised instead of finishing"
    assert len(calls) == len(set(calls)) == 2 * (3 + 4 + 4)
    for path, failed in results:
        assert failed == [] and {r["status"] for r in _results(path).values()} == {"done"}


# ----------------------------------------------------------------------------- W&B trial, 2 ranks
DDP_SCRIPT = r'''
import json, os, sys
import torch.distributed as dist
sys.path.insert(0, {repo!r})
from utils.sweep_files import run_wandb_trial

dist.init_process_group("gloo")
rank, out = dist.get_rank(), sys.argv[1]

class FakeRun:   # what wandb.init() returns; only rank 0 may ever create one
    def __init__(self):
        with open(os.path.join(out, "init_calls"), "a") as f:
            f.write(f"{{rank}}\n")
        self.config = {{"subsample": 16, "lr": 1e-3}} if rank == 0 else {{"lr": -1.0}}
        self.name = None

def fake_agent(sweep_id, function, count, entity=None, project=None):
    assert count == 1 and sweep_id == "abc123"
    with open(os.path.join(out, "agent_calls"), "a") as f:
        f.write(f"{{rank}}\n")
    function()

def train_fn(settings, run_dir):
    with open(os.path.join(out, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"settings": settings, "run_dir": run_dir}}, f)

rd = run_wandb_trial("abc123", os.path.join(out, "root"), train_fn, rank=rank,
                     agent=fake_agent, init=FakeRun)
# an agent that runs no trial (sweep finished) must not leave rank 1 waiting
none = run_wandb_trial("abc123", out, train_fn, rank=rank, agent=lambda *a, **k: None,
                       init=FakeRun)
with open(os.path.join(out, f"ret{{rank}}.json"), "w") as f:
    json.dump([rd, none], f)
dist.destroy_process_group()
'''


def test_wandb_trial_settings_reach_rank1(tmp_path):
    script = tmp_path / "ddp_trial.py"
    script.write_text(DDP_SCRIPT.format(repo=REPO))
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled")
    p = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                        "--nproc_per_node=2", str(script), str(tmp_path)],
                       capture_output=True, text=True, timeout=180, env=env)
    assert p.returncode == 0, p.stderr[-3000:]
    expect_dir = os.path.join(str(tmp_path), "root", "sweeps", "abc123", "lr1em3_s16")
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert got == {"settings": {"subsample": 16, "lr": 1e-3}, "run_dir": expect_dir}
        assert json.loads((tmp_path / f"ret{rank}.json").read_text()) == [expect_dir, None]
    # W&B itself (agent, init) ran on rank 0 only
    assert (tmp_path / "agent_calls").read_text() == "0\n"
    assert (tmp_path / "init_calls").read_text() == "0\n"


# ----------------------------------------------------------------------------- W&B agent, train.py
SWEEP_TRAIN_SCRIPT = r'''
import json, sys
import wandb
sys.path.insert(0, {repo!r})
logged = []

class FakeRun:   # the agent's trial run (stand-in: no W&B server)
    def __init__(self, *a, **k):
        self.config = {{"lr": 2e-3, "subsample": 4}}
        self.name, self.summary = None, {{}}
    def log(self, row, step=None):
        logged.append(step)
    def finish(self):
        pass

def agent(sweep_id, function, count, entity=None, project=None):
    assert sweep_id == "swp1" and count == 1
    function()

wandb.agent, wandb.init = agent, FakeRun
import train
train.main(sys.argv[2:])
json.dump(logged, open(sys.argv[1], "w"))
'''


def test_train_py_sweep_id_runs_the_agent_trial(tmp_path):
    """train.py --sweep_id: the trial's settings drive training into {root}/sweeps/ID/NAME/."""
    from tests.helpers import tiny_config, write_poisson_set

    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(32, 8, 8))
    cfg = tiny_config(tmp_path, data, max_epochs=2, batch_size=4)
    script = tmp_path / "sweep_train.py"
    script.write_text(SWEEP_TRAIN_SCRIPT.format(repo=REPO))
    env = dict(os.environ, WANDB_MODE="disabled", OMP_NUM_THREADS="1")
    p = subprocess.run([sys.executable, str(script), str(tmp_path / "logged.json"),
                        "--yaml_config", cfg, "--config", "tiny", "--root_dir",
                        str(tmp_path / "res"), "--sweep_id", "swp1"],
                       cwd=REPO, env=env, capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr[-3000:]
    run = tmp_path / "res" / "sweeps" / "swp1" / "lr2em3_s4"
    summary = json.loads((run / "train_summary.json").read_text())
    assert summary["n_train"] == 8 and summary["epochs"] == 2           # 32 // subsample 4
    hp = yaml.safe_load((run / "hyperparams.yaml").read_text())
    assert hp["lr"] == 2e-3 and hp["subsample"] == 4
    assert json.loads((tmp_path / "logged.json").read_text()) == [1, 2]  # epochs -> trial run


def test_wandb_agent_failure_is_one_line_error(tmp_path):
    def bad_agent(*a, **k):
        raise RuntimeError("No API key configured.\nsecond line")
    with pytest.raises(SweepError, match=r"ran no trial: RuntimeError: No API key configured\.$"):
        sweep_files.run_wandb_trial("x", str(tmp_path), lambda s, d: None, rank=0,
                                    agent=bad_agent, init=object)


# ----------------------------------------------------------------------------- lifecycle (issue 8)
SLEEPY_TRAIN = r'''
import os, sys, time
open(os.environ["PID_FILE"], "w").write(str(os.getpid()))
time.sleep(60)
'''

RUNNER = r'''
import sys
sys.path.insert(0, {repo!r})
from utils import sweeps
cfg = sweeps.load_sweep(sys.argv[1])
sweeps.LocalSweep(cfg, sys.argv[2], "base", sys.argv[3], repo_root=sys.argv[4],
                  trial_mode="process").run()
'''


def _alive(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_trials_die_with_a_killed_runner(fake_repo, tmp_path):
    """kill -9 of the runner ends its running train.py too (SIGTERM from the kernel)."""
    import signal
    import time

    (fake_repo / "train.py").write_text(SLEEPY_TRAIN)
    script = tmp_path / "runner.py"
    script.write_text(RUNNER.format(repo=REPO))
    pid_file = tmp_path / "child.pid"
    runner = subprocess.Popen([sys.executable, str(script), str(fake_repo / "sweep.yaml"),
                               str(fake_repo / "ops.yaml"), str(tmp_path / "res"), str(fake_repo)],
                              env=dict(os.environ, PID_FILE=str(pid_file)),
                              stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 60
        while not (pid_file.exists() and pid_file.read_text()) and time.time() < deadline:
            time.sleep(0.1)
        child = int(pid_file.read_text())
        assert _alive(child)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    deadline = time.time() + 20
    while _alive(child) and time.time() < deadline:
        time.sleep(0.1)
    alive = _alive(child)
    if alive:
        os.kill(child, signal.SIGKILL)
    assert not alive, "train.py outlived its killed runner"


def test_runner_never_starts_a_second_trainer_on_a_busy_trial(fake_repo, tmp_path, monkeypatch):
    """A trial whose run directory is still held (a trainer of an earlier runner) is not
    started again."""
    from utils.run_guard import DirLock

    cfg = sweeps.load_sweep(str(fake_repo / "sweep.yaml"))
    sweep = LocalSweep(cfg, str(fake_repo / "ops.yaml"), "base", str(tmp_path / "res"),
                       sets=["max_epochs=2"], repo_root=str(fake_repo), trial_mode="process")
    monkeypatch.setattr(sweeps, "ORPHAN_WAIT_S", 0.3)
    with DirLock(sweep.run_dir("lr1em4_s1")):
        path, failed = sweep.run()
    assert failed == ["lr1em4_s1"]
    calls = _calls(str(tmp_path / "res"))
    assert ["train.py", "lr1em4_s1"] not in calls and len(calls) == 3


def test_set_for_user_errors(fake_repo, tmp_path):
    """--set_for: an unknown key, a bad value, a value the sweep does not have, a parameter
    that is not swept (or is the lr / the seed), a non-grid sweep: one-line errors at the
    start, nothing run."""
    cfg = sweeps.load_sweep(str(fake_repo / "sweep.yaml"))
    for pair, msg in [(("subsample=2", "max_stepz=9"), "unknown key 'max_stepz'"),
                      (("subsample=2", "max_steps=lots"), "max_steps must be"),
                      (("subsample=3", "max_steps=9"), "subsample=3 is not one of"),
                      (("n_train=2", "max_steps=9"), "'n_train' must be a swept parameter"),
                      (("lr=1.0e-4", "max_steps=9"), "'lr' must be a swept parameter"),
                      (("subsample=2", "lr=1"), "'lr' is a swept parameter"),
                      (("subsample", "max_steps=9"), "expects PARAM=VALUE KEY=VALUE")]:
        with pytest.raises(UserError, match=msg):
            LocalSweep(cfg, str(fake_repo / "ops.yaml"), "base", str(tmp_path),
                       repo_root=str(fake_repo), set_for=[pair])
    with pytest.raises(SweepError, match="given twice"):
        LocalSweep(cfg, str(fake_repo / "ops.yaml"), "base", str(tmp_path),
                   repo_root=str(fake_repo), set_for=[("subsample=2", "max_steps=9"),
                                                      ("subsample=2", "max_steps=8")])
    with pytest.raises(SweepError, match="need a grid sweep"):
        LocalSweep(dict(cfg, method="random"), str(fake_repo / "ops.yaml"), "base",
                   str(tmp_path), count=2, repo_root=str(fake_repo),
                   set_for=[("subsample=2", "max_steps=9")])
    assert not os.path.exists(tmp_path / "sweeps")
    # the CLI: one line on stderr, exit status 2
    out = subprocess.run([sys.executable, "utils/sweeps.py", "--sweep",
                          str(fake_repo / "sweep.yaml"), "--yaml_config",
                          str(fake_repo / "ops.yaml"), "--config", "base", "--root_dir",
                          str(tmp_path), "--set_for", "subsample=64", "max_steps=9"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.strip().count("\n") == 0, out.stderr
    assert "subsample=64 is not one of" in out.stderr
