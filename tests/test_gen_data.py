"""Generated datasets: format, physics, recipe, determinism, and every user error."""
import hashlib
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from utils import gen_common, gen_pool, gen_recipes, sampling, spectral
from utils.h5io import DataError, dataset_path, scales_path

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N_GRID = 64
SIZES = dict(ntrain=64, nval=32, ntest=32)
RANGES = {"poisson": ("--e1", "1", "--e2", "5"), "ad": ("--adr1", "0.2", "--adr2", "1"),
          "helmholtz": ("--o1", "1", "--o2", "10")}
LOHI = {"poisson": (1, 5), "ad": (0.2, 1), "helmholtz": (1, 10)}
K_COLS = {"poisson": 3, "ad": 5, "helmholtz": 2}


def argv(datapath, pde, *extra, **sizes):
    s = dict(SIZES, **sizes)
    return ["--ntrain", str(s["ntrain"]), "--nval", str(s["nval"]), "--ntest", str(s["ntest"]),
            "--n", str(N_GRID), "--sparse", "--datapath", str(datapath), "--workers", "1",
            "--chunk_size", "32", *RANGES[pde], *extra]


def generate(datapath, pde, *extra, **sizes):
    args = gen_common.build_parser(pde).parse_args(argv(datapath, pde, *extra, **sizes))
    return gen_common.run(pde, args)


def load(path):
    with h5py.File(path, "r") as h:
        return ({k: h[k][:] for k in h.keys()}, dict(h.attrs),
                {k: h[k].chunks for k in h.keys()})


def digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    return {pde: generate(root, pde) for pde in ("poisson", "ad", "helmholtz")}


# --- format ----------------------------------------------------------------------------------

@pytest.mark.parametrize("pde", ["poisson", "ad", "helmholtz"])
def test_files_shapes_dtypes_attrs_and_names(datasets, pde):
    paths = datasets[pde]
    lo, hi = LOHI[pde]
    for split, path in paths.items():
        assert path == dataset_path(os.path.dirname(path), pde, split, lo, hi)
        data, attrs, chunks = load(path)
        N = SIZES[f"n{split}"]
        assert data["fields"].shape == (N, 2, N_GRID, N_GRID)
        assert data["fields"].dtype == np.float32 and data["tensor"].dtype == np.float32
        assert data["tensor"].shape == (N, K_COLS[pde])
        assert chunks["fields"] == (1, 2, N_GRID, N_GRID)
        assert ("other" in data) == (pde == "ad")
        if pde == "ad":
            assert data["other"].shape == (N, 1) and data["other"].dtype == np.float32
        assert attrs["pde"] == pde and attrs["split"] == split
        assert attrs["n"] == N_GRID and attrs["ng"] == 144 and attrs["sparse"]
        assert attrs["sigma"] == 1 / 32 and attrs["seed"] == 0 and attrs["num_samples"] == N
        assert list(attrs["coef_range"]) == [lo, hi]
        assert attrs["generator_version"] == gen_pool.GENERATOR_VERSION
        assert 0 < attrs["max_residual"] <= gen_pool.RESIDUAL_TOL
        assert attrs["residual_checked"] >= N // gen_pool.RESIDUAL_STRIDE
    assert os.path.basename(paths["val"]) == {"poisson": "poisson_val_k1_5.h5",
                                              "ad": "ad_val_adr0p2_1.h5",
                                              "helmholtz": "helmholtz_val_o1_10.h5"}[pde]


def test_name_helpers():
    assert dataset_path("d", "ad", "val", 0.2, 1) == os.path.join("d", "ad_val_adr0p2_1.h5")
    assert dataset_path("d", "poisson", "train", 2.5, 7.5) == os.path.join(
        "d", "poisson_train_k2p5_7p5.h5")
    assert scales_path("d", "helmholtz", 1, 10) == os.path.join(
        "d", "helmholtz_train_o1_10_scales.npy")
    with pytest.raises(DataError):
        dataset_path("d", "heat", "train", 1, 2)


# --- physics and recipe ----------------------------------------------------------------------

def physical_residual(pde, f, u, t):
    """max|L u - f| / max|f| with L built from grad/div/laplacian (independent of the solve's
    symbols), in float64 from the stored float32 data."""
    c = [t[:, j, None, None] for j in range(t.shape[1])]
    if pde == "helmholtz":
        Lu = -c[0] * spectral.laplacian(u) - c[1] * u
    else:
        ux, uy = spectral.grad(u)
        Lu = -spectral.div(c[0] * ux + c[2] * uy, c[2] * ux + c[1] * uy)
        if pde == "ad":
            Lu = Lu + c[3] * ux + c[4] * uy
    return (np.abs(Lu - f).max(axis=(1, 2)) / np.abs(f).max(axis=(1, 2))).max()


@pytest.mark.parametrize("pde", ["poisson", "ad", "helmholtz"])
def test_stored_data_satisfy_the_pde(datasets, pde):
    data, _, _ = load(datasets[pde]["train"])
    f, u = data["fields"][:, 0].astype(np.float64), data["fields"][:, 1].astype(np.float64)
    t = data["tensor"].astype(np.float64)
    # float32 storage: the operator amplifies the 6e-8 rounding of u at high wavenumbers
    assert physical_residual(pde, f, u, t) < 5e-4
    # the same data with a perturbed coefficient clearly fails
    assert physical_residual(pde, f, u, t * np.r_[1.05, np.ones(t.shape[1] - 1)]) > 1e-2
    if pde != "helmholtz":
        assert np.abs(f.mean(axis=(1, 2))).max() < 1e-6
        assert np.abs(u.mean(axis=(1, 2))).max() < 1e-6
    else:
        assert np.allclose(f.max(axis=(1, 2)), 1.0, atol=1e-6)   # normalised, not centred


def eig_K(t):
    K = np.stack([np.stack([t[:, 0], t[:, 2]], -1), np.stack([t[:, 2], t[:, 1]], -1)], -2)
    return np.linalg.eigvalsh(K.astype(np.float64))


def test_poisson_coefficients_follow_the_recipe(datasets):
    t = load(datasets["poisson"]["train"])[0]["tensor"]
    ev = eig_K(t)
    assert np.allclose(ev[:, 0], 0.01, rtol=1e-5)
    e = ev[:, 1] / ev[:, 0]
    assert e.min() >= 1 - 1e-5 and e.max() <= 5 + 1e-5
    assert e.max() - e.min() > 2           # actually spread over the range


def test_ad_coefficients_and_achieved_ratio(datasets):
    data, attrs, _ = load(datasets["ad"]["train"])
    t = data["tensor"].astype(np.float64)
    lam = np.hypot(t[:, 3], t[:, 4])                  # stored v = lam * unit vector
    assert lam.min() > 0 and lam.max() < 1
    ev = eig_K(t) / (1 - lam)[:, None]                 # stored K = (1 - lam) K0
    assert np.allclose(ev[:, 0], 0.01, rtol=1e-4)
    e = ev[:, 1] / ev[:, 0]
    assert e.min() >= 1 - 1e-4 and e.max() <= 5 + 1e-4
    ratio = data["other"][:, 0]
    assert ratio.min() >= 0.2 * (1 - 1e-3) and ratio.max() <= 1 * (1 + 1e-3)
    # the stored ratio is ||v . grad u|| / ||div(K grad u)|| of the stored data
    u = data["fields"][:, 1].astype(np.float64)
    ux, uy = spectral.grad(u)
    c = [t[:, j, None, None] for j in range(5)]
    adv = np.linalg.norm(c[3] * ux + c[4] * uy, axis=(1, 2))
    dif = np.linalg.norm(spectral.div(c[0] * ux + c[2] * uy, c[2] * ux + c[1] * uy), axis=(1, 2))
    assert np.allclose(adv / dif, ratio, rtol=1e-4)
    assert attrs["max_ratio_rel_error"] < 1e-6


def test_helmholtz_coefficients_and_rejection(datasets, tmp_path, monkeypatch):
    monkeypatch.setattr(gen_recipes, "HELMHOLTZ_MAX_ATTEMPTS", 50)
    (tmp_path / "x").mkdir()
    data, attrs, _ = load(datasets["helmholtz"]["train"])
    t = data["tensor"]
    assert np.all(t[:, 0] == np.float32(0.01))
    om = t[:, 1]
    assert np.all(om == np.round(om)) and om.min() >= 1 and om.max() <= 10
    assert len(np.unique(om)) >= 6
    assert np.abs(data["fields"][:, 1]).max() <= 2
    # near-resonant omega = 4 (0.01 (2 pi)^2 |k|^2 = 3.95 for |k|^2 = 10): most draws are
    # rejected, the kept ones are bounded; omega = 2 (3.95 / 2 ~ 1.97) never passes: clear error
    p = generate(tmp_path, "helmholtz", "--o1", "4", "--o2", "4", ntrain=32, nval=32, ntest=32)
    d2, a2, _ = load(p["train"])
    assert a2["redraws"] > 32 and np.abs(d2["fields"][:, 1]).max() <= 2
    assert np.all(d2["tensor"][:, 1] == 4)
    with pytest.raises(DataError, match="no sample with max"):
        generate(tmp_path / "x", "helmholtz", "--o1", "2", "--o2", "2", ntrain=32)


def test_sparsity_recipe():
    ng, B = 144, 4000
    key = sampling.dataset_key(0, "test")
    u = sampling.uniforms(key, np.arange(B), 0, sampling.draws_per_attempt(ng))
    assert u.min() >= 0 and u.max() < 1 and abs(u.mean() - 0.5) < 0.01
    for vf in sampling.VF_VALUES:
        A = sampling.amplitudes(u, np.full(B, vf), ng, sparse=True)
        active = (A > 0).reshape(B, -1)
        assert abs(active.mean() - (1 - vf)) < 0.01
        assert active.any(axis=1).all()
        assert A[A > 0].min() >= sampling.AMP_MIN and A.max() <= sampling.AMP_MAX
    assert (sampling.amplitudes(u, np.full(B, 0.8), ng, sparse=False) > 0).all()
    # at least one Gaussian even when all draws say "off"
    A = sampling.amplitudes(np.zeros((3, 2 * ng + 2)) + 0.5, np.full(3, 0.99), ng, True)
    assert ((A > 0).reshape(3, -1).sum(axis=1) == 1).all()
    labels = sampling.vf_labels(10, np.random.default_rng(0))
    counts = [np.sum(labels == v) for v in sampling.VF_VALUES]
    assert sorted(counts) == [2, 2, 3, 3]
    labels = sampling.vf_labels(400, np.random.default_rng(0))
    assert not np.all(np.diff(labels) >= 0)           # shuffled, not sorted by vf


def test_lattice_sources_and_their_exact_spectrum():
    n, ng = 64, 144
    G = sampling.lattice_factors(n, ng)
    m = 12
    centres = 0.5 + (np.arange(m) - 5.5) / 16
    assert np.allclose(centres[[0, -1]], [0.15625, 0.84375])
    A = np.zeros((1, m, m))
    A[0, 3, 7] = 0.5                   # y centre 3, x centre 7
    f = sampling.gaussian_sources(A, G)
    f_hat = sampling.gaussian_sources_hat(A, sampling.lattice_factors_hat(G))
    X, Y = np.meshgrid(np.arange(n) / n, np.arange(n) / n)
    ref = 0.5 * np.exp(-((X - centres[7]) ** 2 + (Y - centres[3]) ** 2) / (2 / 32 ** 2))
    assert np.allclose(f[0], ref, atol=1e-14)
    assert np.allclose(f_hat, spectral.rfft2(f), atol=1e-11)


# --- determinism -----------------------------------------------------------------------------

def test_determinism_across_workers_and_chunk_sizes(tmp_path, datasets):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    base = dict(ntrain=96, nval=32, ntest=32)
    pa = generate(a, "helmholtz", "--workers", "1", "--chunk_size", "32", **base)
    pb = generate(b, "helmholtz", "--workers", "2", "--chunk_size", "64", **base)
    for split in pa:
        assert digest(pa[split]) == digest(pb[split])      # bit-identical files
    pc = generate(tmp_path, "ad", "--workers", "2", "--chunk_size", "32")
    for split in pc:                                     # vs the fixture (1 worker, 32)
        assert digest(pc[split]) == digest(datasets["ad"][split])


def test_splits_and_seeds_differ(datasets, tmp_path):
    tr, va = (load(datasets["poisson"][s])[0] for s in ("train", "val"))
    assert not np.allclose(tr["fields"][:32], va["fields"])
    assert not np.allclose(tr["tensor"][:32], va["tensor"])
    other = load(generate(tmp_path, "poisson", "--seed", "1")["val"])[0]
    assert not np.allclose(other["fields"], va["fields"])


# --- safety and user errors ------------------------------------------------------------------

def test_no_overwrite_without_flag_and_overwrite_with_it(tmp_path):
    paths = generate(tmp_path, "poisson", ntrain=32, nval=32, ntest=32)
    before = {s: digest(p) for s, p in paths.items()}
    with pytest.raises(DataError, match="exists"):
        generate(tmp_path, "poisson", "--seed", "3", ntrain=32, nval=32, ntest=32)
    assert before == {s: digest(p) for s, p in paths.items()}
    generate(tmp_path, "poisson", "--seed", "3", "--overwrite", ntrain=32, nval=32, ntest=32)
    assert before["train"] != digest(paths["train"])
    assert sorted(os.listdir(tmp_path)) == sorted(os.path.basename(p) for p in paths.values())


def test_failure_mid_run_leaves_no_file(tmp_path, monkeypatch):
    calls = []

    def failing(*args):
        calls.append(1)
        if len(calls) == 2:
            raise DataError("boom")
        return real(*args)
    real = gen_pool.generate_chunk
    monkeypatch.setattr(gen_pool, "generate_chunk", failing)
    with pytest.raises(DataError, match="boom"):
        generate(tmp_path, "poisson", ntrain=64)
    assert os.listdir(tmp_path) == []                   # no final file, no temporary left


@pytest.mark.parametrize("name,msg", [("RESIDUAL_TOL", "residual"),
                                      ("FLOAT32_TOL", "float32 solution deviates")])
def test_checks_stop_the_run(tmp_path, monkeypatch, name, msg):
    monkeypatch.setattr(gen_pool, name, 1e-16)      # a solution this exact cannot exist
    with pytest.raises(DataError, match=msg):
        generate(tmp_path, "poisson", ntrain=32, nval=32, ntest=32)
    assert os.listdir(tmp_path) == []


def run_main(pde, args, capsys):
    with pytest.raises(SystemExit) as e:
        gen_common.main(pde, args)
    err = capsys.readouterr().err.strip()
    return e.value.code, err


BAD = [
    ("poisson", ["--e1", "5", "--e2", "1"], "must not exceed"),
    ("poisson", ["--e1", "0"], "positive"),
    ("poisson", ["--ntrain", "0"], "--ntrain must be positive"),
    ("poisson", ["--nval", "-3"], "--nval must be positive"),
    ("ad", ["--ntest", "0"], "--ntest must be positive"),
    ("poisson", ["--n", "63"], "--n must be even"),
    ("poisson", ["--n", "16"], "--n must be even and >="),
    ("helmholtz", ["--ng", "140"], "perfect square"),
    ("ad", ["--adr1", "0", "--adr2", "1"], "ratio range must be positive"),
    ("ad", ["--adr1", "2", "--adr2", "1"], "must not exceed"),
    ("helmholtz", ["--o1", "10", "--o2", "1"], "must not exceed"),
    ("poisson", ["--workers", "0"], "--workers"),
    ("poisson", ["--chunk_size", "48"], "multiple of"),
]


@pytest.mark.parametrize("pde,extra,msg", BAD)
def test_bad_arguments_give_one_clear_line(tmp_path, capsys, pde, extra, msg):
    (tmp_path / "keep.h5").write_bytes(b"precious")
    code, err = run_main(pde, argv(tmp_path, pde) + extra, capsys)
    assert code == 2
    assert err.startswith("error: ") and msg in err and len(err.splitlines()) == 1
    assert os.listdir(tmp_path) == ["keep.h5"]
    assert (tmp_path / "keep.h5").read_bytes() == b"precious"


def test_bad_paths_and_existing_outputs(tmp_path, capsys):
    code, err = run_main("poisson", argv(tmp_path / "missing", "poisson"), capsys)
    assert code == 2 and "not an existing directory" in err
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):                 # (root can write anyway)
            code, err = run_main("poisson", argv(ro, "poisson"), capsys)
            assert code == 2 and "not writable" in err
    finally:
        ro.chmod(0o700)
    existing = dataset_path(str(tmp_path), "poisson", "test", 1, 5)
    open(existing, "wb").write(b"old")
    code, err = run_main("poisson", argv(tmp_path, "poisson"), capsys)
    assert code == 2 and "exists" in err and "--overwrite" in err
    assert open(existing, "rb").read() == b"old"
    assert sorted(os.listdir(tmp_path)) == sorted(["ro", os.path.basename(existing)])


def test_scripts_run_standalone(tmp_path):
    for script in ("gen_data_poisson.py", "gen_data_advdiff.py", "gen_data_helmholtz.py"):
        out = subprocess.run([sys.executable, os.path.join("utils", script), "--help"],
                             cwd=REPO, capture_output=True, text=True)
        assert out.returncode == 0 and "--ntrain" in out.stdout and "--chunk_size" in out.stdout
    out = subprocess.run([sys.executable, "utils/gen_data_advdiff.py", "--datapath",
                          str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.strip().startswith("error: ")


def test_run_gen_data_script_is_idempotent(tmp_path):
    env = dict(os.environ, DATA_DIR=str(tmp_path / "d"), N="32", NTRAIN="32", NVAL="32",
               NTEST="32", PDES="poisson helmholtz", POISSON_RANGES="1,5 2.5,7.5",
               HELM_RANGES="1,10", WORKERS="1", PYTHON=sys.executable)
    first = subprocess.run(["bash", "run_gen_data.sh"], cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert first.returncode == 0, first.stderr
    names = sorted(os.listdir(tmp_path / "d"))
    assert names == sorted(
        [f"poisson_{s}_{t}.h5" for s in ("train", "val", "test") for t in ("k1_5", "k2p5_7p5")]
        + ["poisson_train_k1_5_scales.npy", "poisson_train_k2p5_7p5_scales.npy"]
        + [f"helmholtz_{s}_o1_10.h5" for s in ("train", "val", "test")]
        + ["helmholtz_train_o1_10_scales.npy"])
    stamps = {n: os.stat(tmp_path / "d" / n).st_mtime_ns for n in names}
    again = subprocess.run(["bash", "run_gen_data.sh"], cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "skipping" in again.stdout
    assert stamps == {n: os.stat(tmp_path / "d" / n).st_mtime_ns for n in names}
