"""Normalisation scales: function vs a direct computation, the CLI, and the notebook."""
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from utils import gen_common, get_scale
from utils.h5io import DataError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def train_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("scales")
    args = gen_common.build_parser("ad").parse_args(
        ["--ntrain", "96", "--nval", "32", "--ntest", "32", "--n", "32", "--sparse",
         "--datapath", str(root), "--workers", "1", "--chunk_size", "32"])
    return gen_common.run("ad", args)["train"]


def direct_scales(path, Lx, Ly):
    """DESIGN section 5, one sample at a time (as the published notebook)."""
    with h5py.File(path, "r") as h:
        x, t = h["fields"][:].astype(np.float64), h["tensor"][:].astype(np.float64)
    n = x.shape[-1]
    src = [np.linalg.norm(x[i, 0]) * Lx / n * Ly / n for i in range(len(x))]
    sol = [np.abs(x[i, 1]).max() for i in range(len(x))]
    ten = [np.median(np.abs(t[:, j])) for j in range(t.shape[1])]
    return np.array([np.median(src)] + ten + [np.median(sol), Lx, Ly])


@pytest.mark.parametrize("Lx,Ly", [(1.0, 1.0), (2.0, 0.5)])
def test_scales_equal_direct_computation(train_file, monkeypatch, Lx, Ly):
    monkeypatch.setattr(get_scale, "READ_CHUNK", 40)     # several partial reads
    s = get_scale.compute_scales(train_file, Lx, Ly)
    assert s.shape == (5 + 4,) and s.dtype == np.float64
    assert np.allclose(s, direct_scales(train_file, Lx, Ly), rtol=1e-12, atol=0)
    assert np.all(s > 0)


def test_cli_writes_beside_the_train_file_and_refuses_overwrite(train_file):
    out = train_file[:-3] + "_scales.npy"
    cmd = [sys.executable, "utils/get_scale.py", train_file]
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert np.allclose(np.load(out), get_scale.compute_scales(train_file))
    r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.startswith("error: ") and "exists" in r.stderr
    r = subprocess.run(cmd[:2] + ["/nonexistent/x_train.h5"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1
    os.remove(out)


def test_bad_files_raise_data_error(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        get_scale.compute_scales(str(tmp_path / "none.h5"))
    bad = tmp_path / "bad.h5"
    bad.write_bytes(b"not hdf5")
    with pytest.raises(DataError, match="not a readable HDF5"):
        get_scale.compute_scales(str(bad))


def test_notebook_runs_headless_and_matches_the_function(train_file, tmp_path):
    import nbformat
    from nbclient import NotebookClient

    out = tmp_path / "nb_scales.npy"
    nb = nbformat.read(os.path.join(REPO, "utils", "get_scale.ipynb"), as_version=4)
    env_backup = dict(os.environ)
    os.environ.update(TRAIN_PATH=train_file, SCALES_OUT=str(out), SAVE="1")
    try:
        NotebookClient(nb, timeout=120, kernel_name="python3",
                       resources={"metadata": {"path": os.path.join(REPO, "utils")}}).execute()
    finally:
        os.environ.clear()
        os.environ.update(env_backup)
    assert np.array_equal(np.load(out), get_scale.compute_scales(train_file))
