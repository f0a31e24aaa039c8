"""Spectral operators and solves: manufactured trigonometric solutions, analytic derivatives."""
import numpy as np
import pytest

from utils import spectral as sp

TWO_PI = 2 * np.pi


def grid(n, Lx=1.0, Ly=1.0, dtype=np.float64):
    x = np.arange(n) * (Lx / n)
    y = np.arange(n) * (Ly / n)
    X, Y = np.meshgrid(x, y)           # X varies along the last axis
    return X.astype(dtype), Y.astype(dtype)


def manufactured(n, Lx=1.0, Ly=1.0, dtype=np.float64):
    """u = sin(2pi(2x/Lx + 3y/Ly)) + cos(2pi(5x/Lx - y/Ly)) and its exact derivatives."""
    X, Y = grid(n, Lx, Ly, np.float64)
    a1, b1 = TWO_PI * 2 / Lx, TWO_PI * 3 / Ly
    a2, b2 = TWO_PI * 5 / Lx, -TWO_PI * 1 / Ly
    p1, p2 = a1 * X + b1 * Y, a2 * X + b2 * Y
    d = dict(u=np.sin(p1) + np.cos(p2),
             ux=a1 * np.cos(p1) - a2 * np.sin(p2),
             uy=b1 * np.cos(p1) - b2 * np.sin(p2),
             uxx=-a1 ** 2 * np.sin(p1) - a2 ** 2 * np.cos(p2),
             uyy=-b1 ** 2 * np.sin(p1) - b2 ** 2 * np.cos(p2),
             uxy=-a1 * b1 * np.sin(p1) - a2 * b2 * np.cos(p2))
    return {k: v.astype(dtype) for k, v in d.items()}


def diffusion_f(d, K):
    """-div(K grad u) for constant K = (K11, K22, K12)."""
    return -(K[0] * d["uxx"] + K[1] * d["uyy"] + 2 * K[2] * d["uxy"])


@pytest.mark.parametrize("Lx,Ly", [(1.0, 1.0), (2.0, 0.5)])
def test_derivatives_match_analytic(Lx, Ly):
    d = manufactured(32, Lx, Ly)
    ux, uy = sp.grad(d["u"], Lx, Ly)
    scale = np.abs(d["uxx"]).max()
    assert np.abs(ux - d["ux"]).max() < 1e-12 * scale
    assert np.abs(uy - d["uy"]).max() < 1e-12 * scale
    lap = sp.laplacian(d["u"], Lx, Ly)
    assert np.abs(lap - (d["uxx"] + d["uyy"])).max() < 1e-12 * scale
    dv = sp.div(d["ux"], d["uy"], Lx, Ly)
    assert np.abs(dv - (d["uxx"] + d["uyy"])).max() < 1e-12 * scale


def test_x_is_last_axis():
    """d/dx acts on the last axis: u = sin(2 pi x) has du/dy = 0."""
    X, _ = grid(16)
    ux, uy = sp.grad(np.sin(TWO_PI * X))
    assert np.allclose(ux, TWO_PI * np.cos(TWO_PI * X), atol=1e-12)
    assert np.abs(uy).max() < 1e-12


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_solves_recover_manufactured_solutions(dtype, tol):
    n = 32
    d = manufactured(n, dtype=dtype)
    d64 = manufactured(n)
    K = np.array([[0.03, 0.012, -0.004]])
    v = np.array([[0.3, -0.7]])
    f_p = diffusion_f(d64, K[0])
    f_ad = f_p + v[0, 0] * d64["ux"] + v[0, 1] * d64["uy"]
    t0, om = 0.01, 7.0
    f_h = -t0 * (d64["uxx"] + d64["uyy"]) - om * d64["u"]
    u_true = d64["u"][None]
    for u in (sp.solve_poisson(f_p[None].astype(dtype), K),
              sp.solve_advdiff(f_ad[None].astype(dtype), K, v),
              sp.solve_helmholtz(f_h[None].astype(dtype), np.array([t0]), np.array([om]))):
        assert u.dtype == dtype
        assert np.abs(u - u_true).max() < tol * np.abs(u_true).max()


def test_operators_match_analytic_and_invert_solve():
    d = manufactured(32)
    K = np.array([0.02, 0.05, 0.01])
    v = np.array([-0.4, 0.9])
    t = np.concatenate([K, v])[None]
    f_ad = diffusion_f(d, K) + v[0] * d["ux"] + v[1] * d["uy"]
    Lu = sp.apply_operator("ad", d["u"][None], t)
    assert np.abs(Lu[0] - f_ad).max() < 1e-12 * np.abs(f_ad).max()
    assert sp.residual("ad", f_ad[None], d["u"][None], t)[0] < 1e-12
    # a wrong coefficient is detected by the residual
    assert sp.residual("ad", f_ad[None], d["u"][None], t * 1.01)[0] > 1e-3


def test_batched_solves_use_per_sample_coefficients():
    rng = np.random.default_rng(0)
    f = rng.standard_normal((3, 16, 16))
    K = np.array([[0.01, 0.02, 0.0], [0.05, 0.01, 0.01], [0.02, 0.02, -0.015]])
    u = sp.solve_poisson(f, K)
    for b in range(3):
        assert np.allclose(u[b], sp.solve_poisson(f[b:b + 1], K[b:b + 1])[0], atol=1e-14)
    # the mean is projected out: L u = f - mean(f), and u has zero mean
    r = sp.residual("poisson", f - f.mean(axis=(1, 2), keepdims=True), u, K)
    assert r.max() < 1e-12
    assert np.abs(u.mean(axis=(1, 2))).max() < 1e-14


def test_diffusion_operator_equals_grad_div_composition():
    """-div(K grad u) by the symbol equals grad -> K -> div for a band-limited random u,
    and the symbol is positive off k = 0 (also on the Nyquist lines)."""
    rng = np.random.default_rng(1)
    n = 32
    u_hat = sp.rfft2(rng.standard_normal((2, n, n)))
    u_hat[:, n // 2, :] = 0
    u_hat[:, :, n // 2] = 0          # remove Nyquist content (odd derivatives drop it)
    u = sp.irfft2(u_hat, n)
    K = np.array([[0.02, 0.03, 0.012], [0.05, 0.01, -0.02]])
    ux, uy = sp.grad(u)
    c = [K[:, j, None, None] for j in range(3)]
    composed = -sp.div(c[0] * ux + c[2] * uy, c[2] * ux + c[1] * uy)
    direct = sp.apply_operator("poisson", u, K)
    assert np.abs(composed - direct).max() < 1e-12 * np.abs(direct).max()
    sym = sp.diffusion_symbol(K, sp.wavenumbers(n))
    sym[:, 0, 0] = 1.0
    assert sym.min() > 0


def test_helmholtz_resonant_modes_are_zeroed_in_solution_and_source():
    n = 16
    wk = sp.wavenumbers(n)
    t0 = 3.0 / (TWO_PI ** 2 * 5)          # t0 |k|^2 = 3 exactly for |k|^2 = 5 (modes (1, 2))
    t = np.array([[t0, 3.0]])
    f = np.random.default_rng(2).standard_normal((1, n, n))
    f_hat = sp.rfft2(f)
    u_hat, f_proj = sp.solve_hat(f_hat, sp.helmholtz_symbol(t, wk))
    zero = np.isclose(wk.kx2 + wk.ky2, TWO_PI ** 2 * 5)[None]
    assert zero.sum() > 0
    assert np.all(u_hat[zero] == 0) and np.all(f_proj[zero] == 0)
    assert np.allclose(f_proj[~zero], f_hat[~zero])
    u = sp.irfft2(u_hat, n)
    assert sp.residual("helmholtz", sp.irfft2(f_proj, n), u, t)[0] < 1e-12


def test_wavenumbers_layout():
    wk = sp.wavenumbers(8, Lx=2.0)
    assert wk.kx.shape == (1, 5) and wk.ky.shape == (8, 1)
    assert np.allclose(wk.kx[0], np.pi * np.array([0, 1, 2, 3, 0]))      # Nyquist -> 0
    assert np.allclose(wk.kx2[0], (np.pi * np.array([0, 1, 2, 3, 4])) ** 2)
    assert np.allclose(wk.ky[:, 0], TWO_PI * np.array([0, 1, 2, 3, 0, -3, -2, -1]))
    assert sp.wavenumbers(8, dtype=np.float32).kx.dtype == np.float32
