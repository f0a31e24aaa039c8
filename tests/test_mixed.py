"""Mixed-physics data: 7-channel layout and scales over the union, on tiny files of each PDE."""
import math
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch

from tests.helpers import TINY_MODEL, poisson_samples
from utils import mixed_data
from utils.data_utils import DataError, get_data_loader
from utils.trainer import Trainer
from utils.YParams import REPO_ROOT, YParams

N = 16


def _write(path, pde, fields, tensor):
    with h5py.File(path, "w") as f:
        f.create_dataset("fields", data=fields.astype(np.float32))
        f.create_dataset("tensor", data=tensor.astype(np.float32))
        f.attrs["pde"] = pde
        f.attrs["n"] = N
    return str(path)


@pytest.fixture
def tiny_files(tmp_path):
    """Poisson (6 samples, real solves), AD (5) and Helmholtz (4) with known coefficients."""
    rng = np.random.default_rng(0)
    pf, pt = poisson_samples(6, N, seed=1)
    af = rng.standard_normal((5, 2, N, N))
    at = np.column_stack([rng.uniform(0.01, 0.05, (5, 3)), rng.uniform(-0.5, 0.5, (5, 2))])
    hf = rng.standard_normal((4, 2, N, N)) * 2
    ht = np.column_stack([np.full(4, 0.01), rng.integers(1, 11, 4)])
    return {
        "poisson": (_write(tmp_path / "poisson_train_k1_5.h5", "poisson", pf, pt), pf, pt),
        "ad": (_write(tmp_path / "ad_train_adr0p2_1.h5", "ad", af, at), af, at),
        "helmholtz": (_write(tmp_path / "helmholtz_train_o1_10.h5", "helmholtz", hf, ht), hf, ht),
    }


def _expected_coef(pde, t):
    z = np.zeros(len(t))
    return {"poisson": lambda: np.column_stack([t[:, 0], t[:, 1], t[:, 2], z, z, z]),
            "ad": lambda: np.column_stack([t[:, 0], t[:, 1], t[:, 2], t[:, 3], t[:, 4], z]),
            "helmholtz": lambda: np.column_stack([t[:, 0], t[:, 0], z, z, z, t[:, 1]])}[pde]()


def test_scales_over_the_union(tiny_files):
    paths = [tiny_files[p][0] for p in ("poisson", "ad", "helmholtz")]
    scales = mixed_data.mixed_scales(paths)
    fields = np.concatenate([tiny_files[p][1] for p in tiny_files]).astype(np.float32)
    assert scales.shape == (10,)
    norms = np.sqrt((fields[:, 0].astype(np.float64) ** 2).sum(axis=(1, 2)))
    assert scales[0] == pytest.approx(np.median(norms) / N ** 2, rel=1e-6)
    assert scales[7] == pytest.approx(np.median(np.abs(fields[:, 1]).max(axis=(1, 2))), rel=1e-6)
    assert list(scales[8:]) == [1.0, 1.0]
    coef = {p: _expected_coef(p, tiny_files[p][2].astype(np.float32)) for p in tiny_files}
    has = {0: "pah", 1: "pah", 2: "pa", 3: "a", 4: "a", 5: "h"}   # which PDEs have the term
    for j, who in has.items():
        vals = np.concatenate([np.abs(coef[p][:, j]) for p in coef if p[0] in who])
        assert scales[1 + j] == pytest.approx(np.median(vals), rel=1e-6), j
    # scales file via the CLI (atomic, refuses to overwrite)
    out = os.path.join(os.path.dirname(paths[0]), "mixed_scales.npy")
    cmd = [sys.executable, "utils/mixed_data.py", *paths, "--out", out]
    assert subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True).returncode == 0
    np.testing.assert_array_equal(np.load(out), scales)
    res = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True)
    assert res.returncode == 2 and res.stderr.startswith("error:") and "exists" in res.stderr


def test_channel_layout_and_normalisation(tiny_files, tmp_path):
    paths = [tiny_files[p][0] for p in ("poisson", "ad", "helmholtz")]
    scales = mixed_data.mixed_scales(paths)
    np.save(tmp_path / "s.npy", scales)
    params = dict(in_dim=7, channel_layout="mixed", scales_path=str(tmp_path / "s.npy"),
                  train_path=paths, batch_size=15, valid_batch_size=15, num_data_workers=0)
    params = _P(params)
    loader, dataset, _ = get_data_loader(params, paths, distributed=False, train=False)
    assert len(dataset) == 15
    x, y = dataset[list(range(15))[::-1]]               # any order, across files
    x, y = x.numpy()[::-1], y.numpy()[::-1]
    assert x.shape == (15, 7, N, N) and y.shape == (15, 1, N, N)
    start = 0
    for pde in ("poisson", "ad", "helmholtz"):
        _, fields, tensor = tiny_files[pde]
        fields, tensor = fields.astype(np.float32), tensor.astype(np.float32)
        n = len(fields)
        f = fields[:, 0].astype(np.float64)
        s = np.sqrt((f ** 2).sum(axis=(1, 2))) / N ** 2 / scales[0]
        coef = _expected_coef(pde, tensor.astype(np.float64)) / s[:, None] / scales[1:7]
        got = x[start:start + n]
        np.testing.assert_allclose(got[:, 0], f / s[:, None, None], rtol=2e-5, atol=1e-6)
        np.testing.assert_allclose(got[:, 1:, 0, 0], coef, rtol=2e-5, atol=1e-7)
        assert np.all(got[:, 1:] == got[:, 1:, :1, :1])  # coefficients are constant fields
        np.testing.assert_array_equal(y[start:start + n], fields[:, 1:2])
        start += n
    # absent terms are exactly zero: Poisson v, omega; AD omega; Helmholtz K12, v
    assert not x[:6, 4:].any() and not x[6:11, 6].any() and not x[11:, [3, 4, 5]].any()


def test_layout_errors(tiny_files, tmp_path):
    poisson = tiny_files["poisson"][0]
    np.save(tmp_path / "s.npy", mixed_data.mixed_scales([poisson]))
    base = dict(scales_path=str(tmp_path / "s.npy"), batch_size=2, num_data_workers=0)
    with pytest.raises(DataError, match="in_dim = 4"):
        get_data_loader(_P(dict(base, in_dim=4, channel_layout="mixed")), poisson, False, False)
    with pytest.raises(DataError, match="channel_layout must be"):
        get_data_loader(_P(dict(base, channel_layout="seven")), poisson, False, False)
    bad = _write(tmp_path / "x.h5", "poisson", np.zeros((2, 2, N, N)), np.zeros((2, 4)))
    with pytest.raises(DataError, match=r"a poisson file needs 3 coefficient columns \['K11', 'K22', 'K12'\], found 4"):
        get_data_loader(_P(dict(base, in_dim=7, channel_layout="mixed")), bad, False, False)


def test_mixed_training_runs(tiny_files, tmp_path):
    """Trainer on one train set made of the three files (7 channels), val over the union."""
    import yaml
    paths = [tiny_files[p][0] for p in ("poisson", "ad", "helmholtz")]
    np.save(tmp_path / "s.npy", mixed_data.mixed_scales(paths))
    cfg = dict(in_dim=7, out_dim=1, channel_layout="mixed", train_path=paths, val_path=paths,
               scales_path=str(tmp_path / "s.npy"), loss_style="sum", lr=1e-3, max_epochs=1,
               batch_size=5, valid_batch_size=5, num_data_workers=0, seed=0,
               save_checkpoint=True, **TINY_MODEL)
    (tmp_path / "m.yaml").write_text(yaml.safe_dump({"mixed": cfg}))
    summary = Trainer(YParams(str(tmp_path / "m.yaml"), "mixed"), str(tmp_path / "run")).fit()
    assert summary["n_train"] == 15 and math.isfinite(summary["best_val_rel_l2"])


class _P(dict):
    """Minimal params object (attribute + get access) for the loader."""
    __getattr__ = dict.__getitem__
