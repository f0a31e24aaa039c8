"""The shared plumbing: atomic writers, the CLI wrapper, the run layout, the split reader."""
import json
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from tests.helpers import poisson_samples, write_split
from utils import fileio
from utils.cli import run_cli
from utils.errors import (AnalysisError, CheckpointError, ConfigError, DataError, EvalError,
                          FinetuneError, FNOConfigError, MixedDataError, SweepError,
                          TrainingDiverged, UserError)
from utils.h5io import SplitFile, SplitWriter, dataset_path, scales_file_for, scales_path
from utils.run_layout import RunLayout
from utils.YParams import REPO_ROOT


# ----------------------------------------------------------------------------- atomic writers
def test_writers_write_and_leave_no_temporary(tmp_path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    fileio.write_text_atomic(tmp_path / "a.txt", "x\ny\n")
    fileio.write_json_atomic(tmp_path / "a.json", {"k": [1, 2.5]})
    fileio.write_csv_atomic(tmp_path / "a.csv", [{"a": 1, "b": 2, "c": 3}], ["a", "b"])
    fileio.save_npy_atomic(tmp_path / "a.npy", np.arange(3.0))
    fileio.torch_save_atomic({"w": torch.ones(2)}, tmp_path / "a.tar")
    fig = plt.figure()
    fileio.savefig_atomic(fig, tmp_path / "a.png", dpi=20)
    plt.close(fig)
    assert (tmp_path / "a.txt").read_text() == "x\ny\n"
    assert json.loads((tmp_path / "a.json").read_text()) == {"k": [1, 2.5]}
    assert (tmp_path / "a.csv").read_text().splitlines() == ["a,b", "1,2"]
    assert np.array_equal(np.load(tmp_path / "a.npy"), np.arange(3.0))
    assert torch.equal(torch.load(tmp_path / "a.tar", weights_only=True)["w"], torch.ones(2))
    assert (tmp_path / "a.png").read_bytes()[:4] == b"\x89PNG"
    assert sorted(os.listdir(tmp_path)) == ["a.csv", "a.json", "a.npy", "a.png", "a.tar", "a.txt"]


def test_failed_write_keeps_the_old_file_and_removes_the_temporary(tmp_path):
    path = tmp_path / "keep.txt"
    path.write_text("old")
    for exc in (RuntimeError("disk full"), KeyboardInterrupt()):
        with pytest.raises(type(exc)):
            with fileio.atomic_path(path) as tmp:
                assert os.path.dirname(tmp) == str(tmp_path) and tmp.endswith(".txt")
                with open(tmp, "w") as f:
                    f.write("partial")
                raise exc
        assert path.read_text() == "old" and os.listdir(tmp_path) == ["keep.txt"]


# ----------------------------------------------------------------------------- errors, CLI
def test_one_error_hierarchy():
    for cls in (ConfigError, FNOConfigError, DataError, MixedDataError, CheckpointError,
                FinetuneError, EvalError, SweepError, AnalysisError):
        assert issubclass(cls, UserError) and cls.exit_code == 2
    assert issubclass(FNOConfigError, ValueError)   # as before the move
    assert TrainingDiverged.exit_code == 1 and not issubclass(TrainingDiverged, UserError)
    # historical import paths are the same classes
    from models.fno import FNOConfigError as a
    from utils.finetune import FinetuneError as b
    from utils.trainer import CheckpointError as c, TrainingDiverged as d
    from utils.sweeps import SweepError as e
    assert (a, b, c, d, e) == (FNOConfigError, FinetuneError, CheckpointError, TrainingDiverged,
                               SweepError)


@pytest.mark.parametrize("exc,code", [(DataError("bad\nfile"), 2), (TrainingDiverged("nan"), 1),
                                      (OSError("no space"), 2), (KeyboardInterrupt(), 130)])
def test_run_cli_reports_one_line(exc, code, capsys):
    def main(argv):
        raise exc
    with pytest.raises(SystemExit) as e:
        run_cli(main, [], user_errors=(OSError,))
    assert e.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: "), err


def test_run_cli_leaves_bugs_as_tracebacks():
    def main(argv):
        raise ZeroDivisionError("a bug")
    with pytest.raises(ZeroDivisionError):
        run_cli(main, [])


# ----------------------------------------------------------------------------- layout, names
def test_run_layout_matches_the_published_paths(tmp_path):
    run = RunLayout.of(tmp_path, "poisson-demo", 3)
    base = os.path.join(str(tmp_path), "expts", "poisson-demo", "3")
    assert run.run_dir == base
    assert run.best_ckpt == os.path.join(base, "checkpoints", "ckpt_best.tar")
    assert run.ckpt == os.path.join(base, "checkpoints", "ckpt.tar")
    assert run.eval_summary == os.path.join(base, "eval", "summary.json")
    out = subprocess.run([sys.executable, "utils/run_layout.py", str(tmp_path), "poisson-demo",
                          "3", "best_ckpt"], cwd=REPO_ROOT, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == run.best_ckpt


def test_scales_name_has_one_rule():
    train = dataset_path("d", "ad", "train", 0.2, 1)
    assert scales_path("d", "ad", 0.2, 1) == scales_file_for(train) == \
        os.path.join("d", "ad_train_adr0p2_1_scales.npy")


# ----------------------------------------------------------------------------- split files
def test_split_file_reads_what_the_writer_wrote(tmp_path):
    fields, tensor = poisson_samples(5, 16, seed=1)
    path = str(tmp_path / "s.h5")
    with SplitWriter(path, 5, 16, 3) as w:
        w.write(0, fields[:2], tensor[:2])
        w.write(2, fields[2:], tensor[2:])
        w.attrs["pde"] = "poisson"
    with SplitFile(path) as sf:
        assert (sf.n_samples, sf.shape, sf.n_tensor, sf.pde) == (5, (16, 16), 3, "poisson")
        f, t, o = sf.read(slice(1, 4), other=True)
    assert np.array_equal(f, fields[1:4]) and np.array_equal(t, tensor[1:4]) and o is None
    assert os.listdir(tmp_path) == ["s.h5"]


def test_split_writer_removes_its_temporary_on_error(tmp_path):
    path = str(tmp_path / "s.h5")
    with pytest.raises(RuntimeError):
        with SplitWriter(path, 2, 16, 3):
            raise RuntimeError("generator failed")
    assert os.listdir(tmp_path) == []


def test_split_file_errors(tmp_path):
    with pytest.raises(DataError, match=r"train file not found: .*none\.h5"):
        SplitFile(str(tmp_path / "none.h5"), "train file")
    bad = tmp_path / "bad.h5"
    with h5py.File(bad, "w") as f:
        f.create_dataset("fields", data=np.zeros((2, 3, 4, 4), np.float32))
    with pytest.raises(DataError, match=r"'fields' must be \(N, 2, n, n\)"):
        SplitFile(str(bad))
    fields, _ = poisson_samples(2, 16, seed=0)
    notensor = str(tmp_path / "nt.h5")
    with h5py.File(notensor, "w") as f:
        f.create_dataset("fields", data=fields)
    assert SplitFile(notensor).n_tensor == 0
    with pytest.raises(DataError, match="has no dataset 'tensor' \\(found: fields\\)"):
        SplitFile(notensor, need_tensor=True)
    ok = str(tmp_path / "ok.h5")
    write_split(ok, fields, np.zeros((3, 3), np.float32))   # 3 tensor rows for 2 samples
    with pytest.raises(DataError, match=r"'tensor' must be \(N=2, k\)"):
        SplitFile(ok)
