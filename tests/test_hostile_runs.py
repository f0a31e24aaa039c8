"""A hostile or unlucky user, round two (issue 16): what a run directory, a model card, the
data behind a checkpoint and the process itself must survive. Each case: its exit status, one
`error: ...` line where it is an error, nothing outside the named directories touched."""
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch

import eval as eval_cli
import train as train_cli
from tests.helpers import poisson_samples, tiny_config, write_poisson_set, write_split
from tests.test_hostile import fails
from utils.YParams import REPO_ROOT

SHIPPED = os.path.join(REPO_ROOT, "pretrained", "poisson_k1_5")
ENV = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile_runs")
    data = write_poisson_set(str(tmp / "data"), n=16, sizes=(16, 4, 4))
    return tmp, data, tiny_config(tmp, data, max_epochs=1)


def targs(cfg, root, *extra):
    return ["--yaml_config", cfg, "--config", "tiny", "--run_num", "0", "--root_dir", str(root),
            *extra]


def snapshot(path):
    """{relative path: bytes} of every file below `path`."""
    out = {}
    for d, _, files in os.walk(path):
        for name in files:
            p = os.path.join(d, name)
            out[os.path.relpath(p, path)] = open(p, "rb").read()
    return out


# ----------------------------------------------------------------------------- 1, 16. model cards
def test_eval_never_rewrites_a_shipped_model_card(tmp_path, capsys):
    """eval.py --weights pretrained/.../model.pt --out_dir D leaves the shipped folder (its
    card above all) byte for byte as it was, and writes only into D."""
    shipped = tmp_path / "shipped"
    shutil.copytree(SHIPPED, shipped)
    before = snapshot(shipped)
    fields, tensor = poisson_samples(4, 32, seed=5)       # modes 12: a 32 x 32 grid at least
    test = tmp_path / "poisson_test_k1_5.h5"
    write_split(str(test), fields, tensor, "test")
    eval_cli.main(["--yaml_config", os.path.join(REPO_ROOT, "configs/operators_poisson.yaml"),
                   "--config", "poisson-small-ft-k5_10", "--weights", str(shipped / "model.pt"),
                   "--test_path", str(test), "--out_dir", str(tmp_path / "out")])
    assert "over 4 samples" in capsys.readouterr().out
    assert snapshot(shipped) == before
    assert sorted(os.listdir(tmp_path / "out")) == ["examples.png", "rel_l2_per_sample.npy",
                                                    "summary.json"]


def test_run_card_records_only_its_own_finite_test_result(setup, tmp_path, monkeypatch, caplog):
    """The card beside a run's checkpoint takes the result of that run's own test split; a test
    file of another distribution (here: grid), or a NaN result, leaves it untouched; a card that cannot be written (read-only
    location) is a warning, the evaluation still succeeds (exit 0)."""
    from utils import model_card
    from utils.errors import StorageError

    tmp, data, cfg = setup
    train_cli.main(targs(cfg, tmp_path))
    weights = tmp_path / "expts/tiny/0/checkpoints/ckpt_best.tar"
    card = weights.parent / "model_card.json"
    other = tmp_path / "elsewhere/poisson_test_k1_5.h5"       # same name, another grid
    other.parent.mkdir()
    fields, tensor = poisson_samples(3, 32, seed=9)
    write_split(str(other), fields, tensor, "test")
    before = card.read_bytes()
    eval_cli.main(targs(cfg, tmp_path, "--weights", str(weights), "--test_path", str(other),
                        "--out_dir", str(tmp_path / "o1")))
    assert card.read_bytes() == before
    # a NaN result is never recorded
    summary = json.load(open(tmp_path / "o1/summary.json"))
    run_config = torch.load(weights, weights_only=True)["config"]
    assert model_card.record_test_result(
        str(weights), dict(summary, test_path=data["test_path"], test_rel_l2_mean=float("nan")),
        np.full(4, np.nan), run_config) is None
    assert card.read_bytes() == before
    # the run's own test split: recorded
    eval_cli.main(targs(cfg, tmp_path, "--weights", str(weights), "--out_dir",
                        str(tmp_path / "o2")))
    test = json.load(open(card))["metrics"]["test"]
    assert test["n_test"] == 4 and test["rel_l2_mean"] == pytest.approx(
        json.load(open(tmp_path / "o2/summary.json"))["test_rel_l2_mean"])
    # the card cannot be written: one warning, outputs written, exit 0
    def read_only(*a, **k):
        raise StorageError(f"cannot write {card}: Read-only file system; nothing was replaced")
    monkeypatch.setattr(model_card, "write_card", read_only)
    after = card.read_bytes()
    eval_cli.main(targs(cfg, tmp_path, "--weights", str(weights), "--out_dir",
                        str(tmp_path / "o3")))
    assert os.path.isfile(tmp_path / "o3/summary.json") and card.read_bytes() == after
    assert any(r.levelname == "WARNING" and "Read-only file system" in r.getMessage()
               for r in caplog.records)


# ----------------------------------------------------------------------------- 2. symlinks
@pytest.mark.parametrize("name", [".lock", "metrics.jsonl", "hyperparams.yaml",
                                  "train_summary.json", "checkpoints", "checkpoints/ckpt.tar"])
def test_symlinked_run_files_refused(setup, tmp_path, capsys, name):
    """A run file that is a symbolic link (to an existing file outside, or dangling) is refused
    in one line before anything is written; the outside target is untouched / not created."""
    tmp, data, cfg = setup
    run = tmp_path / "res/expts/tiny/0"
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("precious\n")
    link = run / name
    link.parent.mkdir(parents=True, exist_ok=True)
    if name in (".lock", "checkpoints/ckpt.tar"):
        link.symlink_to(outside / "victim")                  # an existing file outside
    elif name == "checkpoints":
        link.symlink_to(outside, target_is_directory=True)   # a directory outside
    else:
        link.symlink_to(outside / "new")                     # dangling: would be created
    fails(train_cli.main, targs(cfg, tmp_path / "res"), capsys,
          f"{link} is a symbolic link")
    assert snapshot(outside) == {"victim": b"precious\n"}
    assert os.path.islink(link)


def test_symlinked_eval_outputs_refused(setup, tmp_path, capsys):
    tmp, data, cfg = setup
    train_cli.main(targs(cfg, tmp_path))
    weights = tmp_path / "expts/tiny/0/checkpoints/ckpt_best.tar"
    out = tmp_path / "out"
    out.mkdir()
    victim = tmp_path / "victim.json"
    victim.write_text("precious")
    (out / "summary.json").symlink_to(victim)
    fails(eval_cli.main, targs(cfg, tmp_path, "--weights", str(weights), "--out_dir", str(out)),
          capsys, f"{out / 'summary.json'} is a symbolic link")
    assert victim.read_text() == "precious" and os.listdir(out) == ["summary.json"]


# ----------------------------------------------------------------------------- 4. data changed
def test_resume_refuses_regenerated_data_and_accepts_a_copy(setup, tmp_path, capsys, caplog):
    tmp, data, _ = setup
    mine = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(16, 4, 4))
    cfg = tiny_config(tmp_path, mine, max_epochs=1)
    train_cli.main(targs(cfg, tmp_path / "res"))
    ckpt = tmp_path / "res/expts/tiny/0/checkpoints/ckpt.tar"
    # the same bytes copied away and back (new mtime): the same data, the run resumes
    train = mine["train_path"]
    shutil.copy(train, tmp_path / "copy.h5")
    os.remove(train)
    shutil.copy(tmp_path / "copy.h5", train)
    train_cli.main(targs(cfg, tmp_path / "res", "--set", "max_epochs=2"))
    assert torch.load(ckpt, weights_only=True)["epoch"] == 2
    # regenerated at the same path (another seed, same size): refused, naming the file
    write_poisson_set(str(tmp_path / "data"), n=16, sizes=(16, 4, 4), seed=7)
    before = ckpt.read_bytes()
    fails(train_cli.main, targs(cfg, tmp_path / "res", "--set", "max_epochs=3"), capsys,
          f"the data file {train} (train_path) changed since the checkpoint was written")
    assert ckpt.read_bytes() == before
    # a checkpoint written before fingerprints existed still resumes, with a warning
    old = torch.load(ckpt, weights_only=True)
    del old["data_fingerprints"]
    torch.save(old, ckpt)
    train_cli.main(targs(cfg, tmp_path / "res", "--set", "max_epochs=3"))
    assert torch.load(ckpt, weights_only=True)["epoch"] == 3
    assert any("no data fingerprints" in r.getMessage() for r in caplog.records)


# ----------------------------------------------------------------------------- 5. card n_train
@pytest.mark.parametrize("setting, expect", [("n_train=8", 8), ("subsample=4", 4)])
def test_card_n_train_is_the_number_trained_on(setup, tmp_path, setting, expect):
    tmp, data, cfg = setup
    train_cli.main(targs(cfg, tmp_path, "--set", setting))
    ckpt_dir = tmp_path / "expts/tiny/0/checkpoints"
    assert json.load(open(ckpt_dir / "model_card.json"))["training"]["n_train"] == expect
    assert json.load(open(tmp_path / "expts/tiny/0/train_summary.json"))["n_train"] == expect


# ----------------------------------------------------------------------------- 12. architecture
def test_resume_with_another_architecture_names_the_keys(setup, tmp_path, capsys):
    tmp, data, cfg = setup
    train_cli.main(targs(cfg, tmp_path))
    ckpt = tmp_path / "expts/tiny/0/checkpoints/ckpt.tar"
    before = ckpt.read_bytes()
    line = fails(train_cli.main, targs(cfg, tmp_path, "--set", "embed_cut=4",
                                       "--set", "max_epochs=2"), capsys,
                 "with other settings than its checkpoint (embed_cut: 8 -> 4)")
    assert "not a readable checkpoint" not in line and ckpt.read_bytes() == before


# ----------------------------------------------------------------------------- 14. file-size limit
def test_train_under_a_file_size_limit_exit_3_checkpoint_intact(setup, tmp_path):
    """`ulimit -f`: a checkpoint larger than the limit fails with EFBIG (SIGXFSZ ignored, as
    a shell or batch system may have it); one line, exit 3, the previous checkpoint intact."""
    tmp, data, cfg = setup
    train_cli.main(targs(cfg, tmp_path))
    ckpt_dir = tmp_path / "expts/tiny/0/checkpoints"
    before = snapshot(ckpt_dir)
    limit = 20_000     # below the checkpoint (~130 kB), above hyperparams.yaml (~2 kB)
    assert len(before["ckpt.tar"]) > 4 * limit

    def file_size_limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    res = subprocess.run([sys.executable, "train.py", *targs(cfg, tmp_path, "--set",
                                                             "max_epochs=2")],
                         cwd=REPO_ROOT, env=ENV, preexec_fn=file_size_limit,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 3, res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("error") or "Traceback" in l]
    assert err == [f"error: cannot write {ckpt_dir / 'ckpt_best.tar'}: File too large; "
                   f"nothing was replaced"]
    assert snapshot(ckpt_dir) == before      # previous checkpoints intact, no temporary left


# ----------------------------------------------------------------------------- 17. early signals
def _catches(pid, sig):
    """True once process `pid` has a handler for `sig` (/proc SigCgt mask)."""
    with open(f"/proc/{pid}/status") as f:
        mask = next(int(l.split()[1], 16) for l in f if l.startswith("SigCgt:"))
    return bool(mask >> (sig - 1) & 1)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_during_start_up_is_a_clean_stop(setup, tmp_path, sig):
    """SIGTERM/SIGUSR1 right after train.py starts (while it imports torch and builds the
    run): it stops before the first step, exit 0, no checkpoint and no temporary written;
    the rerun trains normally."""
    tmp, data, cfg = setup
    cmd = [sys.executable, "train.py", *targs(cfg, tmp_path)]
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 60
        while not _catches(proc.pid, sig) and time.time() < deadline:
            assert proc.poll() is None
            time.sleep(0.005)
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert f"stopped by signal {int(sig)} before the first step" in err
    assert "Traceback" not in err
    run = tmp_path / "expts/tiny/0"
    assert not (run / "checkpoints/ckpt.tar").exists()
    assert not [p for p in snapshot(tmp_path) if ".tmp" in p]
    train_cli.main(targs(cfg, tmp_path))
    assert torch.load(run / "checkpoints/ckpt.tar", weights_only=True)["epoch"] == 1
