"""Darcy flow -div(a grad u) = f (DESIGN.md sections 2-4): solver, generated data, loader."""
import hashlib
import os

import h5py
import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as spla

from utils import gen_common, gen_recipes, get_scale, spectral
from utils.errors import DataError
from utils.data_utils import normalize_inputs
from utils.h5io import SplitFile

N_GRID = 32


def generate(datapath, *extra, **sizes):
    s = {**dict(ntrain=64, nval=32, ntest=32), **sizes}
    args = gen_common.build_parser("darcy").parse_args(
        ["--ntrain", str(s["ntrain"]), "--nval", str(s["nval"]), "--ntest", str(s["ntest"]),
         "--n", str(N_GRID), "--ng", "16", "--sparse", "--datapath", str(datapath),
         "--workers", "1", "--chunk_size", "32", *extra])
    return gen_common.run("darcy", args)


def load(path):
    with h5py.File(path, "r") as h:
        return {k: h[k][:] for k in h.keys()}, dict(h.attrs)


@pytest.fixture(scope="module")
def darcy_files(tmp_path_factory):
    return generate(tmp_path_factory.mktemp("darcy"))


# --- the discrete operator and the PCG solve -----------------------------------------------

def grid(n):
    x = np.arange(n) / n
    return np.meshgrid(x, x)        # X varies along the last axis (DESIGN.md section 2)


def smooth_problem(X, Y):
    """a = exp(0.5 sin(2 pi x) sin(2 pi y)), u = sin(2 pi x) cos(4 pi y) + 0.5 cos(2 pi (x + y))
    and f = -div(a grad u), written out by hand."""
    tp = 2 * np.pi
    g = 0.5 * np.sin(tp * X) * np.sin(tp * Y)
    a = np.exp(g)
    ax = a * 0.5 * tp * np.cos(tp * X) * np.sin(tp * Y)
    ay = a * 0.5 * tp * np.sin(tp * X) * np.cos(tp * Y)
    u = np.sin(tp * X) * np.cos(2 * tp * Y) + 0.5 * np.cos(tp * (X + Y))
    ux = tp * np.cos(tp * X) * np.cos(2 * tp * Y) - 0.5 * tp * np.sin(tp * (X + Y))
    uy = -2 * tp * np.sin(tp * X) * np.sin(2 * tp * Y) - 0.5 * tp * np.sin(tp * (X + Y))
    lap = -(tp ** 2 + (2 * tp) ** 2) * np.sin(tp * X) * np.cos(2 * tp * Y) \
        - 0.5 * 2 * tp ** 2 * np.cos(tp * (X + Y))
    return a, u, -(ax * ux + ay * uy + a * lap)


def test_manufactured_solution():
    X, Y = grid(64)
    a, u, f = smooth_problem(X, Y)
    res = spectral.solve_darcy(f[None], a[None])
    assert res.rel_residual[0] <= 1e-10
    np.testing.assert_allclose(res.u[0], u - u.mean(), atol=1e-9 * np.abs(u).max())
    assert spectral.residual("darcy", res.f, res.u, a[None, None])[0] < 1e-9


def fd_solve(a_fn, f_fn, n):
    """Second-order finite-volume solve of -div(a grad u) = f, periodic, zero mean, with a at
    the cell faces: the sparse system bordered by the mean constraint."""
    X, Y = grid(n)
    h = 1.0 / n
    idx = np.arange(n * n).reshape(n, n)
    rows, cols, vals = [], [], []
    diag = np.zeros((n, n))
    for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
        a_face = a_fn(X + dx * h / 2, Y + dy * h / 2) / h ** 2
        rows.append(idx.ravel())
        cols.append(np.roll(idx, (-dy, -dx), axis=(0, 1)).ravel())
        vals.append(-a_face.ravel())
        diag += a_face
    rows += [idx.ravel(), idx.ravel(), np.full(n * n, n * n)]
    cols += [idx.ravel(), np.full(n * n, n * n), idx.ravel()]
    vals += [diag.ravel(), np.ones(n * n), np.ones(n * n)]
    A = sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                      shape=(n * n + 1, n * n + 1))
    f = f_fn(X, Y)
    sol = spla.spsolve(A.tocsc(), np.append(f - f.mean(), 0.0))
    return sol[:-1].reshape(n, n)


def test_finite_difference_solves_converge_to_the_spectral_solution():
    """FD on n, 2n, 4n with the same a(x), f(x): error against the spectral u at the shared
    points falls by ~4 per refinement (second order)."""
    n = 16
    a_fn = lambda X, Y: smooth_problem(X, Y)[0]     # noqa: E731
    f_fn = lambda X, Y: smooth_problem(X, Y)[2]     # noqa: E731
    X, Y = grid(n)
    u = spectral.solve_darcy(f_fn(X, Y)[None], a_fn(X, Y)[None]).u[0]
    errors = [np.abs(fd_solve(a_fn, f_fn, m)[::m // n, ::m // n] - u).max() / np.abs(u).max()
              for m in (n, 2 * n, 4 * n)]
    rates = np.log2(np.array(errors[:-1]) / errors[1:])
    assert errors[-1] < 1e-2 and np.all((rates > 1.8) & (rates < 2.3)), (errors, rates)


def test_no_nyquist_content_and_small_fd_residual():
    """The pitfall: modes on the Nyquist lines cost -div(a grad .) almost nothing; the solve
    must not put content there, and a finite-difference operator must agree with it."""
    X, Y = grid(64)
    rng = np.random.default_rng(0)
    u01 = rng.random((2, 2 * 64 * 33))
    a = np.exp(0.7 * gen_recipes.gaussian_random_field(u01, 64, 3.0, 4.0))
    f = np.exp(-((X - 0.5) ** 2 + (Y - 0.4) ** 2) / (2 * 0.08 ** 2))
    res = spectral.solve_darcy(np.stack([f, f]), a)
    u_hat = np.abs(spectral.rfft2(res.u))
    assert max(u_hat[:, 32].max(), u_hat[:, :, -1].max()) < 1e-12 * u_hat.max()
    # 5-point finite volumes, a on the faces by the arithmetic mean of its two cells
    u = res.u
    fd = sum(-0.5 * (a + np.roll(a, -s, axis=ax)) * (np.roll(u, -s, axis=ax) - u)
             for ax in (1, 2) for s in (1, -1)) * 64 ** 2
    rel = np.abs(fd - res.f).max(axis=(1, 2)) / np.abs(res.f).max(axis=(1, 2))
    assert np.all(rel < 0.05), rel


# --- generated files -----------------------------------------------------------------------

def test_files_format_and_recipe(darcy_files):
    data, attrs = load(darcy_files["train"])
    assert data["fields"].shape == (64, 2, N_GRID, N_GRID) and data["tensor"].shape == (64, 1)
    assert data["coef_field"].shape == (64, 1, N_GRID, N_GRID)
    assert data["coef_field"].dtype == np.float32 and "other" not in data
    assert attrs["pde"] == "darcy" and attrs["tag"] == "s0p5_1" and not attrs["two_phase"]
    s = data["tensor"][:, 0].astype(np.float64)
    assert s.min() >= 0.5 and s.max() <= 1.0 and s.std() > 0.1
    log_a = np.log(data["coef_field"][:, 0].astype(np.float64))
    np.testing.assert_allclose(log_a.std(axis=(1, 2)), s, rtol=1e-5)   # s = std of log a
    np.testing.assert_allclose(log_a.mean(axis=(1, 2)), np.log(0.01), atol=1e-5)
    assert 0 < attrs["max_residual"] <= 1e-9 and attrs["max_cg_iterations"] > 10


def test_stored_float32_data_satisfy_the_pde(darcy_files):
    """Residual recomputed from the stored float32 (f, u, a) in float64; u has no content on
    the Nyquist lines beyond float32 rounding."""
    data, _ = load(darcy_files["test"])
    f, u = data["fields"][:, 0].astype(np.float64), data["fields"][:, 1].astype(np.float64)
    res = spectral.residual("darcy", f, u, data["coef_field"].astype(np.float64))
    assert res.max() < 1e-3, res.max()
    u_hat = np.abs(spectral.rfft2(u))
    nyq = np.maximum(u_hat[:, N_GRID // 2].max(axis=1), u_hat[:, :, -1].max(axis=1))
    assert np.all(nyq < 1e-6 * u_hat.max(axis=(1, 2)))


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_determinism_and_two_phase(darcy_files, tmp_path):
    other = generate(tmp_path, "--workers", "2", "--chunk_size", "64")
    assert all(digest(other[s]) == digest(darcy_files[s]) for s in other)
    d2 = tmp_path / "tp"
    d2.mkdir()
    paths = generate(d2, "--two_phase", "--s1", "1", "--s2", "2", ntrain=32)
    data, attrs = load(paths["train"])
    a, s = data["coef_field"][:, 0].astype(np.float64), data["tensor"][:, 0]
    assert attrs["two_phase"]
    ratio = a / (0.01 * np.exp(s)[:, None, None])    # a in 0.01 {e^-s, e^s}
    low = np.isclose(a * np.exp(s)[:, None, None], 0.01, rtol=1e-6)
    assert np.all(np.isclose(ratio, 1, rtol=1e-6) | low) and 0.2 < low.mean() < 0.8
    assert spectral.residual("darcy", data["fields"][:, 0].astype(np.float64),
                             data["fields"][:, 1].astype(np.float64), a[:, None]).max() < 1e-2


# --- scales and the loader: a is a field input channel ---------------------------------------

def test_scales_and_field_inputs(darcy_files):
    scales = get_scale.compute_scales(darcy_files["train"])
    data, _ = load(darcy_files["train"])
    f, a = data["fields"][:, 0], data["coef_field"]
    assert len(scales) == 5            # [source, a, sol, Lx, Ly]
    np.testing.assert_allclose(scales[1], np.median(np.abs(a.astype(np.float64)).mean(
        axis=(1, 2, 3))))
    with SplitFile(darcy_files["train"]) as sf:
        assert (sf.input_dataset, sf.n_inputs, sf.n_tensor) == ("coef_field", 1, 1)
        fields, coef = sf.read_inputs(slice(0, 4))
    np.testing.assert_array_equal(coef, a[:4])
    mu = 1 / N_GRID ** 2
    x = normalize_inputs(fields[:, 0], coef, scales, mu)
    s = np.sqrt((fields[:, 0].astype(np.float64) ** 2).sum(axis=(1, 2))) * mu / scales[0]
    np.testing.assert_allclose(x[:, 0], fields[:, 0] / s[:, None, None], rtol=1e-6)
    np.testing.assert_allclose(x[:, 1], a[:4, 0] / s[:, None, None] / scales[1], rtol=1e-6)


def test_pretrained_solve_and_predict_take_the_coefficient_field(darcy_files, tmp_path):
    """A Darcy model's solve(f, a) feeds a as a field channel, as the loader does; predict.py
    reads a from the file's coef_field."""
    import torch

    import predict
    from models.fno import FNO2d
    from utils.cli import run_cli
    from utils.pretrained import load_pretrained

    arch = dict(in_dim=2, out_dim=1, layers=[8, 8], modes1=[4], modes2=[4], fc_dim=8,
                dropout=0.0)
    torch.manual_seed(0)
    net = FNO2d(**arch).eval()
    scales = get_scale.compute_scales(darcy_files["train"])
    info = dict(version=1, architecture=arch, pde="darcy", pdes=["darcy"],
                channel_layout="native", channels=["f", "a"], coefficients={"darcy": ["a"]},
                scales=scales.tolist(), grid=[N_GRID, N_GRID])
    path = str(tmp_path / "darcy.pt")
    torch.save(dict(model_state=net.state_dict(), model_info=info), path)
    model = load_pretrained(path, device="cpu")
    data, _ = load(darcy_files["test"])
    f, a = data["fields"][:, 0], data["coef_field"]
    x = normalize_inputs(f, a, scales, 1 / N_GRID ** 2)
    with torch.no_grad():
        ref = net(torch.from_numpy(x))[:, 0].numpy()
    np.testing.assert_allclose(model.solve(f, a), ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(model.solve(f[0], a[0, 0]), ref[0], rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match=r"darcy coefficients must be \(32, 1, 32, 32\)"):
        model.solve(f, data["tensor"])             # the drawn s is not the input
    out = tmp_path / "pred.h5"
    run_cli(predict.main, ["--weights", path, "--input", darcy_files["test"], "--out", str(out)])
    with h5py.File(out) as h:
        np.testing.assert_allclose(h["prediction"][:], ref, rtol=1e-5, atol=1e-6)


def test_run_gen_data_makes_darcy_through_the_registry(tmp_path):
    """PDES=darcy and DARCY_RANGES: the script asks the registry for the generator, its flags
    and the range variable (alias spelled in any case)."""
    import subprocess
    import sys

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, DATA_DIR=str(tmp_path), N="32", NG="16", NTRAIN="32", NVAL="32",
               NTEST="32", PDES="Darcy", DARCY_RANGES="0.25,0.5", WORKERS="1",
               PYTHON=sys.executable)
    out = subprocess.run(["bash", "run_gen_data.sh"], cwd=repo, env=env, capture_output=True,
                         text=True)
    assert out.returncode == 0, out.stderr
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"darcy_{s}_s0p25_0p5.h5" for s in ("train", "val", "test")]
        + ["darcy_train_s0p25_0p5_scales.npy"])
    assert np.load(tmp_path / "darcy_train_s0p25_0p5_scales.npy").shape == (5,)


def test_darcy_has_no_mixed_layout(darcy_files):
    from utils.mixed_data import coefficient_map

    with pytest.raises(DataError, match="darcy has no mixed-physics layout"):
        coefficient_map(darcy_files["train"], 1, "darcy")


def test_bad_range_is_one_clear_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gen_common.main("darcy", ["--s1", "0", "--datapath", str(tmp_path)])
    err = capsys.readouterr().err.strip().splitlines()
    assert e.value.code == 2 and err[-1] == ("error: --s1 must be positive: it is the standard "
                                             "deviation of log a (got 0)")
    assert os.listdir(tmp_path) == []


def test_split_cache_keeps_the_coefficient_field(darcy_files):
    """A long-lived sweep worker caches whole splits (data_utils.SplitCache): for a Darcy file
    the cached inputs are the coef_field channels, equal to the file's."""
    from utils.data_utils import SplitCache
    cache = SplitCache(max_bytes=1 << 30)
    with SplitFile(darcy_files["train"]) as sf:
        want = sf.read_inputs(np.array([1, 5, 9]))
        entry = cache.split(darcy_files["train"], sf)
    assert entry is not sf and cache.misses == 1
    got = entry.read_inputs(np.array([1, 5, 9]))
    assert got[1].shape == (3, 1, N_GRID, N_GRID)
    for g, w in zip(got, want):
        np.testing.assert_array_equal(g, w)
