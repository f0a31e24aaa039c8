"""Random sources and coefficients of the sampling recipe (DESIGN.md section 3), vectorised.

Randomness is counter based: the u-th uniform number of sample `pos` in a dataset is a pure
function of (dataset key, pos, u), computed with the SplitMix64 mixer. A sample therefore
gets the same numbers whatever chunk or worker process generates it, and a rejected
Helmholtz sample is redrawn from the next `draws_per_attempt` counters.

Layout of the counters of one attempt (ng Gaussians):
  [0, ng)        activation draws alpha (Gaussian g active iff alpha > vf)
  [ng, 2 ng)     amplitudes U[1e-3, 1]
  2 ng, 2 ng + 1 fallback Gaussian index and amplitude (used when none is active)
  2 ng + 2 ...   coefficient draws (COEF_DRAWS of them)
"""
from __future__ import annotations

import zlib

import numpy as np

VF_VALUES = (0.2, 0.4, 0.6, 0.8)   # sparsity levels, equal shares per split
SIGMA = 1.0 / 32                   # Gaussian width
AMP_MIN, AMP_MAX = 1e-3, 1.0       # amplitude range of an active Gaussian
DIFF_SCALE = 0.01                  # K = DIFF_SCALE * R^T diag(1, e) R
HELMHOLTZ_T0 = 0.01                # coefficient of -Laplace in Helmholtz
COEF_DRAWS = 6

_M64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_GAMMA = np.uint64(0x9E3779B97F4A7C15)


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser (a bijection of uint64 with full avalanche), elementwise."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def dataset_key(seed: int, *names: str) -> int:
    """64-bit stream key of a dataset from the seed and names (pde, split, tag).

    Different splits, PDEs or coefficient ranges get independent streams.
    """
    words = [int(seed) & 0xFFFFFFFF, (int(seed) >> 32) & 0xFFFFFFFF]
    words += [zlib.crc32(n.encode()) for n in names]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def uniforms(key: int, pos: np.ndarray, start: int, count: int) -> np.ndarray:
    """Uniform numbers in [0, 1), (B, count) float64: counters start..start+count-1 of
    samples pos (B,) in the stream `key` (a SplitMix64 stream seeded per sample)."""
    pos = np.asarray(pos, dtype=np.uint64)
    with np.errstate(over="ignore"):
        base = _mix64(np.uint64(key) ^ _mix64(pos * _GAMMA + np.uint64(1)))
        ctr = np.arange(start, start + count, dtype=np.uint64) + np.uint64(1)
        z = _mix64(base[:, None] + ctr[None, :] * _GAMMA)
    return (z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def draws_per_attempt(ng: int) -> int:
    return 2 * ng + 2 + COEF_DRAWS


def vf_labels(n_samples: int, rng: np.random.Generator) -> np.ndarray:
    """Sparsity vf of each stored position, (N,): equal shares of VF_VALUES, shuffled.

    Equivalent to generating the shares in order and shuffling the samples (the other
    draws are i.i.d. per position).
    """
    shares = (np.arange(n_samples) * len(VF_VALUES)) // max(n_samples, 1)
    return np.asarray(VF_VALUES)[rng.permutation(shares)]


# --- Gaussian sources -----------------------------------------------------------------------

def lattice_factors(n: int, ng: int, sigma: float = SIGMA, L: float = 1.0) -> np.ndarray:
    """1-D Gaussian factors G (m, n), m = sqrt(ng): G[c, j] = exp(-(x_j - c_c)^2 / 2 sigma^2).

    Centres: an m-point lattice centred at L/2 with spacing 2 sigma (not wrapped
    periodically, as published). A 2-D Gaussian at (cx_b, cy_a) is G[a, :, None] *
    G[b, None, :] on the (y, x) grid, so a source is G^T A G for an amplitude matrix A.
    """
    m = int(round(np.sqrt(ng)))
    centres = L / 2 + (np.arange(m) - (m - 1) / 2) * 2 * sigma
    x = np.arange(n) * (L / n)
    return np.exp(-(x[None, :] - centres[:, None]) ** 2 / (2 * sigma ** 2))


def amplitudes(u: np.ndarray, vf: np.ndarray, ng: int, sparse: bool) -> np.ndarray:
    """Amplitude matrices A (B, m, m) from the draws u (B, >= 2 ng + 2) and vf (B,).

    A[b, a, c] multiplies the Gaussian at (x = centre c, y = centre a). Each Gaussian is active
    with probability 1 - vf (all of them without `sparse`), amplitude U[AMP_MIN, AMP_MAX];
    if none is active a random one is switched on.
    """
    B = u.shape[0]
    m = int(round(np.sqrt(ng)))
    amp = AMP_MIN + (AMP_MAX - AMP_MIN) * u[:, ng:2 * ng]
    if sparse:
        active = u[:, :ng] > vf[:, None]
        none = ~active.any(axis=1)
        pick = np.minimum((u[:, 2 * ng] * ng).astype(np.int64), ng - 1)
        active[none, pick[none]] = True
        amp = np.where(active, amp, 0.0)
        amp[none, pick[none]] = AMP_MIN + (AMP_MAX - AMP_MIN) * u[none, 2 * ng + 1]
    return amp.reshape(B, m, m)


def gaussian_sources(A: np.ndarray, G: np.ndarray) -> np.ndarray:
    """Sum of lattice Gaussians f = G^T A G, (B, n, n) float64, for amplitudes A (B, m, m)."""
    return np.matmul(G.T, np.matmul(A, G))


def gaussian_sources_hat(A: np.ndarray, G_hat: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    """rfft2 of gaussian_sources(A, G), (B, n, n//2+1) complex128, without an FFT.

    The DFT is separable: rfft2(G^T A G) = Gy_hat^T A Gx_hat with G_hat = (Gy_hat, Gx_hat) =
    lattice_factors_hat(G), exact up to rounding. A is real, so A Gx_hat is one real GEMM on
    the (re, im) pairs of Gx_hat.
    """
    Gy_hat, Gx_hat = G_hat
    m, nk = Gx_hat.shape
    X = A.reshape(-1, m) @ np.ascontiguousarray(Gx_hat).view(np.float64)
    return np.matmul(Gy_hat.T, X.view(np.complex128).reshape(len(A), m, nk))


def lattice_factors_hat(G: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(fft(G) (m, n), rfft(G) (m, n//2+1)) along x: the 1-D spectra of the factors."""
    return np.fft.fft(G, axis=-1), np.fft.rfft(G, axis=-1)


# --- coefficients ---------------------------------------------------------------------------

def diffusion_tensor(e: np.ndarray, theta: np.ndarray, scale: float = DIFF_SCALE) -> np.ndarray:
    """K = scale * R(theta)^T diag(1, e) R(theta) as rows (K11, K22, K12), (B, 3).

    Eigenvalues scale * {1, e}; R the counter-clockwise rotation by theta.
    """
    c, s = np.cos(theta), np.sin(theta)
    return scale * np.stack([c * c + e * s * s, s * s + e * c * c, (e - 1) * s * c], axis=1)


def unit_vectors(theta: np.ndarray) -> np.ndarray:
    """(cos theta, sin theta), (B, 2)."""
    return np.stack([np.cos(theta), np.sin(theta)], axis=1)


def uniform_in(u: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return lo + (hi - lo) * u


def integers_in(u: np.ndarray, lo: int, hi: int) -> np.ndarray:
    """Integers uniform on {lo, ..., hi} from uniforms u in [0, 1)."""
    return np.minimum(lo + np.floor(u * (hi - lo + 1)), hi)
