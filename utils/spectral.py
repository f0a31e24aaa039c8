"""Fourier-spectral operators on the periodic rectangle [0, Lx) x [0, Ly).

Conventions (DESIGN.md section 2): a field is an array `u[..., i, j]` holding the value at
(x_j, y_i) = (j Lx / n, i Ly / n); x runs along the LAST axis, y along the one before. All
functions are batched over any leading axes, keep the input's floating dtype (float32 or
float64) and use real FFTs (`numpy.fft.rfft2`, which keeps float32 in single precision; the last axis
keeps n // 2 + 1 modes).

Discretisation (one definition, used by the solves, the operators and the residuals):
- first derivatives multiply by i k with the Nyquist wavenumber set to 0 (an odd symbol
  cannot be represented on the Nyquist mode of a real field);
- second derivatives multiply by -k^2 with the Nyquist wavenumber kept (even symbol);
- so the symbol of -div(K grad .) is K11 kx^2 + K22 ky^2 + 2 K12 kx' ky' (kx' = first-derivative
  wavenumber), which is real, even and positive for every k != 0 when K is SPD.
For band-limited fields (no Nyquist content) this equals grad/div composed exactly.

The PDE symbols below are those of L in L u = f:
  Poisson    L u = -div(K grad u)                    symbol  d(k)
  adv.-diff. L u = -div(K grad u) + v . grad u       symbol  d(k) + i (v1 kx' + v2 ky')
  Helmholtz  L u = -t0 Laplace(u) - t1 u             symbol  t0 |k|^2 - t1
Modes where the symbol vanishes (k = 0 for Poisson/AD) are set to 0 in the solution and are
projected out of the source (so that L u equals the projected source exactly).

Darcy, -div(a(x) grad u) = f with a coefficient FIELD a, has no symbol: the operator is
pseudo-spectral (FFT derivatives, the product a grad u in physical space) and is solved by
preconditioned conjugate gradients (`solve_darcy`). It acts on the modes OFF the Nyquist lines
only (kx = n/2 or ky = n/2; `nyquist_free`): there the first derivatives vanish, so
-div(a grad .) barely penalises them and an unprojected solve can return u full of
Nyquist-line content that satisfies the spectral equation to rounding but no finite-difference
one. f, u and the operator are projected onto the Nyquist-free, zero-mean modes.
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np

# |symbol| <= SYMBOL_ZERO_TOL * max|symbol| counts as a vanishing mode (only k = 0 for
# Poisson/AD; for Helmholtz an exact resonance t0 |k|^2 = t1, which floating point never hits
# for the published parameters, but a user-chosen t0 might).
SYMBOL_ZERO_TOL = 1e-12


class Wavenumbers(NamedTuple):
    """Angular wavenumbers of an (ny, nx) grid for rfft2 layouts (shapes broadcast).

    kx, ky:   first-derivative wavenumbers 2 pi k / L, Nyquist set to 0. kx (1, nx//2+1),
              ky (ny, 1).
    kx2, ky2: second-derivative symbols (2 pi k / L)^2 with the Nyquist mode kept.
    """
    kx: np.ndarray
    ky: np.ndarray
    kx2: np.ndarray
    ky2: np.ndarray


def wavenumbers(n: int, Lx: float = 1.0, Ly: float = 1.0, dtype=np.float64,
                ny: int | None = None) -> Wavenumbers:
    """Wavenumbers of an (ny, n) periodic grid (ny defaults to n) in the rfft2 layout."""
    ny = n if ny is None else ny
    kx_int = np.arange(n // 2 + 1, dtype=np.float64)            # rfft: 0..n/2
    ky_int = np.fft.fftfreq(ny, d=1.0 / ny)                     # 0..ny/2-1, -ny/2..-1
    kx2 = (2 * np.pi / Lx * kx_int) ** 2
    ky2 = (2 * np.pi / Ly * ky_int) ** 2
    kx = 2 * np.pi / Lx * kx_int
    ky = 2 * np.pi / Ly * ky_int
    if n % 2 == 0:
        kx[-1] = 0.0
    if ny % 2 == 0:
        ky[ny // 2] = 0.0
    return Wavenumbers(kx[None, :].astype(dtype), ky[:, None].astype(dtype),
                       kx2[None, :].astype(dtype), ky2[:, None].astype(dtype))


def _wk(u: np.ndarray, Lx: float, Ly: float) -> Wavenumbers:
    return wavenumbers(u.shape[-1], Lx, Ly, dtype=u.real.dtype, ny=u.shape[-2])


def _complex_dtype(real_dtype) -> np.dtype:
    return np.result_type(real_dtype, np.complex64)


def rfft2(u: np.ndarray) -> np.ndarray:
    return np.fft.rfft2(u, axes=(-2, -1))


def irfft2(u_hat: np.ndarray, nx: int) -> np.ndarray:
    return np.fft.irfft2(u_hat, s=(u_hat.shape[-2], nx), axes=(-2, -1))


# --- derivative operators (physical space in and out) -------------------------------------

def grad(u: np.ndarray, Lx: float = 1.0, Ly: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Spectral gradient of u (..., ny, nx) -> (du/dx, du/dy), each (..., ny, nx)."""
    wk = _wk(u, Lx, Ly)
    u_hat = rfft2(u)
    nx = u.shape[-1]
    return irfft2(1j * wk.kx * u_hat, nx), irfft2(1j * wk.ky * u_hat, nx)


def div(qx: np.ndarray, qy: np.ndarray, Lx: float = 1.0, Ly: float = 1.0) -> np.ndarray:
    """Spectral divergence d(qx)/dx + d(qy)/dy of a vector field, (..., ny, nx) each."""
    wk = _wk(qx, Lx, Ly)
    return irfft2(1j * wk.kx * rfft2(qx) + 1j * wk.ky * rfft2(qy), qx.shape[-1])


def laplacian(u: np.ndarray, Lx: float = 1.0, Ly: float = 1.0) -> np.ndarray:
    """Spectral Laplacian of u (..., ny, nx) (second-derivative symbol -|k|^2)."""
    wk = _wk(u, Lx, Ly)
    return irfft2(-(wk.kx2 + wk.ky2) * rfft2(u), u.shape[-1])


# --- operator symbols, batched over samples ------------------------------------------------

def _col(t: np.ndarray, j: int) -> np.ndarray:
    """Column j of a (B, k) coefficient array shaped (B, 1, 1) to broadcast on (B, ny, nk)."""
    return np.asarray(t)[:, j, None, None]


def diffusion_symbol(K: np.ndarray, wk: Wavenumbers) -> np.ndarray:
    """Symbol of -div(K grad .) for K rows (K11, K22, K12), K (B, >=3) -> (B, ny, nx//2+1)."""
    return (_col(K, 0) * wk.kx2 + _col(K, 1) * wk.ky2
            + 2 * _col(K, 2) * (wk.ky * wk.kx))


def advection_symbol(v: np.ndarray, wk: Wavenumbers) -> np.ndarray:
    """Symbol of v . grad for velocities v (B, 2) -> (B, ny, nx//2+1), purely imaginary."""
    return 1j * (_col(v, 0) * wk.kx + _col(v, 1) * wk.ky)


def helmholtz_symbol(t: np.ndarray, wk: Wavenumbers) -> np.ndarray:
    """Symbol of -t0 Laplace - t1 for t (B, 2) = (t0, omega) -> (B, ny, nx//2+1)."""
    return _col(t, 0) * (wk.kx2 + wk.ky2) - _col(t, 1)


def advdiff_symbol(t: np.ndarray, wk: Wavenumbers) -> np.ndarray:
    """Symbol of -div(K grad .) + v . grad for rows t (B, 5) = (K11, K22, K12, v1, v2)."""
    return diffusion_symbol(t, wk) + advection_symbol(t[:, 3:5], wk)


def operator_symbol(pde: str, tensor: np.ndarray, wk: Wavenumbers) -> np.ndarray:
    """Symbol of the PDE operator from the stored coefficient rows (DESIGN section 2).

    pde: a registered PDE with a Fourier symbol (utils/pdes.py names the function), e.g.
    'poisson' (tensor (B, 3)), 'ad' (tensor (B, 5) = K11, K22, K12, v1, v2) or
    'helmholtz' (tensor (B, 2) = t0, omega).
    """
    from utils import pdes

    spec = pdes.get(pde)
    if spec.symbol is None:
        raise ValueError(f"{spec.name} has no Fourier symbol (its coefficient is a field)")
    return pdes.fn(spec.symbol)(np.asarray(tensor, dtype=wk.kx.dtype), wk)


# --- solves and operators ------------------------------------------------------------------

def solve_hat(f_hat: np.ndarray, symbol: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve symbol * u_hat = f_hat mode by mode.

    Returns (u_hat, f_hat_projected): modes with a vanishing symbol are 0 in both;
    f_hat_projected is f_hat itself (same object) when nothing had to be projected out.
    """
    mag = np.abs(symbol)
    zero = mag <= SYMBOL_ZERO_TOL * mag.max(axis=(-2, -1), keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = 1 / symbol
    inv[zero] = 0
    if np.any(f_hat[zero] != 0):            # only copy when something is projected out
        f_hat = np.where(zero, 0, f_hat)
    return f_hat * inv, f_hat


def solve(pde: str, f: np.ndarray, tensor: np.ndarray, Lx: float = 1.0,
          Ly: float = 1.0) -> np.ndarray:
    """Periodic solve of L u = f for sources f (B, ny, nx) and coefficients tensor (B, k).

    Modes with a vanishing symbol (the mean for Poisson/AD) are set to 0 in u.
    """
    wk = _wk(f, Lx, Ly)
    u_hat, _ = solve_hat(rfft2(f), operator_symbol(pde, tensor, wk))
    return irfft2(u_hat, f.shape[-1])


def solve_poisson(f, K, Lx=1.0, Ly=1.0):
    """u (B, n, n) with -div(K grad u) = f - mean(f), zero mean. K (B, 3) = K11, K22, K12."""
    return solve("poisson", f, K, Lx, Ly)


def solve_advdiff(f, K, v, Lx=1.0, Ly=1.0):
    """u with -div(K grad u) + v . grad u = f - mean(f), zero mean. K (B, 3), v (B, 2)."""
    return solve("ad", f, np.concatenate([np.asarray(K)[:, :3], np.asarray(v)], axis=1), Lx, Ly)


def solve_helmholtz(f, t0, omega, Lx=1.0, Ly=1.0):
    """u with -t0 Laplace(u) - omega u = f (resonant modes zeroed). t0, omega (B,)."""
    return solve("helmholtz", f, np.stack([np.asarray(t0, float) * np.ones_like(omega, float),
                                           np.asarray(omega, float)], axis=1), Lx, Ly)


def apply_operator(pde: str, u: np.ndarray, tensor: np.ndarray, Lx: float = 1.0,
                   Ly: float = 1.0) -> np.ndarray:
    """L u for fields u (B, ny, nx) and coefficient rows tensor (B, k) (or, for a PDE whose
    coefficient is a field, the fields (B, 1, ny, nx): its registry `operator`)."""
    from utils import pdes

    spec = pdes.get(pde)
    if spec.operator is not None:
        return pdes.fn(spec.operator)(u, np.asarray(tensor)[:, 0], Lx, Ly)
    wk = _wk(u, Lx, Ly)
    return irfft2(operator_symbol(pde, tensor, wk) * rfft2(u), u.shape[-1])


# --- Darcy: variable-coefficient diffusion, pseudo-spectral, solved by PCG ----------------

def nyquist_free(ny: int, nx: int) -> np.ndarray:
    """(ny, nx//2+1) bool mask of the rfft2 modes off the Nyquist lines (kx = nx/2, ky = ny/2
    for even sizes): the space the Darcy operator acts on."""
    keep = np.ones((ny, nx // 2 + 1), bool)
    if nx % 2 == 0:
        keep[:, -1] = False
    if ny % 2 == 0:
        keep[ny // 2, :] = False
    return keep


def _darcy_hat(u_hat, a, wk, keep, nx):
    """Spectrum of P(-div(a grad u)) for the spectrum u_hat (B, ny, nk) of a Nyquist-free u
    and the coefficient a (B, ny, nx): 2 inverse and 2 forward FFTs."""
    qx = a * irfft2(1j * wk.kx * u_hat, nx)
    qy = a * irfft2(1j * wk.ky * u_hat, nx)
    return -(1j * wk.kx * rfft2(qx) + 1j * wk.ky * rfft2(qy)) * keep


def darcy_operator(u: np.ndarray, a: np.ndarray, Lx: float = 1.0, Ly: float = 1.0) -> np.ndarray:
    """P(-div(a grad(P u))) for u, a (B, ny, nx): the discrete Darcy operator, P the
    projection onto the Nyquist-free modes (module docstring)."""
    wk = _wk(u, Lx, Ly)
    keep = nyquist_free(*u.shape[-2:])
    return irfft2(_darcy_hat(rfft2(u) * keep, a, wk, keep, u.shape[-1]), u.shape[-1])


class DarcyResult(NamedTuple):
    u: np.ndarray           # (B, ny, nx) float64 solution, zero mean, no Nyquist-line content
    f: np.ndarray           # (B, ny, nx) the projected source P f - mean (what u solves)
    iterations: np.ndarray  # (B,) PCG iterations of each sample
    rel_residual: np.ndarray  # (B,) ||P(-div(a grad u)) - f||_2 / ||f||_2 (CG recursion)


def solve_darcy(f: np.ndarray, a: np.ndarray, Lx: float = 1.0, Ly: float = 1.0,
                tol: float = 1e-10, max_iter: int = 5000) -> DarcyResult:
    """-div(a grad u) = f on the periodic grid, zero-mean u, batched PCG in float64.

    f, a: (B, ny, nx); a > 0. f is projected onto the zero-mean, Nyquist-free modes and u
    sought there. Preconditioner: the inverse of -mean(a) Laplace (diagonal in Fourier space),
    so the iteration count depends on the contrast of a, not on the grid. Each sample stops
    when its relative residual (2-norm) is <= tol, so its result does not depend on the batch;
    ValueError if one does not converge in max_iter iterations.
    """
    f = np.asarray(f, np.float64)
    a = np.asarray(a, np.float64)
    B, ny, nx = f.shape
    wk = _wk(f, Lx, Ly)
    keep = nyquist_free(ny, nx)
    keep[0, 0] = False                              # zero mean
    f_hat = rfft2(f) * keep
    lap = wk.kx2 + wk.ky2
    inv_lap = np.where(keep, 1 / np.where(lap > 0, lap, 1), 0)
    # CG on the spectra: with Parseval weights w the physical inner product is
    # sum(w Re(conj(x) y)) (rfft2 half plane), so A stays symmetric positive definite.
    w = np.full((1, nx // 2 + 1), 2.0)
    w[0, 0] = 1.0
    if nx % 2 == 0:
        w[0, -1] = 1.0

    def dot(x, y):
        return (w * (x.real * y.real + x.imag * y.imag)).sum(axis=(-2, -1))

    abar = a.mean(axis=(-2, -1))[:, None, None]
    x = np.zeros_like(f_hat)
    r = f_hat.copy()
    z = r * inv_lap / abar
    p = z.copy()
    rz = dot(r, z)
    f_norm = np.sqrt(dot(f_hat, f_hat))
    f_norm = np.where(f_norm > 0, f_norm, 1.0)
    rel = np.sqrt(dot(r, r)) / f_norm
    iters = np.zeros(B, np.int64)
    active = np.flatnonzero(rel > tol)
    while active.size:
        if iters[active].max() >= max_iter or not np.all(np.isfinite(rel[active])):
            raise ValueError(f"Darcy PCG: {active.size} samples not converged to {tol:g} in "
                             f"{max_iter} iterations (relative residual {rel[active].max():.2e})")
        i = active
        Ap = _darcy_hat(p[i], a[i], wk, keep, nx)
        alpha = (rz[i] / dot(p[i], Ap))[:, None, None]
        x[i] += alpha * p[i]
        r[i] -= alpha * Ap
        rel[i] = np.sqrt(dot(r[i], r[i])) / f_norm[i]
        iters[i] += 1
        z_i = r[i] * inv_lap / abar[i]
        rz_new = dot(r[i], z_i)
        p[i] = z_i + (rz_new / rz[i])[:, None, None] * p[i]
        rz[i] = rz_new
        active = i[rel[i] > tol]
    return DarcyResult(irfft2(x, nx), irfft2(f_hat, nx), iters, rel)


def residual(pde: str, f: np.ndarray, u: np.ndarray, tensor: np.ndarray, Lx: float = 1.0,
             Ly: float = 1.0) -> np.ndarray:
    """Relative residual max|L u - f| / max|f| per sample, (B,), in float64.

    f must already be the projected source (zero mean for Poisson/AD/Darcy, and no
    Nyquist-line content for Darcy). `tensor`: the coefficient rows (B, k), or for a PDE
    with a coefficient field the fields (B, 1, ny, nx).
    """
    f = np.asarray(f, np.float64)
    r = apply_operator(pde, np.asarray(u, np.float64), np.asarray(tensor, np.float64), Lx, Ly) - f
    return np.abs(r).max(axis=(-2, -1)) / np.abs(f).max(axis=(-2, -1))
