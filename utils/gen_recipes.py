"""Sample recipes of the generators (DESIGN.md section 3): one block of positions at a time.

A recipe `block(cfg, key, pos, vf) -> Block` computes the samples at the stored positions
`pos` (B,) of a split, vectorised over the block: it draws the source and the coefficients
from the counter-based streams of utils/sampling.py (so a sample does not depend on the block
or worker that computes it), solves in float64 (utils/spectral.py) and returns the stored
float32 fields with the float64 solution spectrum that utils/gen_pool.py checks against the
PDE. The registry (utils/pdes.py) names the recipe of each PDE.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from utils import pdes, sampling, spectral
from utils.errors import DataError

RATIO_RTOL = 1e-3           # AD: achieved ratio vs target, relative
HELMHOLTZ_MAX_ATTEMPTS = 1000


@dataclass(frozen=True)
class GenConfig:
    """Everything a worker needs to generate samples of one dataset (picklable)."""
    pde: str
    n: int
    ng: int
    sparse: bool
    lo: float
    hi: float
    L: float = 1.0
    switches: frozenset = frozenset()   # the PDE's boolean generator flags that are on


class Block(NamedTuple):
    """Samples of one block: f, u (B, n, n) (u float32, the stored values), u_hat (B, n,
    n//2+1) float64 spectrum of the float64 solution, tensor (B, k), other (B,) or None,
    stats (dict of summaries: 'max_*' merge by maximum, others by sum), field (B, c, n, n)
    coefficient fields or None."""
    f: np.ndarray
    u: np.ndarray
    u_hat: np.ndarray
    tensor: np.ndarray
    other: np.ndarray | None = None
    stats: dict = {}
    field: np.ndarray | None = None


# --- per-process caches of grid quantities --------------------------------------------------

@functools.lru_cache(maxsize=4)
def _grid(n: int, ng: int, L: float):
    """(G, (Gy_hat, Gx_hat), wavenumbers, rfft Parseval weights (1, n//2+1))."""
    G = sampling.lattice_factors(n, ng, sampling.SIGMA, L)
    wk = spectral.wavenumbers(n, L, L)
    w = np.full((1, n // 2 + 1), 2.0)
    w[0, 0] = 1.0
    if n % 2 == 0:
        w[0, -1] = 1.0
    return G, sampling.lattice_factors_hat(G), wk, w


# --- the recipes, one block of positions at a time -------------------------------------------

def _draw(cfg: GenConfig, key: int, pos: np.ndarray, vf: np.ndarray, attempt: np.ndarray):
    """Sources for positions pos (B,) at the given attempts (B,).

    Returns (f (B, n, n) normalised to max 1, f_hat = rfft2(f), coefficient draws (B, 6)).
    """
    G, G_hat, _, _ = _grid(cfg.n, cfg.ng, cfg.L)
    D = sampling.draws_per_attempt(cfg.ng)
    # Different attempts read different counter ranges; group by attempt (few distinct).
    u = np.empty((len(pos), D))
    for a in np.unique(attempt):
        sel = attempt == a
        u[sel] = sampling.uniforms(key, pos[sel], int(a) * D, D)
    A = sampling.amplitudes(u, vf, cfg.ng, cfg.sparse)
    f = sampling.gaussian_sources(A, G)
    scale = 1 / f.max(axis=(1, 2))[:, None, None]          # normalise to max 1
    f *= scale
    f_hat = sampling.gaussian_sources_hat(A * scale, G_hat)  # the spectrum, already scaled
    return f, f_hat, u[:, 2 * cfg.ng + 2:]


def _remove_mean(f, f_hat):
    f -= f.mean(axis=(1, 2), keepdims=True)
    f_hat[:, 0, 0] = 0
    return f, f_hat


def _f32(a: np.ndarray) -> np.ndarray:
    """Round to float32 and back: the stored value, used for the solve."""
    return a.astype(np.float32).astype(np.float64)


def _solve(cfg, f_hat, tensor):
    """Float64 spectral solve; returns (u float32, u_hat float64, projected f_hat).

    The inverse FFT runs in float32, the precision u is stored in (3x faster than float64);
    generate_chunk checks it against the float64 transform on the residual-checked samples.
    """
    _, _, wk, _ = _grid(cfg.n, cfg.ng, cfg.L)
    u_hat, f_proj = spectral.solve_hat(f_hat, spectral.operator_symbol(cfg.pde, tensor, wk))
    return spectral.irfft2(u_hat.astype(np.complex64), cfg.n), u_hat, f_proj


def poisson_block(cfg, key, pos, vf):
    f, f_hat, c = _draw(cfg, key, pos, vf, np.zeros(len(pos), np.int64))
    f, f_hat = _remove_mean(f, f_hat)
    tensor = _f32(sampling.diffusion_tensor(sampling.uniform_in(c[:, 0], cfg.lo, cfg.hi),
                                            2 * np.pi * c[:, 1]))
    u, u_hat, _ = _solve(cfg, f_hat, tensor)
    return Block(f, u, u_hat, tensor)


def _ad_lambda(P, dsym, asym, r, max_iter=60, tol=1e-10):
    """Per-sample lambda with ||lam v . grad u|| / ||(1-lam) div(K grad u)|| = r.

    With s = (lam / (1 - lam))^2, q = d^2 + s a^2 (d, a the real diffusion / advection
    symbols, P = Parseval-weighted |f_hat|^2), the squared ratio is g(s) / h(s),
    g = s sum(a^2 P / q) (increasing), h = sum(d^2 P / q) (decreasing): monotone in s.
    Newton on F(x) = ln g - ln h - 2 ln r, x = ln s (F' ~ 1), safeguarded by a bracket;
    each sample stops when it converges, so its result does not depend on the batch.
    Returns (lam (B,), converged (B,)).
    """
    d2, a2 = dsym ** 2, asym ** 2
    d2[:, 0, 0] = 1.0          # the mean mode (P = 0 there) must not give 0 / 0
    a2P, d2P, a2d2P = a2 * P, d2 * P, a2 * d2 * P
    B = len(r)
    with np.errstate(divide="ignore", invalid="ignore"):
        s0 = r ** 2 * P.sum(axis=(1, 2)) / np.where(d2 > 0, a2P / d2, 0).sum(axis=(1, 2))
    x = np.log(np.where(np.isfinite(s0) & (s0 > 0), s0, 1.0))
    lo, hi = np.full(B, -np.inf), np.full(B, np.inf)
    active = np.ones(B, bool)
    target = 2 * np.log(r)
    for _ in range(max_iter):
        if not active.any():
            break
        idx = np.flatnonzero(active)
        s = np.exp(x[idx])[:, None, None]
        q = d2[idx] + s * a2[idx]
        g = s[:, 0, 0] * (a2P[idx] / q).sum(axis=(1, 2))
        h = (d2P[idx] / q).sum(axis=(1, 2))
        m = (a2d2P[idx] / q ** 2).sum(axis=(1, 2))
        F = np.log(g) - np.log(h) - target[idx]
        done = np.abs(F) < tol
        active[idx[done]] = False
        lo[idx] = np.where(F < 0, x[idx], lo[idx])
        hi[idx] = np.where(F > 0, x[idx], hi[idx])
        step = x[idx] - F / (s[:, 0, 0] * (m / g + m / h))
        l, h_ = lo[idx], hi[idx]
        inside = (step > l) & (step < h_)
        fallback = np.where(np.isfinite(l) & np.isfinite(h_), 0.5 * (l + h_),
                            np.where(np.isfinite(l), l + 2.0, h_ - 2.0))
        x[idx] = np.where(done, x[idx], np.where(inside, step, fallback))
    t = np.sqrt(np.exp(x))
    return t / (1 + t), ~active


def ad_block(cfg, key, pos, vf):
    f, f_hat, c = _draw(cfg, key, pos, vf, np.zeros(len(pos), np.int64))
    f, f_hat = _remove_mean(f, f_hat)
    _, _, wk, w = _grid(cfg.n, cfg.ng, cfg.L)
    K = sampling.diffusion_tensor(sampling.uniform_in(c[:, 0], 1.0, 5.0), 2 * np.pi * c[:, 1])
    v = sampling.unit_vectors(2 * np.pi * c[:, 2])
    r = sampling.uniform_in(c[:, 3], cfg.lo, cfg.hi)
    P = w * np.abs(f_hat) ** 2
    lam, ok = _ad_lambda(P, spectral.diffusion_symbol(K, wk),
                         spectral.advection_symbol(v, wk).imag, r)
    if not ok.all():
        raise DataError(f"advection-diffusion: lambda search did not converge for "
                        f"{int((~ok).sum())} samples (target ratios {r[~ok][:3]})")
    tensor = _f32(np.concatenate([(1 - lam)[:, None] * K, lam[:, None] * v], axis=1))
    u, u_hat, _ = _solve(cfg, f_hat, tensor)
    # Achieved ratio with the stored coefficients (Parseval on the rfft half plane).
    adv = spectral.advection_symbol(tensor[:, 3:5], wk) * u_hat
    dif = spectral.diffusion_symbol(tensor, wk) * u_hat
    ratio = np.sqrt((w * np.abs(adv) ** 2).sum(axis=(1, 2))
                    / (w * np.abs(dif) ** 2).sum(axis=(1, 2)))
    rel = np.abs(ratio / r - 1)
    if rel.max() > RATIO_RTOL:
        raise DataError(f"advection-diffusion: achieved ratio off target by {rel.max():.2e} "
                        f"(> {RATIO_RTOL:g}) at position {int(pos[rel.argmax()])}")
    return Block(f, u, u_hat, tensor, ratio, {"max_ratio_rel_error": float(rel.max())})


def helmholtz_block(cfg, key, pos, vf):
    max_u = pdes.get(cfg.pde).extra_attrs["max_abs_u"]    # redraw while max|u| exceeds it
    B = len(pos)
    out = None                             # (f, u, u_hat, tensor) of the block
    attempt = np.zeros(B, np.int64)
    todo = np.arange(B)
    while len(todo):
        if attempt[todo].max() >= HELMHOLTZ_MAX_ATTEMPTS:
            raise DataError(f"Helmholtz: no sample with max|u| <= {max_u:g} in "
                            f"{HELMHOLTZ_MAX_ATTEMPTS} draws (omega range too resonant?)")
        f, f_hat, c = _draw(cfg, key, pos[todo], vf[todo], attempt[todo])
        omega = sampling.integers_in(c[:, 0], int(cfg.lo), int(cfg.hi))
        tensor = _f32(np.stack([np.full(len(todo), sampling.HELMHOLTZ_T0), omega], axis=1))
        u, u_hat, f_proj = _solve(cfg, f_hat, tensor)
        # Modes at an exact resonance are removed from the source too (as published).
        if f_proj is not f_hat:            # solve_hat copies only when it projects
            hit = np.any(f_proj != f_hat, axis=(1, 2))
            f[hit] = spectral.irfft2(f_proj[hit], cfg.n)
        ok = np.abs(u).max(axis=(1, 2)) <= max_u
        if out is None:                    # first draw of the whole block: keep as is
            out = (f, u, u_hat, tensor)
        else:                              # redraws: fill in the accepted ones
            for dst, src in zip(out, (f, u, u_hat, tensor)):
                dst[todo[ok]] = src[ok]
        todo = todo[~ok]
        attempt[todo] += 1
    return Block(*out, stats={"redraws": int(attempt.sum())})


# --- Darcy: -div(a grad u) = f with a = exp(log-normal field) -------------------------------

@functools.lru_cache(maxsize=4)
def _grf_sqrt_spectrum(n: int, tau: float, alpha: float, L: float) -> np.ndarray:
    """sqrt of the covariance spectrum ((2 pi |k|)^2 + tau^2)^(-alpha / 2), (n, n//2+1), on
    the Nyquist-free, non-zero modes (0 elsewhere)."""
    wk = spectral.wavenumbers(n, L, L)
    keep = spectral.nyquist_free(n, n)
    keep[0, 0] = False
    return np.where(keep, (wk.kx2 + wk.ky2 + tau ** 2) ** (-alpha / 2), 0.0)


def gaussian_random_field(u: np.ndarray, n: int, tau: float, alpha: float,
                          L: float = 1.0) -> np.ndarray:
    """Zero-mean Gaussian random fields g (B, n, n) with covariance (-Laplace + tau^2)^-alpha
    (Li et al. 2021), normalised to unit standard deviation over the grid.

    u: (B, 2 n (n//2+1)) uniforms; each rfft2 mode gets a complex normal from a pair of them
    (Box-Muller), so a field is a pure function of its counters.
    """
    B, nk = len(u), n // 2 + 1
    u = u.reshape(B, 2, n, nk)
    radius = np.sqrt(-2 * np.log1p(-u[:, 0]))          # 1 - u in (0, 1]: no log(0)
    g_hat = _grf_sqrt_spectrum(n, tau, alpha, L) * radius * np.exp(2j * np.pi * u[:, 1])
    g = spectral.irfft2(g_hat, n)
    g -= g.mean(axis=(1, 2), keepdims=True)
    return g / g.std(axis=(1, 2), keepdims=True)


def darcy_block(cfg, key, pos, vf):
    """Darcy: f as for Poisson (projected onto the Nyquist-free modes), a = 0.01 exp(s g)
    (smooth) or 0.01 exp(s sign(g)) (--two_phase), s ~ U[s1, s2] the standard deviation of
    log a; batched PCG solve in float64 (utils/spectral.solve_darcy). Stored: tensor = (s,),
    field = a."""
    params = pdes.get(cfg.pde).extra_attrs
    f, _, c = _draw(cfg, key, pos, vf, np.zeros(len(pos), np.int64))
    s = _f32(sampling.uniform_in(c[:, 0], cfg.lo, cfg.hi))
    n = cfg.n
    # the field's counters follow those of the first attempt (sampling.py layout)
    u = sampling.uniforms(key, pos, sampling.draws_per_attempt(cfg.ng), 2 * n * (n // 2 + 1))
    g = gaussian_random_field(u, n, params["grf_tau"], params["grf_alpha"], cfg.L)
    log_a = s[:, None, None] * (np.sign(g) if "two_phase" in cfg.switches else g)
    # geometric mean DIFF_SCALE = 0.01, the diffusion scale of Poisson's K: solutions of the
    # same magnitude as the other PDEs' (targets are not normalised)
    a = _f32(sampling.DIFF_SCALE * np.exp(log_a))
    try:
        res = spectral.solve_darcy(f, a, cfg.L, cfg.L, tol=params["cg_tol"])
    except ValueError as e:
        raise DataError(f"darcy: {e} (a range of s this wide needs more iterations)") from None
    u_hat = spectral.rfft2(res.u)
    return Block(res.f, res.u.astype(np.float32), u_hat, s[:, None], field=a[:, None],
                 stats={"max_cg_iterations": int(res.iterations.max()),
                        "cg_iterations": int(res.iterations.sum())})
