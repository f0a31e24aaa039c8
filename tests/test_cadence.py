"""Validation / checkpoint cadence (val_every_steps, val_every_growth, ckpt_every_s): how many
checks and checkpoint writes a run makes, that the cadence does not change what is trained,
and exact resume from a checkpoint written between two checks (signal or crash)."""
import json
import os
import signal

import pytest
import torch

from tests.test_trainer import assert_same_state, cfg, data, make  # noqa: F401 (fixtures)
from utils import trainer as trainer_mod
from utils.metrics_log import read_metrics
from utils.optim import check_interval, next_check_step


def rows(run_dir):
    return read_metrics(os.path.join(run_dir, "metrics.jsonl"))


def checkpoint(run_dir, name="ckpt.tar"):
    return torch.load(os.path.join(run_dir, "checkpoints", name), map_location="cpu",
                      weights_only=True)


def weights(run_dir):
    return checkpoint(run_dir)["model_state"]


def assert_same_tree(a, b, where="checkpoint"):
    """Nested dicts / lists of tensors and plain values, equal bit for bit."""
    if torch.is_tensor(a):
        assert torch.is_tensor(b) and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), where
        for k in a:
            assert_same_tree(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert isinstance(b, (list, tuple)) and len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_same_tree(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


# validation improves at the checks after epochs 1-3 (steps 12, 24, 36), not after epoch 4
# (48): the best checkpoint is not the last one
BUMPY = dict(max_epochs=4, lr=0.1, scheduler="none", batch_size=4)


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


def test_next_check_step():
    assert [next_check_step(s, 32) for s in (0, 31, 32, 33, 64)] == [32, 32, 64, 64, 96]
    checks, s = [], 0
    for _ in range(14):
        s = next_check_step(s, 32, 0.1)
        checks.append(s)
    # every 32 steps until 10% of the steps trained exceeds 32, then 10% of them apart
    assert checks == [32, 64, 96, 128, 160, 192, 224, 256, 288, 320, 352, 388, 427, 470]
    # a function of the step alone: from any step between two checks, the next one (resume)
    assert all(next_check_step(x, 32, 0.1) == 388 for x in range(352, 388))
    assert next_check_step(388, 32, 0.1) == 427


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_growing_cadence_and_exact_resume(cfg, tmp_path, monkeypatch):
    """1-step epochs, val_every_steps 2, val_every_growth 0.5: checks after steps 2, 4, 6, 9,
    14, 21, 32 and 40 (the end), each at least half the steps so far after the previous
    one. SIGTERM after step 17 (between the checks at 14 and 21): the resumed run checks at
    the same steps and ends with the uninterrupted run's weights and validation losses."""
    over = dict(n_train=8, max_epochs=40, val_every_steps=2, val_every_growth=0.5)
    make(cfg, tmp_path / "full", **over).fit()
    full = rows(tmp_path / "full")
    assert [x["iters"] for x in full] == [2, 4, 6, 9, 14, 21, 32, 40]
    t = make(cfg, tmp_path / "cut", **over)
    _interrupt_at(t, monkeypatch, 17, "sigterm")
    assert t.fit()["stopped"]
    resumed = make(cfg, tmp_path / "cut", **over)
    assert resumed.iters == 17 and resumed.next_check == 21
    resumed.fit()
    cut = rows(tmp_path / "cut")
    assert [x["iters"] for x in cut] == [x["iters"] for x in full]
    assert [x["val_loss"] for x in cut] == [x["val_loss"] for x in full]
    assert_same_state(weights(tmp_path / "full"), weights(tmp_path / "cut"))


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
    """ckpt_every_s: a long interval writes ckpt.tar only at the end (and ckpt_best.tar with
    it); a tiny one writes it after every step, between checks too."""
    make(cfg, tmp_path / "long", max_epochs=3, ckpt_every_s=1e6).fit()
    assert writes == {"ckpt.tar": 1, "ckpt_best.tar": 1} and len(rows(tmp_path / "long")) == 3
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


def test_best_checkpoint_written_with_the_latest(cfg, tmp_path, writes):
    """ckpt_every_s: a new best is kept in memory and written with the next ckpt.tar (here
    the final one), once, not at each of its 3 improving checks; the file is the one a run
    that writes at every check leaves: the best check's weights, optimizer state, RNG and
    step (36), not the final weights (48), and the model card describes it."""
    make(cfg, tmp_path / "every", **BUMPY).fit()
    r = rows(tmp_path / "every")
    assert [x["val_loss"] == x["best_val_loss"] for x in r] == [True, True, True, False]
    assert writes == {"ckpt.tar": 4, "ckpt_best.tar": 3}
    writes.update({"ckpt.tar": 0, "ckpt_best.tar": 0})
    make(cfg, tmp_path / "timed", ckpt_every_s=1e6, **BUMPY).fit()
    assert writes == {"ckpt.tar": 1, "ckpt_best.tar": 1}
    every, timed = (checkpoint(tmp_path / d, "ckpt_best.tar") for d in ("every", "timed"))
    assert timed["iters"] == timed["best_step"] == 36
    assert timed["config"].pop("ckpt_every_s") == 1e6 and every["config"].pop("ckpt_every_s") == 0
    assert_same_tree(every, timed)
    final = weights(tmp_path / "timed")
    assert not all(torch.equal(final[k], timed["model_state"][k]) for k in final)
    with open(tmp_path / "timed/checkpoints/model_card.json") as f:
        assert json.load(f)["metrics"]["step"] == 36


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_exact_resume_with_a_best_in_memory(cfg, tmp_path, monkeypatch):
    """ckpt_every_s: SIGTERM after step 40, when the best (the check at 36) is only in
    memory: the signal's checkpoint writes it first, and ckpt.tar's best_* describe it. The
    resumed run (no later best) ends with the uninterrupted run's weights and ckpt_best.tar,
    bit for bit."""
    over = dict(ckpt_every_s=1e6, **BUMPY)
    make(cfg, tmp_path / "full", **over).fit()
    t = make(cfg, tmp_path / "cut", **over)
    _interrupt_at(t, monkeypatch, 40, "sigterm")
    assert t.fit()["stopped"]
    ck, best = checkpoint(tmp_path / "cut"), checkpoint(tmp_path / "cut", "ckpt_best.tar")
    assert ck["iters"] == 40 and best["iters"] == ck["best_step"] == 36
    assert best["best_val_loss"] == ck["best_val_loss"]
    make(cfg, tmp_path / "cut", **over).fit()
    assert_same_state(weights(tmp_path / "full"), weights(tmp_path / "cut"))
    assert_same_tree(checkpoint(tmp_path / "full", "ckpt_best.tar"),
                     checkpoint(tmp_path / "cut", "ckpt_best.tar"))
