"""DDP exactness: 2 gloo processes (torchrun) == 1 process with the same global batch."""
import json
import os
import subprocess
import sys

import torch

from tests.helpers import tiny_config, write_poisson_set
from utils.YParams import REPO_ROOT


def run(cmd, tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_two_ranks_equal_one_process(tmp_path):
    # 44 training samples: the last partial batch is dropped identically in both settings;
    # 15 validation samples: uneven shards, metrics must still be exact averages.
    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(44, 15, 8))
    cfg = tiny_config(tmp_path, data, batch_size=8, valid_batch_size=4, max_epochs=2, lr=1e-3,
                      optimizer="sgd")  # SGD: a wrong gradient scale would show (Adam hides it)
    args = ["train.py", "--yaml_config", cfg, "--config", "tiny", "--root_dir", str(tmp_path / "res")]
    run([sys.executable, *args, "--run_num", "one"], tmp_path)
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *args, "--run_num", "two"], tmp_path)
    ck = {r: torch.load(tmp_path / f"res/expts/tiny/{r}/checkpoints/ckpt.tar", weights_only=False)
          for r in ("one", "two")}
    assert ck["one"]["iters"] == ck["two"]["iters"] == 2 * (44 // 8)
    assert ck["two"]["world_size"] == 2
    max_diff = 0.0
    for k, v in ck["one"]["model_state"].items():
        assert not k.startswith("module.")
        max_diff = max(max_diff, (v - ck["two"]["model_state"][k]).abs().max().item())
    print('max |param difference|', max_diff)
    assert max_diff < 1e-5, max_diff
    m = {r: [json.loads(l) for l in open(tmp_path / f"res/expts/tiny/{r}/metrics.jsonl")]
         for r in ("one", "two")}
    for a, b in zip(m["one"], m["two"]):
        for key in ("train_loss", "val_loss", "val_rel_l2"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, a[key], b[key])
    hp = open(tmp_path / "res/expts/tiny/two/hyperparams.yaml").read()
    assert "local_batch_size: 4" in hp and "global_batch_size: 8" in hp
