"""Data layer: per-instance normalisation, subsampling, ordering, sharding, errors."""

import h5py
import numpy as np
import pytest
import torch

from tests.helpers import poisson_samples, write_poisson_set, write_split
from utils.data_utils import (DataError, PDEDataset, ShardSampler, TrainSampler,
                              effective_batch_size, get_data_loader, load_scales, subset_hash,
                              training_rows)


class P(dict):
    """Minimal params object (attribute access + get), like YParams."""
    __getattr__ = dict.__getitem__


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return write_poisson_set(str(root), n=16, sizes=(40, 13, 8))


def params_for(data, **kw):
    p = P(in_dim=4, batch_size=8, valid_batch_size=4, num_data_workers=0, seed=0, subsample=1, **data)
    p.update(kw)
    return p


def reference_inputs(path, scales, rows):
    """DESIGN.md section 5 written out per sample, independently of the library code."""
    with h5py.File(path) as f:
        fields, tensor = f["fields"][:], f["tensor"][:]
    scales = np.where(scales == 0, 1, scales)
    n = fields.shape[-1]
    out = []
    for r in rows:
        f0 = fields[r, 0].astype(np.float64)
        x = np.concatenate([f0[None], np.broadcast_to(tensor[r][:, None, None], (3, n, n))])
        s = np.linalg.norm(f0) * (scales[-2] / n) * (scales[-1] / n) / scales[0]
        x = x / s
        x[1:] /= scales[1:4, None, None]
        out.append(x)
    return np.stack(out), fields[rows][:, 1:2]


def test_normalisation_matches_design(data):
    ds = PDEDataset(params_for(data), data["train_path"], train=True)
    rows = [5, 0, 17, 3]  # unsorted: exercises the HDF5 point selection and reordering
    x, y = ds[rows]
    ref_x, ref_y = reference_inputs(data["train_path"], np.load(data["scales_path"]), rows)
    assert x.shape == (4, 4, 16, 16) and x.dtype == torch.float32
    np.testing.assert_allclose(x.numpy(), ref_x, rtol=2e-6, atol=1e-7)
    np.testing.assert_array_equal(y.numpy(), ref_y)
    x1, y1 = ds[17]
    np.testing.assert_array_equal(x1.numpy(), x[2].numpy())


def test_scaling_f_and_coefficients_leaves_input_unchanged(data, tmp_path):
    """DESIGN.md 5: scaling f and every coefficient by c leaves u, hence the input, unchanged."""
    with h5py.File(data["train_path"]) as f:
        fields, tensor = f["fields"][:], f["tensor"][:]
    c = np.linspace(0.1, 30.0, len(fields)).astype(np.float32)
    scaled = fields.copy()
    scaled[:, 0] *= c[:, None, None]
    path = str(tmp_path / "scaled.h5")
    write_split(path, scaled, tensor * c[:, None])
    a = PDEDataset(params_for(data), data["train_path"], train=True)[list(range(40))][0]
    b = PDEDataset(params_for(data), path, train=False)[list(range(40))][0]
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-5, atol=1e-6)


def test_zero_scale_read_as_one_and_length_checked(data, tmp_path):
    s = np.load(data["scales_path"]).copy()
    s[3] = 0.0
    p = str(tmp_path / "s.npy")
    np.save(p, s)
    assert load_scales(p, 3)[3] == 1.0
    with pytest.raises(DataError, match="has 7 entries, expected 8"):
        load_scales(p, 4)


def test_subsample_in_memory_and_lazy_agree(data):
    lazy = PDEDataset(params_for(data, subsample=3), data["train_path"], train=True)
    mem = PDEDataset(params_for(data, subsample=3, in_memory=True), data["train_path"], train=True)
    assert len(lazy) == len(mem) == 40 // 3
    idx = [12, 0, 7, 1]
    xl, yl = lazy[idx]
    xm, ym = mem[idx]
    assert torch.equal(xl, xm) and torch.equal(yl, ym)
    with h5py.File(data["train_path"]) as f:
        np.testing.assert_array_equal(yl[:, 0].numpy(), f["fields"][[0, 3, 21, 36], 1][[3, 0, 2, 1]])
    val = PDEDataset(params_for(data, subsample=3), data["val_path"], train=False)
    assert len(val) == 13  # validation/test never subsampled


def test_random_subsets_nested_and_shared_by_approaches(data, tmp_path):
    """n_train: for one seed the subsets grow by appending (nested), every approach of a seed
    and n trains on the same rows, other seeds differ, val/test never depend on the seed."""
    sizes = (4, 8, 16, 32, 40)
    for seed in (0, 1):
        rows = [training_rows(P(n_train=n, seed=seed), 40) for n in sizes]
        for small, big in zip(rows, rows[1:]):
            assert set(small) < set(big)
        assert np.array_equal(rows[-1], np.arange(40))
        assert all(np.array_equal(r, np.sort(r)) and len(r) == n for r, n in zip(rows, sizes))
    assert set(training_rows(P(n_train=8, seed=0), 40)) != set(training_rows(P(n_train=8, seed=1), 40))
    # the subset is no strided prefix: it spans the file
    assert training_rows(P(n_train=8, seed=0), 40).max() > 8

    # fine-tuned (pre-training scales) and from scratch (own scales): same rows, same samples
    other_scales = str(tmp_path / "other_scales.npy")
    np.save(other_scales, 2 * np.load(data["scales_path"]))
    ft = PDEDataset(params_for(data, n_train=8, seed=3, lr=1e-3, pretrained="w.tar"),
                    data["train_path"], train=True)
    sc = PDEDataset(params_for(data, n_train=8, seed=3, lr=3e-3, scales_path=other_scales),
                    data["train_path"], train=True)
    assert np.array_equal(ft.rows, sc.rows) and ft.subset_hash == sc.subset_hash
    assert ft.subset_hash == subset_hash(training_rows(P(n_train=8, seed=3), 40))
    assert len(ft) == 8
    with h5py.File(data["train_path"]) as f:
        expect = f["fields"][np.sort(ft.rows), 1]
    _, y_ft = ft[list(range(8))]
    _, y_sc = sc[list(range(8))]
    assert torch.equal(y_ft, y_sc)
    np.testing.assert_array_equal(y_ft[:, 0].numpy(), expect)
    # in memory and lazy read the same random rows; any batch order
    mem = PDEDataset(params_for(data, n_train=8, seed=3, in_memory=True), data["train_path"], True)
    idx = [5, 0, 7, 2]
    assert all(torch.equal(a, b) for a, b in zip(ft[idx], mem[idx]))
    # validation and test: every sample, whatever the seed and n_train
    for seed in (0, 3):
        val = PDEDataset(params_for(data, n_train=4, seed=seed), data["val_path"], train=False)
        assert len(val) == 13 and np.array_equal(val.rows, np.arange(13))


def test_published_subsample_path_unchanged(data):
    """subsample: k keeps rows 0, k, 2k, ... (N // k of them) whatever the seed."""
    for seed in (0, 5):
        ds = PDEDataset(params_for(data, subsample=4, seed=seed), data["train_path"], train=True)
        assert np.array_equal(ds.rows, np.arange(10) * 4)
        with h5py.File(data["train_path"]) as f:
            expect = f["fields"][::4, 1][:10]
        np.testing.assert_array_equal(ds[list(range(10))][1][:, 0].numpy(), expect)
    assert np.array_equal(training_rows(P(), 40), np.arange(40))
    with pytest.raises(DataError, match="either n_train .* or subsample"):
        training_rows(P(n_train=8, subsample=2), 40)
    with pytest.raises(DataError, match="more than the 40"):
        PDEDataset(params_for(data, n_train=41), data["train_path"], train=True)
    for bad in ({"n_train": 0}, {"n_train": 2.5}, {"n_train": "8"}, {"n_train": 4, "seed": -1},
                {"subsample": 0}):
        with pytest.raises(DataError, match="must be an integer"):
            training_rows(P(**bad), 40)


def test_train_order_one_process_equals_ranks():
    """Batch i of one process (batch B) = union of batch i of W ranks (batch B/W each)."""
    ds = list(range(37))
    B = 8
    for epoch in (1, 2):
        one = TrainSampler(ds, 1, 0, seed=5)
        one.set_epoch(epoch)
        i1 = list(one)
        ranks = []
        for r in range(2):
            s = TrainSampler(ds, 2, r, seed=5)
            s.set_epoch(epoch)
            ranks.append(list(s))
        n_batches = len(i1) // B
        assert n_batches == min(len(x) for x in ranks) // (B // 2) == 37 // B
        for i in range(n_batches):
            union = ranks[0][i * 4:(i + 1) * 4] + ranks[1][i * 4:(i + 1) * 4]
            assert sorted(i1[i * B:(i + 1) * B]) == sorted(union)
    e1, e2 = TrainSampler(ds, 1, 0, 5), TrainSampler(ds, 1, 0, 5)
    e1.set_epoch(1)
    e2.set_epoch(2)
    assert list(e1) != list(e2)  # reshuffled every epoch
    e2.set_epoch(1)
    e2.set_start(8)
    assert list(e2) == list(e1)[8:] and len(e2) == len(e1) - 8  # mid-epoch resume


def test_shards_cover_every_sample_once():
    for n in (1, 7, 13, 16):
        for w in (1, 2, 3):
            got = sorted(i for r in range(w) for i in ShardSampler(n, r, w))
            assert got == list(range(n))


def test_loader_batches_and_workers(data):
    p = params_for(data, batch_size=100)
    loader, ds, sampler = get_data_loader(p, data["train_path"], False, train=True)
    assert loader.batch_size == 40  # never larger than the training set
    assert effective_batch_size(8, 40, 3) == 6
    p = params_for(data, batch_size=8)
    loader, ds, sampler = get_data_loader(p, data["train_path"], False, train=True)
    sampler.set_epoch(3)
    serial = [b for b in loader]
    assert len(serial) == 5 and all(x.shape == (8, 4, 16, 16) for x, _ in serial)
    p_workers = params_for(data, batch_size=8, num_data_workers=2)
    loader_w, _, sampler_w = get_data_loader(p_workers, data["train_path"], False, train=True)
    sampler_w.set_epoch(3)
    for (xa, ya), (xb, yb) in zip(serial, loader_w):  # fork-safe lazy HDF5 in workers
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    vloader, vds, _ = get_data_loader(p, data["val_path"], False, train=False)
    sizes = [x.shape[0] for x, _ in vloader]
    assert sum(sizes) == 13 and sizes[-1] == 1  # no drop, no padding


def test_other_resolution_normalised_consistently(tmp_path, data):
    """A test file at 2n gets (nearly) the same inputs as the same functions at n."""
    f32, t32 = poisson_samples(6, 32, seed=123)
    f64, t64 = poisson_samples(6, 64, seed=123)  # same random functions, finer grid
    write_split(str(tmp_path / "a.h5"), f32, t32)
    write_split(str(tmp_path / "b.h5"), f64, t64)
    p = params_for(data, train_path=str(tmp_path / "a.h5"))  # scales' reference grid: 32x32
    xa = PDEDataset(p, str(tmp_path / "a.h5"), train=False)[list(range(6))][0]
    xb = PDEDataset(p, str(tmp_path / "b.h5"), train=False)[list(range(6))][0]
    np.testing.assert_allclose(xb[:, 1:, 0, 0].numpy(), xa[:, 1:, 0, 0].numpy(), rtol=0.02)
    np.testing.assert_allclose(xb[:, 0, ::2, ::2].numpy(), xa[:, 0].numpy(), rtol=0.02,
                               atol=0.02 * float(xa[:, 0].abs().max()))


def test_clear_errors(data, tmp_path):
    with pytest.raises(DataError, match="in_dim = 6"):
        PDEDataset(params_for(data, in_dim=6), data["train_path"], train=True)
    with pytest.raises(DataError, match="not found"):
        PDEDataset(params_for(data), str(tmp_path / "missing.h5"), train=True)
    bad = str(tmp_path / "bad.h5")
    with h5py.File(bad, "w") as f:
        f.create_dataset("solution", data=np.zeros((2, 4, 4)))
    with pytest.raises(DataError, match=r"no dataset 'fields' \(found: solution\)"):
        PDEDataset(params_for(data), bad, train=True)
    with pytest.raises(DataError, match="scales file not found"):
        PDEDataset(params_for(data, scales_path=str(tmp_path / "no.npy")), data["train_path"], True)
    with pytest.raises(DataError, match="keeps none"):
        PDEDataset(params_for(data, subsample=100), data["train_path"], train=True)
