"""A hostile or unlucky user (issue 8): code in checkpoints, paths out of the results root,
concurrent runs, killed parents, changed settings on resume, torn files, full disks, bad
values, W&B without network. Each case: one `error: ...` line, its exit status, data intact."""
import json
import os
import subprocess
import sys

import pytest
import torch
import yaml

import eval as eval_cli
import train as train_cli
from tests.helpers import tiny_config, write_poisson_set
from utils.YParams import REPO_ROOT


class _Evil:
    """Unpickling this object runs a shell command (what a hostile checkpoint does)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    data = write_poisson_set(str(tmp / "data"), n=16, sizes=(16, 4, 4))
    return tmp, data, tiny_config(tmp, data)


def fails(main, argv, capsys, match, code=2):
    with pytest.raises(SystemExit) as e:
        main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == code, err
    assert err and err[-1].startswith("error: ") and match in err[-1], err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def targs(cfg, root, *extra, config="tiny", run_num="0"):
    return ["--yaml_config", cfg, "--config", config, "--run_num", run_num,
            "--root_dir", str(root), *extra]


def tree(path):
    return sorted(os.path.relpath(os.path.join(d, f), path)
                  for d, _, fs in os.walk(path) for f in fs)


# ----------------------------------------------------------------------------- 1. security
def test_checkpoint_cannot_run_code(setup, capsys, tmp_path):
    tmp, data, cfg = setup
    marker = tmp_path / "PWNED"
    evil = tmp_path / "evil.tar"
    torch.save({"model_state": {}, "epoch": 1, "x": _Evil(str(marker))}, evil)
    msg = "refused, loading them could run code"
    fails(eval_cli.main, targs(cfg, tmp_path / "r", "--weights", str(evil)), capsys, msg)
    fails(train_cli.main, targs(cfg, tmp_path / "r", "--set", f"pretrained={evil}"), capsys, msg)
    own = tmp_path / "r2/expts/tiny/0/checkpoints/ckpt.tar"
    own.parent.mkdir(parents=True)
    own.write_bytes(evil.read_bytes())
    fails(train_cli.main, targs(cfg, tmp_path / "r2"), capsys, msg)
    assert not marker.exists()
    assert own.read_bytes() == evil.read_bytes()    # left for the user to inspect


# ----------------------------------------------------------------------------- 2. paths
@pytest.mark.parametrize("run_num", ["../../../esc", "/tmp/esc_abs", "..", ".hidden", "a/b"])
def test_run_num_must_be_plain(setup, capsys, tmp_path, run_num):
    tmp, data, cfg = setup
    fails(train_cli.main, targs(cfg, tmp_path / "root", run_num=run_num), capsys,
          "--run_num must be a plain name")
    fails(eval_cli.main, targs(cfg, tmp_path / "root", "--weights", cfg, run_num=run_num),
          capsys, "--run_num must be a plain name")
    assert tree(tmp_path) == []


def test_config_name_must_be_plain(setup, capsys, tmp_path):
    tmp, data, cfg = setup
    doc = yaml.safe_load(open(cfg))
    doc["../../esc"] = doc["tiny"]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    fails(train_cli.main, targs(str(bad), tmp_path / "a/b/root", config="../../esc"), capsys,
          "--config must be a plain name")
    fails(eval_cli.main, targs(str(bad), tmp_path / "a/b/root", "--weights", cfg,
                               config="../../esc"), capsys, "--config must be a plain name")
    assert tree(tmp_path) == ["bad.yaml"]
