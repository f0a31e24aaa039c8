"""Fine-tuning: freezing keeps tensors bit-identical, channel-mismatch loading, zero-shot eval."""
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.fno import fno
from tests.helpers import TINY_MODEL, tiny_config, write_poisson_set
from utils.checkpoint import load_weights
from utils.finetune import FinetuneError, freeze_parameters
from utils.YParams import REPO_ROOT, YParams
from utils.data_utils import PDEDataset
from utils.trainer import Trainer


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    """A tiny FNO trained 2 epochs on 'pre-training' data, and a shifted downstream set."""
    tmp = tmp_path_factory.mktemp("ft")
    up = write_poisson_set(str(tmp / "up"), n=16, sizes=(32, 8, 8), seed=0)
    down = write_poisson_set(str(tmp / "down"), n=16, sizes=(16, 8, 10), seed=5, tag="k5_10")
    cfg = tiny_config(tmp, up, max_epochs=2, batch_size=8)
    Trainer(YParams(cfg, "tiny"), str(tmp / "res/expts/tiny/0")).fit()
    return tmp, up, down, cfg, str(tmp / "res/expts/tiny/0/checkpoints/ckpt_best.tar")


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)["model_state"]


def test_freezing_keeps_frozen_tensors_bit_identical(pretrained, tmp_path):
    tmp, up, down, cfg, weights = pretrained
    params = YParams(cfg, "tiny")
    for k, v in down.items():
        params[k] = v
    params.update(dict(pretrained=weights, freeze="fourier", lr=1e-2, max_epochs=2))
    run = tmp_path / "ft"
    Trainer(params, str(run)).fit()
    before, after = _state(weights), _state(str(run / "checkpoints/ckpt.tar"))
    frozen = [k for k in before if k.startswith(("sp_convs.", "ws."))]
    trained = [k for k in before if k.startswith(("fc0.", "fc1.", "fc2."))]
    assert frozen and trained and len(frozen) + len(trained) == len(before)
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    assert all(not torch.equal(before[k], after[k]) for k in trained)
    # a resumed run freezes the same tensors again (requires_grad is not in the checkpoint)
    params["max_epochs"] = 3
    t = Trainer(params, str(run))
    assert t.resumed and t.frozen == frozen
    assert all(not p.requires_grad for n, p in t.raw_model.named_parameters() if n in frozen)
    t.fit()
    final = _state(str(run / "checkpoints/ckpt.tar"))
    assert all(torch.equal(before[k], final[k]) for k in frozen)


def test_freeze_specs():
    model = fno(dict(in_dim=4, **TINY_MODEL))
    assert freeze_parameters(model, None) == []
    names = freeze_parameters(model, ["fc0.", "sp_convs.0."])
    assert names == ["fc0.weight", "fc0.bias", "sp_convs.0.weight"]
    assert [n for n, p in model.named_parameters() if not p.requires_grad] == names
    with pytest.raises(FinetuneError, match="unknown preset"):
        freeze_parameters(model, "everything")
    with pytest.raises(FinetuneError, match="no parameter starts with"):
        freeze_parameters(model, ["decoder."])


def test_channel_mismatch_loading(pretrained, caplog):
    *_, weights = pretrained
    src = _state(weights)
    torch.manual_seed(123)
    model = fno(dict(in_dim=7, **TINY_MODEL))            # mixed layout: 7 input channels
    fresh = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(FinetuneError, match=r"shape mismatch: fc0.weight \(8, 4\) vs model \(8, 7\)"):
        load_weights(model, weights)
    assert all(torch.equal(fresh[k], v) for k, v in model.state_dict().items())  # untouched
    with caplog.at_level(logging.INFO):
        info = load_weights(model, weights, strict=False)
    assert info["reinitialised"] == ["fc0.weight"] and info["ignored"] == []
    assert info["n_tensors"] == len(src) - 1
    state = model.state_dict()
    assert torch.equal(state["fc0.weight"], fresh["fc0.weight"])
    for k in src:
        if k != "fc0.weight":
            assert torch.equal(state[k], src[k]), k
    assert "re-initialised" in caplog.text and "fc0.weight (8, 7) (file (8, 4))" in caplog.text
    # nothing in common -> error, not a silently untrained model
    other = torch.nn.Linear(3, 3)
    with pytest.raises(FinetuneError, match="no tensor matches"):
        load_weights(other, weights, strict=False)


def test_zero_shot_eval_on_downstream_test_set(pretrained, tmp_path):
    """eval.py with the pre-trained weights on the downstream test set (no training)."""
    tmp, up, down, cfg, weights = pretrained
    out = tmp_path / "zs"
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "eval.py", "--yaml_config", cfg, "--config", "tiny",
                          "--run_num", "zs", "--root_dir", str(tmp_path), "--weights", weights,
                          "--test_path", down["test_path"], "--out_dir", str(out)],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["n_test"] == 10
    assert summary["test_path"] == os.path.abspath(down["test_path"])
    # independent forward pass: pre-training scales, downstream samples
    params = YParams(cfg, "tiny")
    model = fno(params)
    model.load_state_dict(_state(weights))
    x, y = PDEDataset(params, down["test_path"], train=False)[list(range(10))]
    with torch.no_grad():
        pred = model(x)
    per = ((pred - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).numpy()
    assert summary["test_rel_l2_mean"] == pytest.approx(float(np.mean(per)), rel=1e-5)
