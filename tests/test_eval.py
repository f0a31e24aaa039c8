"""eval.py: metrics over every test sample, outputs, another resolution."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from models.fno import fno
from tests.helpers import poisson_samples, train_tiny_poisson, write_split
from utils.YParams import REPO_ROOT, YParams
from utils.data_utils import PDEDataset
from utils.inferencer import run_eval


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("eval")
    return (tmp, *train_tiny_poisson(tmp))


def test_eval_cli_outputs(trained):
    tmp, data, cfg, weights = trained
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run([sys.executable, "eval.py", "--yaml_config", cfg, "--config", "tiny",
                          "--run_num", "0", "--root_dir", str(tmp / "res"), "--weights", weights],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    out = tmp / "res/expts/tiny/0/eval"
    summary = json.load(open(out / "summary.json"))
    per = np.load(out / "rel_l2_per_sample.npy")
    assert summary["n_test"] == 11 and per.shape == (11,)
    assert summary["test_rel_l2_mean"] == pytest.approx(per.mean(), rel=1e-6)
    assert summary["test_rel_l2_median"] == pytest.approx(np.median(per), rel=1e-6)
    for key in ("test_loss", "weights", "test_path"):
        assert key in summary
    assert f"mean {summary['test_rel_l2_mean']:.4f}" in res.stdout
    assert (out / "examples.png").stat().st_size > 1000

    # independent recomputation: per-sample ||pred - u|| / ||u|| in file order
    params = YParams(cfg, "tiny")
    model = fno(params)
    model.load_state_dict(torch.load(weights, weights_only=False)["model_state"])
    x, y = PDEDataset(params, data["test_path"], train=False)[list(range(11))]
    with torch.no_grad():
        pred = model(x)
    ref = ((pred - y).flatten(1).norm(dim=1) / y.flatten(1).norm(dim=1)).numpy()
    np.testing.assert_allclose(per, ref, rtol=1e-5)
    assert summary["test_loss"] == pytest.approx(((pred - y) ** 2).sum().item() / 11, rel=1e-5)


def test_eval_other_resolution(trained, tmp_path):
    tmp, data, cfg, weights = trained
    fields, tensor = poisson_samples(5, 32, seed=7)
    path = str(tmp_path / "test32.h5")
    write_split(path, fields, tensor, "test")
    summary = run_eval(YParams(cfg, "tiny"), weights, path, str(tmp_path / "out"))
    assert summary["n_test"] == 5 and summary["grid"] == [32, 32]
    assert np.isfinite(summary["test_rel_l2_mean"])
    assert np.load(tmp_path / "out/rel_l2_per_sample.npy").shape == (5,)


def test_train_eval_test_matches_eval(trained, tmp_path):
    """train.py --eval_test (the sweep trial's evaluation, in the training process) writes what
    eval.py writes for the best checkpoint: the full test split whatever the training subset."""
    import train

    tmp, data, cfg, weights = trained
    argv = ["--yaml_config", cfg, "--config", "tiny", "--run_num", "0",
            "--root_dir", str(tmp / "res"), "--set", "n_train=8", "--eval_test"]
    got = train.evaluate_best(train.build_parser().parse_args(argv))
    ref = run_eval(YParams(cfg, "tiny"), weights, data["test_path"], str(tmp_path / "ref"))
    assert got["n_test"] == 11 and got["weights"] == os.path.abspath(weights)
    for key in ("test_rel_l2_mean", "test_rel_l2_median", "test_loss"):
        assert got[key] == pytest.approx(ref[key], rel=1e-6), key
    written = json.load(open(tmp / "res/expts/tiny/0/eval/summary.json"))
    assert written["test_rel_l2_mean"] == got["test_rel_l2_mean"]
    assert (tmp / "res/expts/tiny/0/eval/examples.png").stat().st_size > 1000
    # a sweep trial's evaluation (--eval_examples 0): the same numbers, no figure
    again = train.evaluate_best(train.build_parser().parse_args(argv + ["--eval_examples", "0"]))
    assert again["test_rel_l2_mean"] == got["test_rel_l2_mean"]
