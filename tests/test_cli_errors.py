"""Every user mistake: one `error: ...` line on stderr, exit status 2, nothing destroyed."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

import eval as eval_cli
import train as train_cli
from tests.helpers import tiny_config, write_poisson_set
from utils.YParams import REPO_ROOT


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    data = write_poisson_set(str(tmp / "data"), n=16, sizes=(16, 4, 4))
    return tmp, data, tiny_config(tmp, data)


def fails(main, argv, capsys, match):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and err[-1].startswith("error: ") and match in err[-1], err
    assert not any("Traceback" in line for line in err)
    return err[-1]


def targs(cfg, root, *extra, config="tiny"):
    return ["--yaml_config", cfg, "--config", config, "--run_num", "0", "--root_dir", str(root), *extra]


def test_train_user_errors(setup, capsys):
    tmp, data, cfg = setup
    root = tmp / "res"
    line = fails(train_cli.main, targs(cfg, root, config="nope"), capsys, "unknown config 'nope'")
    assert "available: base, tiny" in line
    fails(train_cli.main, targs(str(tmp / "none.yaml"), root), capsys, "config file not found")
    fails(train_cli.main, targs(cfg, root, "--set", "lr"), capsys, "--set expects key=value")
    fails(train_cli.main, targs(cfg, root, "--set", "train_path=/no/such.h5"), capsys,
          "train file not found: /no/such.h5")
    fails(train_cli.main, targs(cfg, root, "--set", "in_dim=6"), capsys,
          "1 source + 3 coefficient channels = 4 input channels (native layout), but the config has in_dim = 6")
    bad_scales = str(tmp / "short.npy")
    np.save(bad_scales, np.ones(5))
    fails(train_cli.main, targs(cfg, root, "--set", f"scales_path={bad_scales}"), capsys,
          "has 5 entries, expected 7")
    nokey = str(tmp / "nokey.h5")
    with h5py.File(nokey, "w") as f:
        f.create_dataset("u", data=np.zeros((2, 4, 4), np.float32))
    fails(train_cli.main, targs(cfg, root, "--set", f"val_path={nokey}"), capsys,
          "has no dataset 'fields' (found: u)")
    fails(train_cli.main, targs(cfg, root, "--set", "optimizer=lbfgs"), capsys,
          "optimizer must be one of adam, adamw, sgd, got 'lbfgs'")
    fails(train_cli.main, targs(cfg, root, "--set", "pretrained=/no/w.tar"), capsys,
          "pre-trained weights not found")
    fails(train_cli.main, targs(cfg, root, "--set", "mode_cut=20"), capsys, "too small for modes")


def test_corrupt_own_checkpoint_is_not_overwritten(setup, capsys):
    tmp, data, cfg = setup
    ck = tmp / "res2/expts/tiny/0/checkpoints/ckpt.tar"
    ck.parent.mkdir(parents=True)
    ck.write_bytes(b"not a checkpoint")
    fails(train_cli.main, targs(cfg, tmp / "res2"), capsys, "cannot resume from")
    assert ck.read_bytes() == b"not a checkpoint"


def test_eval_user_errors(setup, capsys):
    tmp, data, cfg = setup
    root = tmp / "res"
    fails(eval_cli.main, targs(cfg, root, "--weights", str(tmp / "none.tar")), capsys,
          "weights file not found")
    fails(eval_cli.main, targs(cfg, root, "--weights", cfg, "--test_path", str(tmp / "t.h5")), capsys,
          "data file not found")
    fails(eval_cli.main, targs(cfg, root, "--weights", cfg), capsys, "cannot read weights")


def test_cli_subprocess_one_line(setup):
    """The real command line (not only main()): exit 2 and a single error line."""
    tmp, data, cfg = setup
    res = subprocess.run([sys.executable, "train.py", *targs(cfg, tmp / "res", config="nope")],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                         env=dict(os.environ, WANDB_MODE="disabled"))
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        f"error: unknown config 'nope' in {cfg}; available: base, tiny"]
