"""Validation / checkpoint cadence (val_every_steps, ckpt_every_s): how many checks and
checkpoint writes a run makes, that the cadence does not change what is trained, and exact
resume from a checkpoint written between two checks (signal or crash)."""
import json
import os
import signal

import pytest
import torch

from tests.test_trainer import assert_same_state, cfg, data, make  # noqa: F401 (fixtures)
from utils import trainer as trainer_mod
from utils.optim import check_interval


def rows(run_dir):
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def weights(run_dir):
    ck = torch.load(os.path.join(run_dir, "checkpoints", "ckpt.tar"), map_location="cpu",
                    weights_only=True)
    return ck["model_state"]


@pytest.fixture
def writes(monkeypatch):
    """Counts the checkpoint files the trainer writes, by file name."""
    counts = {"ckpt.tar": 0, "ckpt_best.tar": 0}
    real = trainer_mod.save_checkpoint

    def counting(obj, path, **kwargs):
        counts[os.path.basename(path)] += 1
        return real(obj, path, **kwargs)

    monkeypatch.setattr(trainer_mod, "save_checkpoint", counting)
    return counts


def test_check_interval():
    assert check_interval(0, 32) == 32 and check_interval(None, 1) == 1     # every epoch
    assert check_interval(50, 1) == 50 and check_interval(50, 32) == 50     # every 50 steps
    assert check_interval(20, 32) == 32                                     # the later one


def test_one_step_epochs_validate_every_k_steps(cfg, tmp_path, writes):
    """8 samples in batches of 8: 1-step epochs. 10 epochs with val_every_steps 4 -> checks
    after steps 4, 8 and 10 (the end), one ckpt.tar write each; the per-epoch default checks
    and writes 10 times; both train the same weights (the cadence changes nothing trained)."""
    t = make(cfg, tmp_path / "k4", n_train=8, max_epochs=10, val_every_steps=4)
    assert t.steps_per_epoch == 1 and t.check_every == 4
    summary = t.fit()
    assert summary["iters"] == 10 and summary["epochs"] == 10
    r = rows(tmp_path / "k4")
    assert [(x["epoch"], x["iters"]) for x in r] == [(4, 4), (8, 8), (10, 10)]
    assert writes["ckpt.tar"] == 3 and 1 <= writes["ckpt_best.tar"] <= 3
    best = torch.load(tmp_path / "k4/checkpoints/ckpt_best.tar", weights_only=True)
    assert best["best_step"] == summary["best_step"] in (4, 8, 10)

    writes.update({"ckpt.tar": 0, "ckpt_best.tar": 0})
    make(cfg, tmp_path / "k0", n_train=8, max_epochs=10).fit()
    r0 = rows(tmp_path / "k0")
    assert [x["iters"] for x in r0] == list(range(1, 11)) and writes["ckpt.tar"] == 10
    assert_same_state(weights(tmp_path / "k4"), weights(tmp_path / "k0"))
    # the cosine steps per epoch whatever the cadence: the same lr at the same step
    assert [x["lr"] for x in r] == [r0[i - 1]["lr"] for i in (4, 8, 10)]
    # the training loss of a row is the mean over the steps since the previous check
    assert r[0]["train_loss"] == pytest.approx(sum(x["train_loss"] for x in r0[:4]) / 4,
                                               rel=1e-9)


def test_time_based_checkpoints(cfg, tmp_path, writes):
    """ckpt_every_s: a long interval writes ckpt.tar only at the end (the best still at every
    new best); a tiny one writes it after every step, between checks too."""
    make(cfg, tmp_path / "long", max_epochs=3, ckpt_every_s=1e6).fit()
    assert writes["ckpt.tar"] == 1 and len(rows(tmp_path / "long")) == 3
    writes.update({"ckpt.tar": 0, "ckpt_best.tar": 0})
    make(cfg, tmp_path / "tiny", max_epochs=2, ckpt_every_s=1e-9).fit()
    assert writes["ckpt.tar"] == 12     # 6 steps an epoch, 2 epochs


def _interrupt_at(t, monkeypatch, n, how):
    """Make Trainer t receive SIGTERM after its optimizer step n, or crash in step n + 1."""
    real_step = t.optimizer.step
    calls = []

    def step(*a, **k):
        if how == "crash" and len(calls) == n:
            raise RuntimeError("simulated crash")
        out = real_step(*a, **k)
        calls.append(1)
        if how == "sigterm" and len(calls) == n:
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(t.optimizer, "step", step)


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
@pytest.mark.parametrize("how", ["sigterm", "crash"])
def test_exact_resume_between_checks(cfg, tmp_path, monkeypatch, how):
    """6 steps an epoch, checks every 9 steps (after steps 9 and 18, inside epoch 2 and at
    the end). Interrupted after step 13 (after the check at 9, inside epoch 3): by SIGTERM,
    or by a crash in step 14 with ckpt_every_s tiny (a checkpoint after every step). The
    resumed run ends with the uninterrupted run's weights, bit for bit, and its rows."""
    over = dict(max_epochs=3, val_every_steps=9)
    make(cfg, tmp_path / "full", **over).fit()
    extra = dict(ckpt_every_s=1e-9) if how == "crash" else {}
    t = make(cfg, tmp_path / "cut", **over, **extra)
    _interrupt_at(t, monkeypatch, 13, how)
    if how == "crash":
        with pytest.raises(RuntimeError, match="simulated crash"):
            t.fit()
    else:
        assert t.fit()["stopped"]
    ck = torch.load(tmp_path / "cut/checkpoints/ckpt.tar", weights_only=True)
    assert (ck["epoch"], ck["step_in_epoch"], ck["iters"]) == (2, 1, 13)
    assert ck["partial"]["count"] == 4 * 8          # steps 10-13 since the check at 9
    assert ck["model_info"]["metrics"]["val_loss"] is None   # weights not validated
    assert [x["iters"] for x in rows(tmp_path / "cut")] == [9]
    resumed = make(cfg, tmp_path / "cut", **over, **extra)
    assert (resumed.epoch, resumed.step_in_epoch, resumed.iters) == (2, 1, 13)
    resumed.fit()
    assert_same_state(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    ra, rb = rows(tmp_path / "full"), rows(tmp_path / "cut")
    assert [(x["epoch"], x["iters"]) for x in ra] == [(2, 9), (3, 18)]
    assert [x["iters"] for x in rb] == [9, 18]
    assert [x["val_loss"] for x in ra] == [x["val_loss"] for x in rb]
    assert rb[1]["train_loss"] == pytest.approx(ra[1]["train_loss"], rel=1e-12)
