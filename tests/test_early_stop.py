"""Converged training: the early-stopping rule, max_steps, the capped-while-improving flag,
the plateau schedule, and exact resume of an early-stopped run."""
import json
import math
import os

import pytest
import torch

from tests.test_cadence import _interrupt_at, rows, weights
from tests.test_trainer import assert_same_state, cfg, data, make  # noqa: F401 (fixtures)
from utils.errors import ConfigError
from utils.optim import early_stop_update, is_improvement


def stop_index(values, patience, min_delta=0.0):
    """The 1-based check at which the rule stops a run with these validation losses."""
    best, bad = math.inf, 0
    for i, v in enumerate(values, start=1):
        best, bad = early_stop_update(best, bad, v, min_delta)
        if bad >= patience:
            return i
    return None


def test_stopping_rule():
    # best 0.9 at check 2; checks 3, 4, 5 do not beat it -> the 3rd of them stops
    assert stop_index([1.0, 0.9, 0.95, 0.91, 0.92], patience=3) == 5
    assert stop_index([1.0, 0.9, 0.95, 0.89, 0.92], patience=3) is None   # 0.89 resets
    # relative min_delta: 0.97 and 0.96 are not 5% below 1.0 -> two bad checks
    assert stop_index([1.0, 0.97, 0.96, 0.5], patience=2, min_delta=0.05) == 3
    assert stop_index([1.0, 0.97, 0.96, 0.5], patience=2) is None
    # equal is not an improvement; the first finite value always is
    assert stop_index([2.0, 2.0], patience=1) == 2
    assert is_improvement(5.0, math.inf, 0.5) and not is_improvement(0.5, 1.0, 0.5)
    assert is_improvement(0.49, 1.0, 0.5)


def crafted(t, values):
    """Trainer t validates to the losses `values`, one per check."""
    it = iter(values)

    def validate(n_examples=0):
        v = next(it)
        return v, v, None

    t.validate = validate


def test_early_stopping_stops_at_the_right_check(cfg, tmp_path):
    """1-step epochs, a check every 2 steps, patience 2: the losses 1, 0.5, 0.6, 0.55 stop
    the run at check 4 = step 8 of its 40; best at check 2 = step 4. A rerun trains nothing."""
    over = dict(n_train=8, max_epochs=40, val_every_steps=2, early_stop_patience=2)
    t = make(cfg, tmp_path / "run", **over)
    crafted(t, [1.0, 0.5, 0.6, 0.55])
    s = t.fit()
    assert s["stopped_early"] and s["stop_step"] == s["iters"] == 8 and s["val_checks"] == 4
    assert s["best_step"] == 4 and s["best_val_loss"] == 0.5 and s["max_steps"] == 40
    assert s["capped_while_improving"] is False
    assert [r["iters"] for r in rows(tmp_path / "run")] == [2, 4, 6, 8]
    ck = torch.load(tmp_path / "run/checkpoints/ckpt.tar", weights_only=True)
    assert ck["iters"] == 8 and ck["early_stop"]["stopped"]
    best = torch.load(tmp_path / "run/checkpoints/ckpt_best.tar", weights_only=True)
    assert best["iters"] == 4
    # the model card of the best weights: where they were taken and the run's budget and rule
    card = json.load(open(tmp_path / "run/checkpoints/model_card.json"))
    assert (card["metrics"]["step"], card["metrics"]["epoch"]) == (4, 4)
    assert (card["training"]["early_stop_patience"], card["training"]["val_every_steps"],
            card["training"]["max_epochs"]) == (2, 2, 40)
    again = make(cfg, tmp_path / "run", **over)
    crafted(again, [])          # a validation would raise StopIteration
    s2 = again.fit()
    assert s2["stop_step"] == 8 and s2["stopped_early"]
    assert json.load(open(tmp_path / "run/train_summary.json"))["stop_step"] == 8


@pytest.mark.parametrize("metric,best_step,stop_step", [("loss", 4, 8), ("rel_l2", 12, 12)])
def test_val_metric(cfg, tmp_path, metric, best_step, stop_step):
    """The validation loss (MSE) stalls after check 2 while the relative L2 error keeps
    falling: with `val_metric: loss` the best check is 2 (step 4) and patience 2 stops the run
    at check 4 (step 8); with `rel_l2` every check improves, the run reaches its cap (12
    steps) and the best check is the last, as is the plateau schedule's lr."""
    t = make(cfg, tmp_path / metric, n_train=8, max_epochs=1, max_steps=12, val_every_steps=2,
             early_stop_patience=2, scheduler="plateau", lr_plateau_patience=1,
             val_metric=metric)
    losses, rels = iter([1.0, 0.5, 0.6, 0.55, 0.7, 0.8]), iter([1.0, 0.8, 0.6, 0.4, 0.3, 0.2])
    t.validate = lambda n_examples=0: (next(losses), next(rels), None)
    s = t.fit()
    assert (s["best_step"], s["stop_step"]) == (best_step, stop_step)
    assert s["stopped_early"] is (metric == "loss")
    assert s["best_val_rel_l2"] == {"loss": 0.8, "rel_l2": 0.2}[metric]
    lrs = {r["lr"] for r in rows(tmp_path / metric)}
    assert len(lrs) == (2 if metric == "loss" else 1)    # a plateau halved it, or none did
    card = json.load(open(tmp_path / metric / "checkpoints/model_card.json"))
    assert card["training"]["val_metric"] == metric     # what the best checkpoint rests on


@pytest.mark.parametrize("patience,values,capped", [
    (3, [1.0, 0.9, 0.8, 0.7, 0.6], True),      # improving to the end
    (3, [1.0, 0.9, 0.8, 0.85, 0.82], True),    # 2 checks without improvement < patience 3
    (0, [1.0, 0.9, 0.8, 0.7, 0.6], True),      # no early stopping: the last check improved
    (0, [1.0, 0.9, 0.8, 0.7, 0.75], False),    # ... it did not
])
def test_capped_while_improving(cfg, tmp_path, patience, values, capped):
    """max_steps 10 (1-step epochs, a check every 2 steps: 5 checks): the flag says whether
    the step cap, not the stopping rule, ended a run that was still improving."""
    t = make(cfg, tmp_path / "run", n_train=8, max_epochs=1, max_steps=10, val_every_steps=2,
             early_stop_patience=patience)
    assert t.total_steps == 10 and t.max_epochs == 10
    crafted(t, values)
    s = t.fit()
    assert s["iters"] == s["stop_step"] == s["max_steps"] == 10 and not s["stopped_early"]
    assert s["capped_while_improving"] is capped


def test_max_steps_ends_inside_an_epoch(cfg, tmp_path):
    """48 samples in batches of 8 (6 steps an epoch), max_steps 10: 10 steps, the last check
    inside epoch 2, the cosine over the 2 epochs the cap touches."""
    t = make(cfg, tmp_path / "run", max_steps=10)
    assert t.max_epochs == 2 and t.scheduler.T_max == 2
    s = t.fit()
    assert (s["iters"], s["epochs"]) == (10, 1)
    assert [(r["epoch"], r["iters"]) for r in rows(tmp_path / "run")] == [(1, 6), (2, 10)]
    ck = torch.load(tmp_path / "run/checkpoints/ckpt.tar", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["iters"]) == (1, 4, 10)


def test_plateau_schedule_lrs(cfg, tmp_path):
    """scheduler plateau, lr0 3e-3, warm-up 4 steps, patience 2, factor 0.5, a check every
    2 steps on a flat validation loss: the first check sets the best, checks 2-3 make a
    plateau (lr halves after step 6), checks 4-5 another (after step 10)."""
    lr0 = 3e-3
    t = make(cfg, tmp_path / "run", n_train=8, max_epochs=1, max_steps=12, val_every_steps=2,
             scheduler="plateau", warmup_steps=4, lr_plateau_patience=2, lr_plateau_factor=0.5)
    crafted(t, [1.0] * 6)
    t.fit()
    lrs = [r["lr"] for r in rows(tmp_path / "run")]        # the lr of each check's last step
    assert lrs == pytest.approx([lr0 * 2 / 4, lr0, lr0, lr0 / 2, lr0 / 2, lr0 / 4], rel=1e-12)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_early_stopped_run_resumes_exactly(cfg, tmp_path, monkeypatch):
    """plateau schedule + early stopping with a large min_delta (most checks count as no
    improvement: lr reductions and a stop inside the cap), real validation, 4-step epochs, a
    check every 6 steps. SIGTERM after step 14 (after the check at 12, which did not improve,
    inside epoch 4) and resume: the same stop step, rows and weights, bit for bit."""
    over = dict(n_train=16, batch_size=4, max_epochs=1, max_steps=40, val_every_steps=6,
                scheduler="plateau", warmup_steps=2, lr_plateau_patience=1,
                early_stop_patience=3, early_stop_min_delta=0.3)
    full = make(cfg, tmp_path / "full", **over).fit()
    assert full["stopped_early"] and full["stop_step"] < 40
    t = make(cfg, tmp_path / "cut", **over)
    _interrupt_at(t, monkeypatch, 14, "sigterm")
    assert t.fit()["stopped"]
    ck = torch.load(tmp_path / "cut/checkpoints/ckpt.tar", weights_only=True)
    assert (ck["iters"], ck["step_in_epoch"], ck["early_stop"]["bad_checks"]) == (14, 2, 1)
    cut = make(cfg, tmp_path / "cut", **over).fit()
    assert_same_state(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    ra, rb = rows(tmp_path / "full"), rows(tmp_path / "cut")
    same = ("epoch", "iters", "val_loss", "val_rel_l2", "lr", "best_val_loss")
    assert [[r[k] for k in same] for r in ra] == [[r[k] for k in same] for r in rb]
    assert [r["train_loss"] for r in rb] == pytest.approx([r["train_loss"] for r in ra],
                                                          rel=1e-12)
    for key in ("stop_step", "best_step", "val_checks", "stopped_early",
                "capped_while_improving", "best_val_loss"):
        assert cut[key] == full[key], key


def test_config_checks(cfg, tmp_path):
    with pytest.raises(ConfigError, match="early_stop_min_delta .* must be < 1"):
        make(cfg, tmp_path / "a", early_stop_min_delta=1.0)
    with pytest.raises(ConfigError, match="warmup_steps is the warm-up of `scheduler: plateau`"):
        make(cfg, tmp_path / "b", warmup_steps=5)
    with pytest.raises(ConfigError, match="lr_plateau_factor must be < 1"):
        make(cfg, tmp_path / "c", scheduler="plateau", lr_plateau_factor=1.5)
