"""The n ascent's lr rules (utils/lr_search.py) on a stand-in objective: no training."""
import csv
import json
import math
import os

import pytest

from utils.lr_search import NAscent, extend_step, first_lrs, ladder, next_step

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GRID = [3e-4, 1e-3, 3e-3]
# stand-in validation error (log10(lr / optimum))^2 + 0.01 * seed; the optimum moves with n
LR_OPT = {8: 1e-2, 32: 3e-3, 64: 4e-3, 128: 3e-3, 512: 1e-2}


def trials(ns=(8, 32, 64, 128, 512), seeds=(0, 1)):
    return [{"seed": s, "n_train": n, "lr": lr} for s in seeds for n in ns for lr in GRID]


def val(s):
    return math.log10(s["lr"] / LR_OPT[s["n_train"]]) ** 2 + 0.01 * s["seed"]


def key(s):
    return (s["lr"], s["n_train"], s["seed"])


def ascend(tr, done=None, stop_after=None, failing=(), **kw):
    """Run an ascent with trials 'finishing' instantly into `done` ({key: settings});
    stop_after: the sweep stops after that many trials ran. Returns (ascent, trials run)."""
    done = {} if done is None else done
    ran = []

    def run_batch(todo, all_trials):
        for s in todo:
            if key(s) in done or (stop_after is not None and len(ran) >= stop_after):
                continue
            ran.append(key(s))
            if key(s) not in failing:
                done[key(s)] = s

    a = NAscent(tr, extend=2, **kw)
    a.run(run_batch, lambda s: val(s) if key(s) in done else None,
          lambda s: 1.0 / s["n_train"] if key(s) in done else None,
          failed=lambda s: key(s) in failing,
          stopped=lambda: stop_after is not None and len(ran) >= stop_after)
    return a, ran


def test_ladder_is_the_grid_extension_of_extend_lr():
    assert extend_step(3e-3, 1e-3) == 0.009
    assert ladder(GRID, 2) == [2.7e-5, 9e-5, 3e-4, 1e-3, 3e-3, 9e-3, 2.7e-2]
    assert ladder(GRID, 0) == GRID and ladder([1e-3], 2) == [1e-3]


def test_window_rules():
    steps = ladder(GRID, 2)
    assert first_lrs(steps, GRID, "seeded", [], str)[0] == GRID
    h = [dict(n=8, lr=3e-3, means={1e-3: 0.2, 3e-3: 0.1, 9e-3: 0.15})]
    assert first_lrs(steps, GRID, "seeded", h, str)[0] == [1e-3, 3e-3, 9e-3]
    assert first_lrs(steps, GRID, "grid", h, str)[0] == GRID
    # stable: the choice and its neighbour on the second-best side (9e-3, mean 0.15)
    lrs, why, keep = first_lrs(steps, GRID, "seeded", [dict(n=4, lr=3e-3, means={})] + h, str)
    assert (lrs, keep) == ([3e-3, 9e-3], 3e-3) and why.startswith("stable")
    # the ladder's end bounds the window: 2.7e-2 is 2 steps beyond the grid
    assert first_lrs(steps, GRID, "seeded", [dict(n=8, lr=2.7e-2, means={})], str)[0] == [
        9e-3, 2.7e-2]
    assert next_step(steps, 2.7e-2, [9e-3, 2.7e-2])[::2] == (None, True)
    assert next_step(steps, 3e-3, [3e-3, 9e-3], keep=3e-3)[0] is None     # stable choice held
    assert next_step(steps, 9e-3, [3e-3, 9e-3], keep=3e-3)[0] == 2.7e-2   # it moved: follow
    assert next_step(steps, 3e-4, GRID)[0] == 9e-5
    assert next_step(steps, 1e-3, GRID)[0] is None


def test_seeded_ascent_decides_the_expected_lrs():
    a, ran = ascend(trials())
    got = {d["n"]: (d["lrs"], d["lr"]) for d in a.decisions}
    assert got == {
        # smallest n: the full grid, then two edge extensions up (the optimum 1e-2 is above)
        8: ([3e-4, 1e-3, 3e-3, 9e-3, 2.7e-2], 9e-3),
        # seeded from 9e-3: 3e-3 wins at the window's lower edge, so 1e-3 is added
        32: ([1e-3, 3e-3, 9e-3, 2.7e-2], 3e-3),
        64: ([1e-3, 3e-3, 9e-3], 3e-3),
        # stable (3e-3 at n 32 and 64): two lrs, the second-best side of n 64 (9e-3)
        128: ([3e-3, 9e-3], 3e-3),
        # stable again, but the optimum moved up: 9e-3 wins at the edge, 2.7e-2 is added
        512: ([3e-3, 9e-3, 2.7e-2], 9e-3)}
    assert len(ran) == len(set(ran)) == 2 * (5 + 4 + 3 + 2 + 3)
    assert a.n_values() == [8, 32, 64, 128, 512]


def test_stop_at_error_and_resume_make_the_same_decisions():
    full, _ = ascend(trials(), stop_at_error=0.01)
    # test error 1/n: 1/64 > 0.01 >= 1/128, so n 512 is never run
    assert full.n_values() == [8, 32, 64, 128] and full.decisions[-1]["stop"] == "reached"
    done = {}
    stopped, first = ascend(trials(), done, stop_after=11, stop_at_error=0.01)
    assert len(first) == 11 and len(stopped.decisions) == 1    # stopped inside n 32
    resumed, second = ascend(trials(), done, stop_at_error=0.01)
    assert not set(first) & set(second)
    assert resumed.decisions == full.decisions


def test_grid_mode_runs_the_full_grid_per_n_with_extension():
    a, ran = ascend(trials(ns=(8, 32)), mode="grid", stop_at_error=0.05)
    # every n starts from the full grid; the edge extension fires per n (3e-3 is the
    # optimum of n 32 and the grid's upper end, so 9e-3 runs to show it is interior)
    assert [(d["n"], d["lrs"], d["lr"]) for d in a.decisions] == [
        (8, [3e-4, 1e-3, 3e-3, 9e-3, 2.7e-2], 9e-3), (32, GRID + [9e-3], 3e-3)]
    assert len(ran) == 2 * (5 + 4)
    # subsample: larger values are smaller n, so the ascent runs them in descending order
    sub = [{"lr": lr, "subsample": s} for s in (1, 4, 2) for lr in GRID]
    assert NAscent(sub).ns == {(): [4, 2, 1]}


def test_a_failed_trial_ends_its_lines_ascent():
    a, ran = ascend(trials(ns=(8, 32)), failing={(1e-3, 8, 1)})
    assert [d.get("stop") for d in a.decisions] == ["failed"]
    assert all(n == 8 for _, n, _ in ran)
    with pytest.raises(ValueError, match="lr search"):
        NAscent(trials(), mode="bayes")


# ----------------------------------------------------------------------------- in the runner
def stand_in_sweep(tmp_path, root, calls, stop_after=None, **kw):
    """utils/sweeps.py's runner with a stand-in trial (validation `val`, test error 1/n)
    that stops the sweep (as SIGTERM would) once `stop_after` trials ran."""
    from utils import sweeps

    (tmp_path / "ops.yaml").write_text("base: {lr: 1.0}\n")
    cfg = sweeps.override_values(
        sweeps.load_sweep(os.path.join(REPO, "configs", "sweep_seeds.yaml")),
        ["lr=3.0e-4,1.0e-3,3.0e-3", "n_train=8,32,64,128,512", "seed=0,1"])
    sweep = sweeps.LocalSweep(cfg, str(tmp_path / "ops.yaml"), "base", str(root),
                              sweep_name="asc", jobs=2, extend_lr=2,
                              trial_fn=lambda name, s: trial(sweep, name, s), **kw)

    def trial(sw, name, settings):
        calls.append(name)
        train_summary, _, eval_summary = sw.summary_paths(name)
        os.makedirs(os.path.dirname(eval_summary), exist_ok=True)
        with open(train_summary, "w") as f:
            json.dump({"best_val_rel_l2": val(settings), "n_train": settings["n_train"],
                       "seed": settings["seed"]}, f)
        with open(eval_summary, "w") as f:
            json.dump({"test_rel_l2_mean": 1.0 / settings["n_train"]}, f)
        # >=: with two trials at once, both may append before either compares
        if stop_after is not None and len(calls) >= stop_after:
            sw.stop()
        return True
    return sweep


def test_runner_ascent_stops_at_the_error_and_resumes_with_the_same_decisions(tmp_path):
    from utils.lr_search import ASCENT_FILE

    full_calls = []
    path, failed = stand_in_sweep(tmp_path, tmp_path / "full", full_calls, lr_search="seeded",
                                  stop_at_error=0.01).run()
    full = json.load(open(os.path.join(os.path.dirname(path), ASCENT_FILE)))
    assert failed == [] and full["n_values"] == [8, 32, 64, 128]
    assert [(d["n"], d["lrs"]) for d in full["decisions"]] == [
        (8, [3e-4, 1e-3, 3e-3, 9e-3, 2.7e-2]), (32, [1e-3, 3e-3, 9e-3, 2.7e-2]),
        (64, [1e-3, 3e-3, 9e-3]), (128, [3e-3, 9e-3])]
    with open(path) as f:
        rows = list(csv.DictReader(f))
    # results.csv: every trial run, nothing of n 512
    assert sorted(r["trial"] for r in rows) == sorted(full_calls)
    assert len(rows) == 2 * (5 + 4 + 3 + 2) and {r["status"] for r in rows} == {"done"}
    # stopped inside n 32 (as by SIGTERM), then the same command again
    first, second = [], []
    sweep = stand_in_sweep(tmp_path, tmp_path / "res", first, stop_after=13,
                           lr_search="seeded", stop_at_error=0.01)
    sweep.run()
    assert sweep.stopped and 13 <= len(first) < len(full_calls)
    path, _ = stand_in_sweep(tmp_path, tmp_path / "res", second, lr_search="seeded",
                             stop_at_error=0.01).run()
    assert not set(first) & set(second) and len(first) + len(second) == len(full_calls)
    again = json.load(open(os.path.join(os.path.dirname(path), ASCENT_FILE)))
    assert again["decisions"] == full["decisions"]


def test_runner_ascent_arguments(tmp_path):
    from utils import sweeps

    with pytest.raises(sweeps.SweepError, match="--lr_search must be"):
        stand_in_sweep(tmp_path, tmp_path / "r", [], lr_search="bayes")
    with pytest.raises(sweeps.SweepError, match="positive error"):
        stand_in_sweep(tmp_path, tmp_path / "r", [], stop_at_error=-1.0)
    cfg = sweeps.load_sweep(os.path.join(REPO, "configs", "sweep_seeds.yaml"))
    cfg = sweeps.override_values(cfg, ["n_train="])
    with pytest.raises(sweeps.SweepError, match="needs an `n_train` or `subsample`"):
        sweeps.LocalSweep(cfg, str(tmp_path / "ops.yaml"), "base", str(tmp_path),
                          stop_at_error=0.1, trial_fn=lambda n, s: True)


def test_runner_ascent_with_a_step_cap_per_n(tmp_path):
    """--set_for caps of n 64 and 128 (their trials' settings and names) leave the ascent
    as it was: one line, the same decisions, the cap in the results of those n only."""
    from utils.lr_search import ASCENT_FILE

    plain, capped = [], []
    ref, _ = stand_in_sweep(tmp_path, tmp_path / "plain", plain, lr_search="seeded",
                            stop_at_error=0.01).run()
    path, failed = stand_in_sweep(
        tmp_path, tmp_path / "capped", capped, lr_search="seeded", stop_at_error=0.01,
        set_for=[("n_train=64", "max_steps=300"), ("n_train=128", "max_steps=400")]).run()
    assert failed == []
    decisions = [json.load(open(os.path.join(os.path.dirname(p), ASCENT_FILE)))["decisions"]
                 for p in (ref, path)]
    assert decisions[0] == decisions[1]
    cap = {"64": "_maxsteps300", "128": "_maxsteps400"}
    assert sorted(capped) == sorted(t + cap.get(t.split("_n")[1].split("_")[0], "")
                                    for t in plain)
    with open(path) as f:
        rows = list(csv.DictReader(f))
    assert {r["n_train"]: r["max_steps"] for r in rows} == {
        "8": "", "32": "", "64": "300", "128": "400"}
