"""Hostile inputs, round two (issue 16): files and values that pass a first look but would
fail later. Each case: one `error: ...` line and its exit status (2 user error, 3 a failed
write), nothing half-written; relative --set paths of a sweep mean the user's directory;
the shell entries answer --help without side effects."""
import errno
import json
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

import eval as eval_cli
import predict
import train as train_cli
from tests.helpers import tiny_config, train_tiny_poisson, write_split
from tests.test_hostile import fails, targs, tree
from utils import get_scale
from utils.cli import run_cli
from utils.YParams import REPO_ROOT


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny Poisson model (n = 16) trained for 2 epochs, its data and config."""
    tmp = tmp_path_factory.mktemp("inputs")
    data, cfg, weights = train_tiny_poisson(tmp)
    return dict(tmp=tmp, data=data, cfg=cfg, weights=weights)


def _split(trained, path, change=None, n=5):
    """A split file of the first n samples of the tiny test split, `change(fields, tensor)`
    applied."""
    with h5py.File(trained["data"]["test_path"], "r") as f:
        fields, tensor = f["fields"][:n], f["tensor"][:n]
    if change:
        fields, tensor = change(fields, tensor)
    write_split(str(path), fields, tensor, "test")
    return str(path)


def _predict(argv, capsys):
    """(exit status, the one error line) of predict.py; no traceback."""
    with pytest.raises(SystemExit) as e:
        run_cli(predict.main, argv)
    err = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in line for line in err)
    errors = [line for line in err if line.startswith("error")]
    assert len(errors) == 1 and err[-1] == errors[0], err
    return e.value.code, errors[0]


def _all_fail(trained, path, capsys, match, tmp_path):
    """eval.py and predict.py (and train.py / get_scale.py on it as a train split) refuse
    `path` with one line, exit 2, writing nothing."""
    cfg, w = trained["cfg"], trained["weights"]
    out = tmp_path / "out"
    fails(eval_cli.main, targs(cfg, tmp_path / "res", "--weights", w, "--test_path", path,
                               "--out_dir", str(out)), capsys, match)
    code, err = _predict(["--weights", w, "--input", path, "--out", str(out / "p.h5")], capsys)
    assert code == 2 and match in err, err
    assert not out.exists() or tree(out) == []


# ----------------------------------------------------------------------------- 6. dtypes
@pytest.mark.parametrize("kind", ["string", "complex"])
def test_non_numeric_fields_refused_at_open(trained, tmp_path, capsys, kind):
    def change(fields, tensor):
        if kind == "string":
            return fields.astype("S8"), tensor
        return fields.astype(np.complex64) * (1 + 1j), tensor

    path = _split(trained, tmp_path / "bad.h5", change)
    match = "'fields' holds " + ("strings" if kind == "string" else "complex numbers")
    _all_fail(trained, path, capsys, match, tmp_path)
    fails(train_cli.main, targs(trained["cfg"], tmp_path / "res", "--set", f"train_path={path}"),
          capsys, match)
    fails(get_scale.main, [path, "--out", str(tmp_path / "s.npy")], capsys, match)
    assert not (tmp_path / "s.npy").exists()


def test_string_tensor_refused(trained, tmp_path, capsys):
    path = _split(trained, tmp_path / "bad.h5", lambda f, t: (f, t.astype("S8")))
    _all_fail(trained, path, capsys, "'tensor' holds strings", tmp_path)


# ----------------------------------------------------------------------------- 7. empty split
def test_empty_test_split_refused(trained, tmp_path, capsys):
    path = _split(trained, tmp_path / "empty.h5", n=0)
    _all_fail(trained, path, capsys, "holds no samples", tmp_path)


# ----------------------------------------------------------------------------- 8. NaN / inf
@pytest.mark.parametrize("where", ["solution", "source", "tensor"])
def test_non_finite_test_data_refused(trained, tmp_path, capsys, where):
    def change(fields, tensor):
        fields, tensor = fields.copy(), tensor.copy()
        if where == "tensor":
            tensor[3, 1] = np.inf
        else:
            fields[3, 1 if where == "solution" else 0, 2, 2] = np.nan
        return fields, tensor

    path = _split(trained, tmp_path / "nan.h5", change)
    _all_fail(trained, path, capsys, "sample 3 holds NaN or inf", tmp_path)


def test_nan_predictions_write_no_result(trained, tmp_path, capsys):
    import torch

    ckpt = torch.load(trained["weights"], weights_only=True)
    name = next(iter(ckpt["model_state"]))
    ckpt["model_state"][name] = torch.full_like(ckpt["model_state"][name], float("nan"))
    broken = tmp_path / "broken.tar"
    torch.save(ckpt, broken)
    out = tmp_path / "out"
    fails(eval_cli.main, targs(trained["cfg"], tmp_path, "--weights", str(broken), "--out_dir",
                               str(out)), capsys, f"{broken} predicts NaN or inf on 11 of 11")
    assert tree(out) == []


def test_json_writer_never_writes_nan(tmp_path):
    from utils.fileio import write_json_atomic

    with pytest.raises(ValueError):
        write_json_atomic(tmp_path / "s.json", {"mean": float("nan")})
    assert list(tmp_path.iterdir()) == []
    write_json_atomic(tmp_path / "s.json", {"mean": 0.5})
    assert json.loads((tmp_path / "s.json").read_text()) == {"mean": 0.5}


# ----------------------------------------------------------------------------- 9. values
@pytest.mark.parametrize("settings, match", [
    (["seed=4294967296"], "seed must be <= 4294967295, got 4294967296"),
    (["dropout=1"], "dropout must be < 1, got 1"),
    (["dropout=2.5"], "dropout must be < 1, got 2.5"),
    (["fc_cut=0", "fc_dim=1e15"], "of float32 weights alone"),   # fc_cut would override it
    (["embed_cut=100000"], "of float32 weights alone"),
])
def test_values_that_would_fail_later_refused_at_load(trained, tmp_path, capsys, settings,
                                                      match):
    cfg, sets = trained["cfg"], [a for s in settings for a in ("--set", s)]
    fails(train_cli.main, targs(cfg, tmp_path, *sets), capsys, match)
    fails(eval_cli.main, targs(cfg, tmp_path, "--weights", trained["weights"], *sets), capsys,
          match)
    assert tree(tmp_path) == []


# ----------------------------------------------------------------------------- 10. predict
def test_predict_bad_device_and_missing_input(trained, tmp_path, capsys):
    w, good = trained["weights"], trained["data"]["test_path"]
    out = tmp_path / "o.h5"
    for device in ("gpu7", "cuda:99"):
        code, err = _predict(["--weights", w, "--input", good, "--out", str(out), "--device",
                              device], capsys)
        assert code == 2 and f"device {device}" in err, err
    out.write_bytes(b"keep")
    code, err = _predict(["--weights", w, "--input", str(tmp_path / "missing.h5"), "--out",
                          str(out), "--overwrite"], capsys)
    assert code == 2 and "input file not found" in err, err
    assert out.read_bytes() == b"keep"


# ----------------------------------------------------------------------------- 11. W&B
def test_bad_wandb_init_timeout_warns_and_trains(trained, tmp_path, monkeypatch, caplog):
    import wandb

    from utils.trainer import Trainer
    from utils.YParams import YParams

    timeouts = []

    class Run:
        def log(self, row, step=None):
            pass

        def finish(self):
            pass

    def fake_init(**kw):
        timeouts.append(kw["settings"].init_timeout)
        return Run()

    monkeypatch.setattr(wandb, "init", fake_init)
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "abc")
    params = YParams(trained["cfg"], "tiny")
    params["log_to_wandb"], params["max_epochs"] = True, 1
    assert Trainer(params, str(tmp_path / "run")).fit()["epochs"] == 1
    assert timeouts == [10]
    assert any("WANDB_INIT_TIMEOUT" in r.getMessage() and r.levelname == "WARNING"
               for r in caplog.records)


# ----------------------------------------------------------------------------- 13. --eval_test
def test_eval_test_without_test_path_refused_before_training(trained, tmp_path, capsys):
    cfg = tiny_config(tmp_path, {k: v for k, v in trained["data"].items() if k != "test_path"})
    fails(train_cli.main, targs(cfg, tmp_path / "res", "--eval_test"), capsys,
          "has no test_path: --eval_test has nothing to evaluate on")
    assert not (tmp_path / "res").exists()


# ----------------------------------------------------------------------------- 15. generator
def test_generator_workers_under_file_size_limit_exit_3(tmp_path):
    import resource

    def file_size_limit():   # smaller than the workers' shared-memory result slots (1 MB)
        resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))

    res = subprocess.run([sys.executable, "utils/gen_data_poisson.py", "--n", "32", "--ntrain",
                          "64", "--nval", "32", "--ntest", "32", "--workers", "2",
                          "--chunk_size", "32", "--datapath", str(tmp_path)], cwd=REPO_ROOT,
                         preexec_fn=file_size_limit, capture_output=True, text=True, timeout=120)
    assert res.returncode == 3, res.stderr
    err = [l for l in res.stderr.splitlines() if l.startswith("error") or "Traceback" in l]
    assert len(err) == 1 and "File too large" in err[0], res.stderr
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 16. read-only
def _read_only(monkeypatch, tmp_path):
    """Writes into `tmp_path` fail as on a read-only file system, removals too (EROFS)."""
    real_replace, real_remove = os.replace, os.remove

    def refuse(real):
        def call(src, *a, **kw):
            if str(src).startswith(str(tmp_path)):
                raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(src))
            return real(src, *a, **kw)
        return call

    monkeypatch.setattr(os, "replace", refuse(real_replace))
    monkeypatch.setattr(os, "remove", refuse(real_remove))


def test_read_only_destination_reports_the_write_error(trained, tmp_path, capsys, monkeypatch):
    from utils.errors import StorageError
    from utils.fileio import write_text_atomic

    _read_only(monkeypatch, tmp_path)
    with pytest.raises(StorageError, match="cannot write .*x.txt: Read-only file system"):
        write_text_atomic(tmp_path / "x.txt", "x")
    fails(get_scale.main, [trained["data"]["train_path"], "--out", str(tmp_path / "s.npy")],
          capsys, "Read-only file system", code=3)
    code, err = _predict(["--weights", trained["weights"], "--input",
                          trained["data"]["test_path"], "--out", str(tmp_path / "p.h5")], capsys)
    assert code == 3 and "Read-only file system" in err, err


# ----------------------------------------------------------------------------- 3. sweeps
def test_sweep_set_paths_are_relative_to_the_users_directory(tmp_path, monkeypatch):
    from utils import sweep_files, sweeps

    (tmp_path / "ops.yaml").write_text("base: {lr: 1.0}\n")
    cfg = {"method": "grid", "parameters": {"lr": {"values": [1e-3]}}}
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.chdir(user)
    sweep = sweeps.LocalSweep(cfg, str(tmp_path / "ops.yaml"), "base", str(tmp_path / "res"),
                              sets=["scales_path=rel/s.npy", "max_epochs=2",
                                    "train_path=[a.h5, /abs/b.h5]", "pretrained=null"],
                              trial_fn=lambda name, settings: True)
    parsed = dict(s.split("=", 1) for s in sweep.sets)
    assert json.loads(parsed["scales_path"]) == str(user / "rel/s.npy")
    assert json.loads(parsed["train_path"]) == [str(user / "a.h5"), "/abs/b.h5"]
    assert parsed["max_epochs"] == "2" and parsed["pretrained"] == "null"
    # a sweep recorded by a runner that passed relative paths on (its trials read them in
    # the repository root) resumes when rerun there with the same --set
    monkeypatch.chdir(REPO_ROOT)
    os.makedirs(tmp_path / "res/sweeps/sweep")
    (tmp_path / "res/sweeps/sweep/sweep.json").write_text(json.dumps(
        {"config": "base", "sets": ["pretrained=results/w.tar"]}))
    path, failed = sweeps.LocalSweep(cfg, str(tmp_path / "ops.yaml"), "base",
                                     str(tmp_path / "res"), sets=["pretrained=results/w.tar"],
                                     trial_fn=lambda name, settings: True).run()
    assert failed == [] and os.path.isfile(path)
    # a W&B trial's settings: the same rule
    monkeypatch.chdir(user)
    params = sweep_files.apply_settings({}, {"scales_path": "rel/s.npy", "lr": 1e-3})
    assert params == {"scales_path": str(user / "rel/s.npy"), "lr": 1e-3}


# ----------------------------------------------------------------------------- 18. --help
@pytest.mark.parametrize("script", ["run.sh", "run_gen_data.sh", "run_study.sh",
                                    "run_mixed_demo.sh"])
@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_shell_entries_answer_help_without_side_effects(tmp_path, script, flag):
    shutil.copy(os.path.join(REPO_ROOT, script), tmp_path / script)
    res = subprocess.run(["bash", str(tmp_path / script), flag], cwd=tmp_path,
                         capture_output=True, text=True, timeout=30,
                         env=dict(os.environ, PYTHON="false"))
    assert res.returncode == 0, res.stderr
    with open(os.path.join(REPO_ROOT, script)) as f:
        second = f.readlines()[1]       # the header's first line, without its '# '
    assert res.stdout.splitlines()[0] == second[2:].rstrip() and res.stderr == ""
    assert os.listdir(tmp_path) == [script]
