"""Trainer: learning, exact resume (epoch and mid-epoch), atomic checkpoints, signals, NaN,
fine-tuning and its precedence."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from tests.helpers import tiny_config, write_poisson_set
from utils.YParams import REPO_ROOT, YParams
from utils import fileio, trainer as trainer_mod
from utils.checkpoint import load_weights
from utils.finetune import FinetuneError
from utils.optim import epochs_for_steps
from utils.trainer import Trainer, TrainingDiverged


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return write_poisson_set(str(tmp_path_factory.mktemp("data")), n=16, sizes=(48, 16, 16))


@pytest.fixture
def cfg(tmp_path, data):
    return tiny_config(tmp_path, data)


def make(cfg, run_dir, **over):
    p = YParams(cfg, "tiny")
    for k, v in over.items():
        p[k] = v
    return Trainer(p, str(run_dir))


def load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


def assert_same_state(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_training_learns(cfg, tmp_path):
    t = make(cfg, tmp_path / "run", max_epochs=15, lr=1e-2, batch_size=4)
    summary = t.fit()
    assert summary["epochs"] == 15 and summary["n_train"] == 48
    assert summary["best_val_rel_l2"] < 0.3  # starts at ~1.0 (see the first epoch below)
    rows = [json.loads(l) for l in open(tmp_path / "run" / "metrics.jsonl")]
    assert [r["epoch"] for r in rows] == list(range(1, 16))
    assert rows[0]["val_rel_l2"] > 0.6
    for key in ("epoch", "iters", "train_loss", "val_loss", "val_rel_l2", "lr",
                "interval_time_s", "train_time_s", "train_samples_per_s"):
        assert key in rows[0]
    on_disk = json.load(open(tmp_path / "run" / "train_summary.json"))
    assert on_disk["best_val_rel_l2"] == summary["best_val_rel_l2"]
    assert on_disk["n_params"] == sum(p.numel() for p in t.raw_model.parameters())
    best = load(tmp_path / "run" / "checkpoints" / "ckpt_best.tar")
    assert best["epoch"] == summary["best_epoch"] and best["best_val_loss"] == summary["best_val_loss"]
    assert os.path.isfile(tmp_path / "run" / "hyperparams.yaml")


def test_min_steps_gives_small_sets_enough_steps(cfg, tmp_path):
    """min_steps: 8 samples in batches of 4 (2 steps an epoch), max_epochs 2, min_steps 10 ->
    5 epochs, 10 optimizer steps, a cosine over the 5 epochs; the summary has seed + subset."""
    import math

    from utils.YParams import ConfigError
    from utils.data_utils import subset_hash, training_rows

    t = make(cfg, tmp_path / "run", max_epochs=2, min_steps=10, batch_size=4, n_train=8, seed=1)
    assert t.steps_per_epoch == 2 and t.max_epochs == 5 and t.scheduler.T_max == 5
    summary = t.fit()
    assert summary["epochs"] == 5 and summary["iters"] == 10 and summary["n_train"] == 8
    assert summary["seed"] == 1
    assert summary["subset_hash"] == subset_hash(training_rows({"n_train": 8, "seed": 1}, 48))
    with open(tmp_path / "run" / "metrics.jsonl") as f:
        lrs = [json.loads(line)["lr"] for line in f]
    assert lrs == pytest.approx([0.5 * 3e-3 * (1 + math.cos(math.pi * e / 5)) for e in range(5)])
    # off by default (the published fixed-epoch protocol); never fewer than max_epochs
    t0 = make(cfg, tmp_path / "run0", max_epochs=2, batch_size=4, n_train=8)
    assert t0.max_epochs == 2 and t0.scheduler.T_max == 2
    assert epochs_for_steps(30, 250, 32) == 30
    assert epochs_for_steps(30, 250, 1) == 250
    assert epochs_for_steps(30, 250, 8) == 32
    with pytest.raises(ConfigError, match="min_steps must be"):
        make(cfg, tmp_path / "bad", min_steps=-1)


def test_resume_is_exact(cfg, tmp_path):
    full = make(cfg, tmp_path / "full", max_epochs=3)
    full.fit()
    # 1 epoch, then a new process-like Trainer resumes the same run dir for the other 2
    make(cfg, tmp_path / "part", max_epochs=1, max_cosine_lr_epochs=3).fit()
    again = make(cfg, tmp_path / "part", max_epochs=3, max_cosine_lr_epochs=3)
    assert again.epoch == 1
    again.fit()
    a, b = load(tmp_path / "full/checkpoints/ckpt.tar"), load(tmp_path / "part/checkpoints/ckpt.tar")
    assert_same_state(a["model_state"], b["model_state"])
    assert a["scheduler_state"]["last_epoch"] == b["scheduler_state"]["last_epoch"] == 3
    assert a["iters"] == b["iters"] and a["best_val_loss"] == b["best_val_loss"]
    ra = [json.loads(l) for l in open(tmp_path / "full/metrics.jsonl")]
    rb = [json.loads(l) for l in open(tmp_path / "part/metrics.jsonl")]
    assert [r["val_loss"] for r in ra] == [r["val_loss"] for r in rb]


@pytest.mark.filterwarnings("ignore:Seems like `optimizer.step\\(\\)` has been overridden")
def test_signal_mid_epoch_checkpoint_and_exact_resume(cfg, tmp_path, monkeypatch):
    full = make(cfg, tmp_path / "full", max_epochs=2)
    full.fit()
    t = make(cfg, tmp_path / "cut", max_epochs=2)
    real_step = t.optimizer.step
    calls = []

    def step_then_signal(*a, **k):
        out = real_step(*a, **k)
        calls.append(1)
        if len(calls) == 9:  # second epoch, step 3 of 6
            os.kill(os.getpid(), signal.SIGTERM)
        return out

    monkeypatch.setattr(t.optimizer, "step", step_then_signal)
    res = t.fit()
    assert res["stopped"] and len(calls) == 9  # the current step finished, no further one
    ck = load(tmp_path / "cut/checkpoints/ckpt.tar")
    assert (ck["epoch"], ck["step_in_epoch"], ck["iters"]) == (1, 3, 9)
    assert signal.getsignal(signal.SIGTERM) is not t._on_signal  # handlers restored
    resumed = make(cfg, tmp_path / "cut", max_epochs=2)
    resumed.fit()
    a, b = load(tmp_path / "full/checkpoints/ckpt.tar"), load(tmp_path / "cut/checkpoints/ckpt.tar")
    assert_same_state(a["model_state"], b["model_state"])
    ra = [json.loads(l) for l in open(tmp_path / "full/metrics.jsonl")]
    rb = [json.loads(l) for l in open(tmp_path / "cut/metrics.jsonl")]
    assert len(rb) == 2 and rb[1]["val_loss"] == ra[1]["val_loss"]
    assert rb[1]["train_loss"] == pytest.approx(ra[1]["train_loss"], rel=1e-12)


def test_interrupted_checkpoint_write_keeps_previous(cfg, tmp_path, monkeypatch):
    t = make(cfg, tmp_path / "run", max_epochs=1)
    t.fit()
    path = tmp_path / "run/checkpoints/ckpt.tar"
    before = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        f.write(b"partial garbage")
        raise KeyboardInterrupt("killed mid-write")

    monkeypatch.setattr(trainer_mod.torch, "save", broken_save)
    with pytest.raises(KeyboardInterrupt):
        fileio.torch_save_atomic({"x": 1}, str(path))
    assert path.read_bytes() == before and load(path)["epoch"] == 1
    assert sorted(os.listdir(tmp_path / "run/checkpoints")) == [  # no temp
        "ckpt.tar", "ckpt_best.tar", "model_card.json"]


def test_nan_loss_stops_without_touching_checkpoints(cfg, tmp_path, monkeypatch):
    make(cfg, tmp_path / "run", max_epochs=1).fit()
    path = tmp_path / "run/checkpoints/ckpt.tar"
    before = path.read_bytes()
    t = make(cfg, tmp_path / "run", max_epochs=3)
    fwd = t.raw_model.forward
    monkeypatch.setattr(t.raw_model, "forward", lambda x: fwd(x) * float("nan"))
    with pytest.raises(TrainingDiverged, match="non-finite training loss at epoch 2 step 1"):
        t.fit()
    assert path.read_bytes() == before


def test_finetune_loading_and_precedence(cfg, tmp_path):
    make(cfg, tmp_path / "pre", max_epochs=1).fit()
    pre = load(tmp_path / "pre/checkpoints/ckpt.tar")
    ft = make(cfg, tmp_path / "ft", max_epochs=1, pretrained=str(tmp_path / "pre/checkpoints/ckpt.tar"),
              lr=1e-4)
    assert_same_state(pre["model_state"], ft.raw_model.state_dict())
    assert ft.epoch == 0 and len(ft.optimizer.state) == 0  # weights only, fresh optimizer
    ft.fit()
    own = load(tmp_path / "ft/checkpoints/ckpt.tar")
    # the run's own checkpoint wins over `pretrained` (a preempted fine-tune resumes)
    again = make(cfg, tmp_path / "ft", max_epochs=2, lr=1e-4,
                 pretrained=str(tmp_path / "pre/checkpoints/ckpt.tar"))
    assert again.epoch == 1
    assert_same_state(own["model_state"], again.raw_model.state_dict())


def test_load_pretrained_formats(cfg, tmp_path):
    t = make(cfg, tmp_path / "a", max_epochs=1)
    state = t.raw_model.state_dict()
    ddp = {"module." + k: v + 1 for k, v in state.items()}
    torch.save({"model_state": ddp, "epoch": 7}, tmp_path / "ddp.tar")
    info = load_weights(t.raw_model, str(tmp_path / "ddp.tar"))
    assert info["epoch"] == 7
    for k, v in t.raw_model.state_dict().items():
        assert torch.equal(v, ddp["module." + k])
    torch.save({"_orig_mod." + k: v for k, v in state.items()}, tmp_path / "bare.pt")
    assert load_weights(t.raw_model, str(tmp_path / "bare.pt"))["epoch"] is None
    bad = dict(state)
    bad["fc0.weight"] = torch.zeros(3, 3)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(FinetuneError, match=r"shape mismatch: fc0.weight \(3, 3\)"):
        load_weights(t.raw_model, str(tmp_path / "bad.pt"))
    with pytest.raises(FinetuneError, match="not found"):
        load_weights(t.raw_model, str(tmp_path / "none.pt"))


def test_sigterm_cli_saves_and_exits_zero(cfg, tmp_path):
    run = tmp_path / "res/expts/tiny/0"
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    proc = subprocess.Popen([sys.executable, "train.py", "--yaml_config", cfg, "--config", "tiny",
                             "--run_num", "0", "--root_dir", str(tmp_path / "res"),
                             "--set", "max_epochs=100000"], cwd=REPO_ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (run / "metrics.jsonl").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "received signal" in err
    ck = load(run / "checkpoints/ckpt.tar")
    assert ck["epoch"] >= 1 and not (run / "train_summary.json").exists()


def test_wandb_logging_disabled_mode(cfg, tmp_path, monkeypatch):
    """log_to_wandb + plot_figs under WANDB_MODE=disabled: metrics and a figure are logged."""
    import wandb

    monkeypatch.setenv("WANDB_MODE", "disabled")
    logged = []
    real_init = wandb.init

    def init(**kw):
        run = real_init(**kw)
        real_log = run.log
        monkeypatch.setattr(run, "log", lambda d, step=None: (logged.append((d, step)), real_log(d, step=step)))
        return run

    monkeypatch.setattr(wandb, "init", init)
    make(cfg, tmp_path / "run", max_epochs=2, log_to_wandb=True, plot_figs=True).fit()
    assert [s for _, s in logged] == [1, 2]
    assert {"val_rel_l2", "train_loss", "lr"} <= set(logged[0][0])
    assert isinstance(logged[0][0]["vis"], wandb.Image)
