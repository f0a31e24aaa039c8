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
from tests.helpers import child_pids, tiny_config, write_poisson_set
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


# ----------------------------------------------------------------------------- trainer helpers
def make(cfg, run_dir, **over):
    from utils.YParams import YParams
    from utils.trainer import Trainer

    p = YParams(cfg, "tiny")
    for k, v in over.items():
        p[k] = v
    return Trainer(p, str(run_dir))


def metrics(run):
    from utils.metrics_log import read_metrics
    return read_metrics(run / "metrics.jsonl")


# ----------------------------------------------------------------------------- 3. lock, 7. Ctrl-C
def test_lock_is_dropped_by_a_killed_process(tmp_path):
    from utils.run_guard import DirLock
    from utils.errors import UserError

    code = ("import sys, time; sys.path.insert(0, sys.argv[1]); from utils.run_guard import "
            "DirLock; lock = DirLock(sys.argv[2]).acquire(); print('locked', flush=True); time.sleep(60)")
    proc = subprocess.Popen([sys.executable, "-c", code, REPO_ROOT, str(tmp_path)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "locked"
        with pytest.raises(UserError, match=f"in use by another process \\(pid {proc.pid}\\)"):
            DirLock(str(tmp_path), "run directory").acquire()
    finally:
        proc.kill()
        proc.wait(timeout=10)
    with DirLock(str(tmp_path)):      # kill -9 left nothing held
        pass


def test_second_trainer_refuses_while_first_runs_and_ctrl_c_checkpoints(setup, tmp_path):
    """Two train.py on one run directory: the second refuses in one line (exit 2) while the
    first is alive; Ctrl-C (SIGINT) then stops the first like SIGTERM: checkpoint, exit 0."""
    import signal
    import time

    tmp, data, cfg = setup
    run = tmp_path / "res/expts/tiny/0"
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    cmd = [sys.executable, "train.py", *targs(cfg, tmp_path / "res", "--set", "max_epochs=100000")]
    first = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 120
        while not (run / "metrics.jsonl").exists() and time.time() < deadline:
            time.sleep(0.2)
        second = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                                timeout=120)
        assert second.returncode == 2, second.stderr
        assert second.stderr.strip().splitlines() == [
            f"error: run directory {run} is in use by another process (pid {first.pid}); "
            f"wait for it to finish or stop it first"]
        assert first.poll() is None
        first.send_signal(signal.SIGINT)
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
    assert first.returncode == 0, err
    assert "received signal 2" in err and "Traceback" not in err
    ck = torch.load(run / "checkpoints/ckpt.tar", weights_only=True)
    rows = metrics(run)
    assert ck["epoch"] >= 1 and [r["epoch"] for r in rows] == list(range(1, ck["epoch"] + 1))


# ----------------------------------------------------------------------------- 5. resume settings
def test_resume_refuses_changed_settings_and_extends_the_schedule(setup, tmp_path):
    import math
    from utils.errors import UserError

    tmp, data, cfg = setup
    run = tmp_path / "run"
    make(cfg, run, max_epochs=2, lr=3e-3).fit()
    with pytest.raises(UserError, match=r"other settings than its checkpoint \(lr: 0.003 -> "
                                        r"0.0001\); restore them"):
        make(cfg, run, max_epochs=5, lr=1e-4)
    with pytest.raises(UserError, match=r"batch_size: 8 -> 4; loss_style: 'sum' -> 'mean'"):
        make(cfg, run, batch_size=4, loss_style="mean")
    # safe keys: a longer run, other loader/logging settings
    make(cfg, run, max_epochs=5, lr=3e-3, valid_batch_size=3, plot_figs=True).fit()
    lrs = [r["lr"] for r in metrics(run)]
    expect = [3e-3 * (1 + math.cos(math.pi * e / 2)) / 2 for e in (0, 1)] \
        + [3e-3 * (1 + math.cos(math.pi * e / 5)) / 2 for e in (2, 3, 4)]
    assert lrs == pytest.approx(expect, rel=1e-9, abs=1e-12)
    hp = yaml.safe_load(open(run / "hyperparams.yaml"))
    assert hp["max_epochs"] == 5 and hp["lr"] == 3e-3


# ----------------------------------------------------------------------------- 6. metrics.jsonl
def test_metrics_agree_with_the_checkpoint(setup, tmp_path):
    tmp, data, cfg = setup
    run = tmp_path / "run"
    make(cfg, run, max_epochs=2).fit()
    with open(run / "metrics.jsonl", "a") as f:      # a later epoch, then a torn append
        f.write(json.dumps(dict(epoch=7, val_loss=1.0)) + "\n" + '{"epoch": 3, "train_lo')
    make(cfg, run, max_epochs=3).fit()
    assert [r["epoch"] for r in metrics(run)] == [1, 2, 3]
    os.remove(run / "checkpoints/ckpt.tar")          # a fresh start: no old rows remain
    make(cfg, run, max_epochs=1).fit()
    assert [r["epoch"] for r in metrics(run)] == [1]
    assert metrics(tmp_path / "no_run") == []          # no file yet: no rows


# ----------------------------------------------------------------------------- 12. W&B offline
@pytest.mark.parametrize("failure", ["no key", "no network"])
def test_wandb_failure_falls_back_to_offline(setup, tmp_path, monkeypatch, caplog, failure):
    """wandb.init is replaced by a stand-in that fails as W&B does without a key (UsageError
    at once) or without network (an error after init_timeout); training goes on offline."""
    import wandb

    calls, logged = [], []

    class Run:
        def log(self, row, step=None):
            logged.append(step)

        def finish(self):
            pass

    def fake_init(**kw):
        calls.append(kw)
        if kw.get("mode") == "offline":
            return Run()
        if failure == "no key":
            raise wandb.errors.UsageError("No API key configured. Use `wandb login` to log in.")
        assert kw["settings"].init_timeout == 10     # bounded wait for the server
        raise wandb.errors.CommError("Run initialization has timed out after 10.0 sec.")

    monkeypatch.setattr(wandb, "init", fake_init)
    tmp, data, cfg = setup
    summary = make(cfg, tmp_path / "run", log_to_wandb=True).fit()
    assert summary["epochs"] == 2 and logged == [1, 2]
    assert [c.get("mode") for c in calls] == [None, "offline"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and warnings[0].startswith("W&B not reachable (")


# ----------------------------------------------------------------------------- 8, 9. generator
GEN = [sys.executable, "utils/gen_data_poisson.py", "--n", "32", "--nval", "32", "--ntest", "32"]


def _wait_gone(pids, timeout=20):
    import time
    deadline = time.time() + timeout
    while time.time() < deadline:
        pids = [p for p in pids if os.path.exists(f"/proc/{p}") and
                open(f"/proc/{p}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        if not pids:
            return []
        time.sleep(0.1)
    return pids


def test_generator_full_disk_one_line_exit_3_old_files_intact(tmp_path):
    import resource

    old = {}
    for split in ("train", "val", "test"):
        p = tmp_path / f"poisson_{split}_k1_5.h5"
        p.write_bytes(b"previous " + split.encode())
        old[p] = p.read_bytes()

    def file_size_limit():   # like a full disk: writes beyond 1.5 MB fail (EFBIG)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1_500_000, 1_500_000))

    res = subprocess.run(GEN + ["--ntrain", "512", "--workers", "2", "--chunk_size", "32",
                                "--datapath", str(tmp_path), "--overwrite"], cwd=REPO_ROOT,
                         preexec_fn=file_size_limit, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("error") or "Traceback" in l]
    assert err == [f"error: cannot write {tmp_path / 'poisson_train_k1_5.h5'}: File too large; "
                   f"nothing was replaced"]
    assert {p: p.read_bytes() for p in old} == old
    assert sorted(os.listdir(tmp_path)) == sorted(p.name for p in old)   # no temporary left


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_generator_killed_leaves_no_workers_and_no_temporary(tmp_path, how):
    """SIGTERM: the temporary file is removed at once. kill -9: the workers die with the
    parent and the next run removes the stale temporary."""
    import signal
    import time

    from utils.gen_common import remove_stale_temporaries

    proc = subprocess.Popen(GEN + ["--n", "128", "--ntrain", "200000", "--workers", "2",
                                   "--datapath", str(tmp_path)], cwd=REPO_ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not any(n.endswith(".tmp.h5") for n in os.listdir(tmp_path)) \
                and time.time() < deadline:
            assert proc.poll() is None, proc.stderr.read()
            time.sleep(0.05)
        while len(child_pids(proc.pid)) < 2 and time.time() < deadline:
            time.sleep(0.05)
        workers = child_pids(proc.pid)
        assert len(workers) == 2
        proc.send_signal(getattr(signal, how))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _wait_gone(workers) == []
    if how == "SIGTERM":
        assert proc.returncode == 130
        assert proc.stderr.read().strip().splitlines()[-1] == \
            "error: interrupted (no partial file was left)"
    else:
        assert len(os.listdir(tmp_path)) == 1          # the stale temporary ...
        remove_stale_temporaries(str(tmp_path / "poisson_train_k1_5.h5"))
    assert os.listdir(tmp_path) == []                  # ... removed by the next run


@pytest.mark.parametrize("argv, match", [
    (["--ntrain", str(10 ** 12)], "the three splits need 8.29e+06 GB"),
    (["--ntrain", str(10 ** 8)], "only"),
    (["--n", "100000"], "--n must be <= 16384"),
    (["--seed", str(10 ** 23)], "--seed must be in [0, 2**63 - 1]"),
])
def test_generator_limits_checked_before_work(tmp_path, capsys, argv, match, monkeypatch):
    import shutil
    from utils import gen_common

    real = shutil.disk_usage
    monkeypatch.setattr(gen_common.shutil, "disk_usage",   # 80 GB free, whatever the machine
                        lambda p: real(p)._replace(free=80 * 10 ** 9))
    with pytest.raises(SystemExit) as e:
        gen_common.main("poisson", ["--n", "32", "--datapath", str(tmp_path), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and match in err[0], err
    assert os.listdir(tmp_path) == []


def test_generator_workers_capped_at_the_cpus(tmp_path):
    import argparse
    from utils import gen_common

    args = gen_common.build_parser("poisson").parse_args(
        ["--n", "32", "--workers", "100000", "--datapath", str(tmp_path)])
    gen_common.validate("poisson", args)
    assert args.workers == len(os.sched_getaffinity(0))


# ----------------------------------------------------------------------------- 8. full disk (trainer)
def test_train_full_disk_one_line_exit_3_checkpoint_intact(setup, tmp_path, capsys, monkeypatch):
    """A write that fails with ENOSPC (injected into torch.save at epoch 2, under the atomic
    writer): one line, exit 3, epoch 1's checkpoint untouched, no temporary file left; the
    resume then agrees with it."""
    import errno

    tmp, data, cfg = setup
    real = torch.save

    def full_disk(obj, f, *a, **k):
        if isinstance(obj, dict) and obj.get("epoch", 0) >= 2:
            f.write(b"partial")
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", full_disk)
    run = tmp_path / "expts/tiny/0"
    line = fails(train_cli.main, targs(cfg, tmp_path), capsys, "No space left on device", code=3)
    assert line == (f"error: cannot write {run}/checkpoints/ckpt_best.tar: No space left on "
                     f"device; nothing was replaced")
    assert torch.load(run / "checkpoints/ckpt.tar", weights_only=True)["epoch"] == 1
    assert not [n for n in os.listdir(run / "checkpoints") if ".tmp" in n]   # no temporary left
    monkeypatch.setattr(torch, "save", real)
    train_cli.main(targs(cfg, tmp_path))
    assert [r["epoch"] for r in metrics(run)] == [1, 2]


# ----------------------------------------------------------------------------- 11. scales and data
def test_bad_scales_and_data_point_at_the_data(setup, tmp_path, capsys):
    import h5py
    import numpy as np
    from utils import get_scale

    tmp, data, cfg = setup
    neg = tmp_path / "neg.npy"
    np.save(neg, np.array([-1.0, 1, 1, 1, 1, 1, 1]))
    fails(train_cli.main, targs(cfg, tmp_path, "--set", f"scales_path={neg}"), capsys,
          "holds negative values")
    with h5py.File(data["train_path"]) as f:
        fields, tensor = f["fields"][:], f["tensor"][:]
    fields[3, 1, 2, 2] = np.nan
    nan_path = tmp_path / "nan_train.h5"
    empty_path = tmp_path / "empty_train.h5"
    for path, fl, te in ((nan_path, fields, tensor), (empty_path, fields[:0], tensor[:0])):
        with h5py.File(path, "w") as f:
            f.create_dataset("fields", data=fl)
            f.create_dataset("tensor", data=te)
    fails(get_scale.main, [str(nan_path)], capsys, "1 of 16 samples hold NaN or inf (first: "
          "sample 3); no scales written")
    fails(get_scale.main, [str(empty_path)], capsys, "holds no samples")
    assert sorted(p.name for p in tmp_path.glob("*.npy")) == ["neg.npy"]
    fails(train_cli.main, targs(cfg, tmp_path, "--set", f"train_path={nan_path}",
                                "--set", "batch_size=16"), capsys,
          f"holds NaN or inf values: check the data {nan_path}")


def test_unwritable_output_found_before_the_work(setup, tmp_path, capsys):
    tmp, data, cfg = setup
    blocker = tmp_path / "file"
    blocker.write_text("x")
    fails(train_cli.main, targs(cfg, blocker / "root"), capsys,
          f"cannot write in run directory {blocker}/root/expts/tiny/0")
    weights = tmp_path / "w.tar"
    make(cfg, tmp_path / "run", max_epochs=1).fit()
    weights.write_bytes((tmp_path / "run/checkpoints/ckpt.tar").read_bytes())
    fails(eval_cli.main, targs(cfg, tmp_path, "--weights", str(weights), "--out_dir",
                               str(blocker / "out")), capsys,
          f"cannot write to the output folder {blocker}/out")


# ----------------------------------------------------------------------------- 10. bad values
@pytest.mark.parametrize("setting, match", [
    ("lerning_rate=1e-3", "unknown key 'lerning_rate' in --set; did you mean 'lr'?"),
    ("epochs=3", "unknown key 'epochs' in --set; did you mean 'max_epochs'?"),
    ("max_epochs=abc", "max_epochs must be an integer, got 'abc'"),
    ("batch_size=abc", "batch_size must be an integer, got 'abc'"),
    ("lr=abc", "lr must be a number, got 'abc'"),
    ("grad_clip=abc", "grad_clip must be a number or null, got 'abc'"),
    ("num_data_workers=-1", "num_data_workers must be >= 0, got -1"),
    ("lr=-1e-3", "lr must be >= 0, got -0.001"),
    ("max_epochs=2.7", "max_epochs must be an integer, got 2.7"),
    ("valid_batch_size=0", "valid_batch_size must be >= 1, got 0"),
    ("scheduler=cosinus", "scheduler must be one of cosine, plateau, none, got 'cosinus'"),
])
def test_bad_values_one_line_exit_2(setup, tmp_path, capsys, setting, match):
    tmp, data, cfg = setup
    fails(train_cli.main, targs(cfg, tmp_path, "--set", setting), capsys, match)
    fails(eval_cli.main, targs(cfg, tmp_path, "--weights", cfg, "--set", setting), capsys, match)
    assert tree(tmp_path) == []


def test_config_file_values_checked_and_ignored_published_keys_known(setup, tmp_path, capsys):
    from utils.YParams import YParams, apply_overrides

    tmp, data, cfg = setup
    doc = yaml.safe_load(open(cfg))
    doc["typo"] = dict(doc["tiny"], lerning_rate=1e-3)
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(doc))
    fails(train_cli.main, targs(str(path), tmp_path, config="typo"), capsys,
          f"unknown key 'lerning_rate' in config 'typo' of {path}; did you mean 'lr'?")
    p = YParams(cfg, "tiny")          # published keys nothing reads are accepted
    apply_overrides(p, ["log_to_screen=true", "nx=64", "model=fno", "max_epochs=3.0"])
    assert p.max_epochs == 3 and isinstance(p.max_epochs, int)
