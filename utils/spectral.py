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
    """L u for fields u (B, ny, nx) and coefficient rows tensor (B, k)."""
    wk = _wk(u, Lx, Ly)
    return irfft2(operator_symbol(pde, tensor, wk) * rfft2(u), u.shape[-1])


def residual(pde: str, f: np.ndarray, u: np.ndarray, tensor: np.ndarray, Lx: float = 1.0,
             Ly: float = 1.0) -> np.ndarray:
    """Relative residual max|L u - f| / max|f| per sample, (B,), in float64.

    f must already be the projected source (zero mean for Poisson/AD).
    """
    f = np.asarray(f, np.float64)
    r = apply_operator(pde, np.asarray(u, np.float64), np.asarray(tensor, np.float64), Lx, Ly) - f
    return np.abs(r).max(axis=(-2, -1)) / np.abs(f).max(axis=(-2, -1))
