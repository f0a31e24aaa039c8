"""Shared driver of the three dataset generators (gen_data_{poisson,advdiff,helmholtz}.py).

One place for: the command line, argument validation, the per-PDE sample recipes
(DESIGN.md sections 2-3), chunked parallel generation and the residual check.

How a split is made:
1. A split-level shuffle fixes which sparsity level vf each stored position gets (equal
   shares, shuffled), so the stored order is already mixed.
2. Positions are cut into chunks (--chunk_size) that worker processes generate; inside a
   chunk, samples are computed in fixed blocks of BLOCK positions, vectorised over the block.
   Every random number of a sample is a function of (seed, pde, split, range, position) only
   (utils/sampling.py) and blocks are aligned to absolute positions, so the file is bit
   identical whatever --workers or --chunk_size.
3. Solves are in float64 (the forward FFT of a source is exact and cheap via the separable
   lattice, see sampling.gaussian_sources) up to the inverse FFT of u, which runs in float32,
   the stored precision. Stored coefficients are rounded to float32 before the solve, so the
   stored (f, u, t) are consistent up to float32 rounding of f and u.
4. On every RESIDUAL_STRIDE-th position (1 per block) the PDE residual of the float64
   solution is checked in float64 (RESIDUAL_TOL), and the stored float32 u against it
   (FLOAT32_TOL); a failure stops the run. The worst residual goes in the attribute
   `max_residual`.
5. The parent process writes chunks in order to a temporary HDF5 file (bounded memory: at
   most 2 chunks per worker in flight) and renames it when complete.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import logging
import math
import multiprocessing
import os
import re
import shutil
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass

import numpy as np

from utils import sampling, spectral
from utils.cli import run_cli
from utils.errors import DataError
from utils.h5io import SplitWriter, dataset_path, range_tag, SPLITS
from utils.malloc_tuning import configure_malloc
from utils.run_guard import die_with_parent

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
BLOCK = 32                  # samples computed together; chunk sizes are multiples of it
RESIDUAL_STRIDE = 32        # check the residual of every 32nd position (1 per block)
RESIDUAL_TOL = 1e-9         # relative max-norm residual allowed in float64
FLOAT32_TOL = 1e-6          # float32 inverse FFT of u vs float64, relative max norm
RATIO_RTOL = 1e-3           # AD: achieved ratio vs target, relative
HELMHOLTZ_MAX_U = 2.0       # Helmholtz: redraw while max|u| exceeds this
HELMHOLTZ_MAX_ATTEMPTS = 1000
MIN_N = 32
MAX_N = 16384               # one sample (2 n^2 float32) must fit an HDF5 chunk (< 4 GiB)
MAX_SEED = 2 ** 63 - 1      # stored as an int64 attribute
WORK_BYTES_PER_POINT = 8 * 24   # a worker's float64/complex work arrays per grid point of a block

# Per PDE: the coefficient-range flags, their type and defaults, tensor width, 'other' data.
PDE_SPECS = {
    "poisson": dict(flags=("e1", "e2"), type=float, defaults=(1.0, 5.0), k=3, other=False,
                    title="Poisson: -div(K grad u) = f",
                    range_help="eigenvalue e of K/0.01 = R^T diag(1, e) R, e ~ U[e1, e2]"),
    "ad": dict(flags=("adr1", "adr2"), type=float, defaults=(0.2, 1.0), k=5, other=True,
               title="advection-diffusion: -div(K grad u) + v . grad u = f",
               range_help="advection-to-diffusion ratio r ~ U[adr1, adr2]"),
    "helmholtz": dict(flags=("o1", "o2"), type=int, defaults=(1, 10), k=2, other=False,
                      title="Helmholtz: -0.01 Laplace(u) - omega u = f",
                      range_help="integer wavenumber omega ~ U{o1, ..., o2}"),
}
EQUATIONS = {
    "poisson": "-div(K grad u) = f; tensor = (K11, K22, K12)",
    "ad": "-div(K grad u) + v . grad u = f; tensor = (K11, K22, K12, v1, v2); "
          "other = ||v . grad u|| / ||div(K grad u)||",
    "helmholtz": "-t0 Laplace(u) - t1 u = f; tensor = (t0 = 0.01, t1 = omega)",
}


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


def _poisson_block(cfg, key, pos, vf):
    f, f_hat, c = _draw(cfg, key, pos, vf, np.zeros(len(pos), np.int64))
    f, f_hat = _remove_mean(f, f_hat)
    tensor = _f32(sampling.diffusion_tensor(sampling.uniform_in(c[:, 0], cfg.lo, cfg.hi),
                                            2 * np.pi * c[:, 1]))
    u, u_hat, _ = _solve(cfg, f_hat, tensor)
    return f, u, u_hat, tensor, None, {}


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


def _ad_block(cfg, key, pos, vf):
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
    return f, u, u_hat, tensor, ratio, {"max_ratio_rel_error": float(rel.max())}


def _helmholtz_block(cfg, key, pos, vf):
    B = len(pos)
    out = None                             # (f, u, u_hat, tensor) of the block
    attempt = np.zeros(B, np.int64)
    todo = np.arange(B)
    while len(todo):
        if attempt[todo].max() >= HELMHOLTZ_MAX_ATTEMPTS:
            raise DataError(f"Helmholtz: no sample with max|u| <= {HELMHOLTZ_MAX_U:g} in "
                            f"{HELMHOLTZ_MAX_ATTEMPTS} draws (omega range too resonant?)")
        f, f_hat, c = _draw(cfg, key, pos[todo], vf[todo], attempt[todo])
        omega = sampling.integers_in(c[:, 0], int(cfg.lo), int(cfg.hi))
        tensor = _f32(np.stack([np.full(len(todo), sampling.HELMHOLTZ_T0), omega], axis=1))
        u, u_hat, f_proj = _solve(cfg, f_hat, tensor)
        # Modes at an exact resonance are removed from the source too (as published).
        if f_proj is not f_hat:            # solve_hat copies only when it projects
            hit = np.any(f_proj != f_hat, axis=(1, 2))
            f[hit] = spectral.irfft2(f_proj[hit], cfg.n)
        ok = np.abs(u).max(axis=(1, 2)) <= HELMHOLTZ_MAX_U
        if out is None:                    # first draw of the whole block: keep as is
            out = (f, u, u_hat, tensor)
        else:                              # redraws: fill in the accepted ones
            for dst, src in zip(out, (f, u, u_hat, tensor)):
                dst[todo[ok]] = src[ok]
        todo = todo[~ok]
        attempt[todo] += 1
    return (*out[:3], out[3], None, {"redraws": int(attempt.sum())})


BLOCK_FUNCS = {"poisson": _poisson_block, "ad": _ad_block, "helmholtz": _helmholtz_block}


def generate_chunk(cfg: GenConfig, key: int, start: int, vf: np.ndarray, out=None) -> dict:
    """Samples of positions start .. start + len(vf) - 1 (start a multiple of BLOCK).

    Results go to `out` = (fields (>= B, 2, n, n), tensor (>= B, k), other (>= B, 1) or None)
    float32 arrays (new ones if None). Returns dict(out=..., max_residual, checked (number of
    residual checks), stats (dict of per-PDE summaries)).
    """
    assert start % BLOCK == 0
    B = len(vf)
    spec = PDE_SPECS[cfg.pde]
    if out is None:
        out = (np.empty((B, 2, cfg.n, cfg.n), np.float32), np.empty((B, spec["k"]), np.float32),
               np.empty((B, 1), np.float32) if spec["other"] else None)
    fields, tensor, other = out
    worst, checked, stats = 0.0, 0, {}
    for b0 in range(0, B, BLOCK):
        sl = slice(b0, min(b0 + BLOCK, B))
        pos = np.arange(start + sl.start, start + sl.stop)
        f, u, u_hat, t, o, st = BLOCK_FUNCS[cfg.pde](cfg, key, pos, vf[sl])
        # Checks on a sample of the block, in float64: the PDE residual of the float64
        # solution, and the float32 transform of the stored u against it.
        chk = np.flatnonzero(pos % RESIDUAL_STRIDE == 0)
        u64 = spectral.irfft2(u_hat[chk], cfg.n)
        res = spectral.residual(cfg.pde, f[chk], u64, t[chk], cfg.L, cfg.L)
        dev = np.abs(u[chk] - u64).max(axis=(1, 2)) / np.abs(u64).max(axis=(1, 2))
        if not np.all(res <= RESIDUAL_TOL):   # also catches NaN
            bad = int(np.nanargmax(np.where(np.isnan(res), np.inf, res)))
            raise DataError(f"{cfg.pde}: PDE residual {res[bad]:.3e} > {RESIDUAL_TOL:g} at "
                            f"position {int(pos[chk[bad]])}")
        if not np.all(dev <= FLOAT32_TOL):
            raise DataError(f"{cfg.pde}: float32 solution deviates by {np.nanmax(dev):.2e} "
                            f"(> {FLOAT32_TOL:g}) from the float64 one")
        worst, checked = max(worst, float(res.max(initial=0.0))), checked + len(chk)
        fields[sl, 0], fields[sl, 1], tensor[sl] = f, u, t
        if other is not None:
            other[sl, 0] = o
        _merge_stats(stats, st)
    return dict(out=out, max_residual=worst, checked=checked, stats=stats)


def _merge_stats(acc: dict, new: dict) -> None:
    """Accumulate summaries: keys 'max_*' by maximum, the others by sum."""
    for k, v in new.items():
        acc[k] = max(acc.get(k, v), v) if k.startswith("max") else acc.get(k, 0) + v


# --- worker processes: results travel through shared memory, not pipes ---------------------------

_SLOTS = None      # per worker process: (fields, tensor, other) arrays of shape (slots, chunk, ...)


def _slot_arrays(raw, shapes):
    return tuple(None if r is None else np.frombuffer(r, np.float32).reshape(s)
                 for r, s in zip(raw, shapes))


def _init_worker(raw, shapes, parent_pid):
    global _SLOTS
    # a worker ends with its parent (even on kill -9 of the parent) and leaves Ctrl-C and
    # SIGTERM to it: the parent stops the pool and removes its temporary file
    die_with_parent(signal.SIGKILL, parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _SLOTS = _slot_arrays(raw, shapes)
    configure_malloc()


def _chunk_into_slot(cfg, key, start, vf, slot):
    out = tuple(None if a is None else a[slot] for a in _SLOTS)
    res = generate_chunk(cfg, key, start, vf, out)
    res.pop("out")                     # the data stays in shared memory; only stats travel
    return res


# --- the driver ------------------------------------------------------------------------------

def _progress(total: int, desc: str):
    """A tqdm bar on an interactive terminal; a no-op object otherwise."""
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="sample", leave=False)

    class _Null:
        def update(self, k): pass
        def close(self): pass
    return _Null()


class WorkerPool:
    """Worker processes plus 2 shared-memory result slots per worker (a context manager).

    Results travel through the slots rather than pickled through pipes, and at most one chunk
    per slot is in flight, which bounds memory whatever the split size. One pool serves the
    three splits of a run (same n, k and chunk size).
    """

    def __init__(self, workers: int, chunk_size: int, n: int, k: int, other: bool):
        self.n_slots, self.chunk_size = 2 * workers, chunk_size
        shapes = ((self.n_slots, chunk_size, 2, n, n), (self.n_slots, chunk_size, k),
                  (self.n_slots, chunk_size, 1) if other else None)
        raw = tuple(None if sh is None else multiprocessing.RawArray("f", math.prod(sh))
                    for sh in shapes)
        self.slots = _slot_arrays(raw, shapes)
        ctx = (multiprocessing.get_context("fork")
               if "fork" in multiprocessing.get_all_start_methods() else None)
        self.ex = ProcessPoolExecutor(max_workers=workers, mp_context=ctx,
                                      initializer=_init_worker,
                                      initargs=(raw, shapes, os.getpid()))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.ex.shutdown(wait=True, cancel_futures=True)
        return False

    def run(self, cfg, key, starts, vf, consume):
        """consume(start, stats, out) for every chunk start, in order."""
        def submit(s, slot):
            return s, slot, self.ex.submit(_chunk_into_slot, cfg, key, s,
                                           vf[s:s + self.chunk_size], slot)
        queue = iter(starts)
        window = collections.deque(submit(s, slot) for slot, s in zip(range(self.n_slots), queue))
        while window:
            s, slot, fut = window.popleft()
            consume(s, fut.result(), tuple(None if a is None else a[slot] for a in self.slots))
            nxt = next(queue, None)          # the slot is free again once written
            if nxt is not None:
                window.append(submit(nxt, slot))


def generate_split(cfg: GenConfig, split: str, n_samples: int, path: str, seed: int,
                   workers: int = 1, chunk_size: int = 128, overwrite: bool = False,
                   pool: WorkerPool | None = None) -> dict:
    """Generate one split into `path` (atomic). Returns the root attributes written.

    With workers > 1 the chunks are generated by `pool` (a new one if None).
    """
    tag = range_tag(cfg.pde, cfg.lo, cfg.hi)
    key = sampling.dataset_key(seed, cfg.pde, split, tag)
    vf = sampling.vf_labels(n_samples, np.random.default_rng(
        sampling.dataset_key(seed, cfg.pde, split, tag, "shuffle")))
    starts = list(range(0, n_samples, chunk_size))
    spec = PDE_SPECS[cfg.pde]
    worst, checked, stats = 0.0, 0, {}
    t0 = time.perf_counter()
    bar = _progress(n_samples, f"{cfg.pde} {split}")
    with SplitWriter(path, n_samples, cfg.n, spec["k"], spec["other"], overwrite) as writer:
        def consume(start, res, out):
            nonlocal worst, checked
            B = min(chunk_size, n_samples - start)
            writer.write(start, out[0][:B], out[1][:B], None if out[2] is None else out[2][:B])
            worst, checked = max(worst, res["max_residual"]), checked + res["checked"]
            _merge_stats(stats, res["stats"])
            bar.update(B)

        if workers == 1 or len(starts) == 1:
            for s in starts:
                res = generate_chunk(cfg, key, s, vf[s:s + chunk_size])
                consume(s, res, res["out"])
        elif pool is not None:
            pool.run(cfg, key, starts, vf, consume)
        else:
            with WorkerPool(workers, chunk_size, cfg.n, spec["k"], spec["other"]) as own:
                own.run(cfg, key, starts, vf, consume)
        bar.close()
        lo_name, hi_name = spec["flags"]
        writer.attrs.update({
            "pde": cfg.pde, "split": split, "equation": EQUATIONS[cfg.pde],
            "n": cfg.n, "ng": cfg.ng, "sigma": sampling.SIGMA, "spacing": 2 * sampling.SIGMA,
            "sparse": bool(cfg.sparse), "vf_values": np.asarray(sampling.VF_VALUES),
            "Lx": cfg.L, "Ly": cfg.L, "coef_range": np.array([cfg.lo, cfg.hi], np.float64),
            lo_name: cfg.lo, hi_name: cfg.hi, "tag": tag, "seed": int(seed),
            "num_samples": int(n_samples), "generator_version": GENERATOR_VERSION,
            "max_residual": worst, "residual_tol": RESIDUAL_TOL,
            "residual_checked": int(checked), "residual_stride": RESIDUAL_STRIDE,
            **stats,
        })
        if cfg.pde == "helmholtz":
            writer.attrs["max_abs_u"] = HELMHOLTZ_MAX_U
        attrs = dict(writer.attrs)
    dt = time.perf_counter() - t0
    log.info("wrote %s: %d samples in %.1f s (%.0f samples/s), max residual %.2e",
             path, n_samples, dt, n_samples / dt, worst)
    return attrs


# --- command line ------------------------------------------------------------------------------

def build_parser(pde: str) -> argparse.ArgumentParser:
    spec = PDE_SPECS[pde]
    p = argparse.ArgumentParser(
        description=f"Generate train/val/test HDF5 datasets of {spec['title']} on the periodic "
                    f"unit square (spectral solves; files {pde}_{{split}}_{{tag}}.h5).")
    p.add_argument("--ntrain", type=int, default=100, help="number of training samples")
    p.add_argument("--nval", type=int, default=25, help="number of validation samples")
    p.add_argument("--ntest", type=int, default=25, help="number of test samples")
    p.add_argument("--n", type=int, default=128, help="grid size n x n (even, >= %d)" % MIN_N)
    p.add_argument("--ng", type=int, default=144,
                   help="number of Gaussians in the source lattice (a perfect square)")
    p.add_argument("--sparse", action="store_true",
                   help="switch each Gaussian on with probability 1 - vf, vf in "
                        "{0.2, 0.4, 0.6, 0.8} (default: all Gaussians on)")
    p.add_argument("--datapath", default="./",
                   help="existing, writable directory to write the files to")
    lo, hi = spec["flags"]
    p.add_argument(f"--{lo}", type=spec["type"], default=spec["defaults"][0],
                   help=f"lower end of the range: {spec['range_help']}")
    p.add_argument(f"--{hi}", type=spec["type"], default=spec["defaults"][1],
                   help=f"upper end of the range: {spec['range_help']}")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed; same seed and arguments give identical files")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--workers", type=int, default=2, help="number of worker processes")
    p.add_argument("--chunk_size", type=int, default=128,
                   help=f"samples per work unit and write (a multiple of {BLOCK}); "
                        "bounds memory, does not change the result")
    return p


def validate(pde: str, args) -> GenConfig:
    """Check the arguments; raise DataError with a one-line message for the first problem."""
    spec = PDE_SPECS[pde]
    lo_name, hi_name = spec["flags"]
    lo, hi = getattr(args, lo_name), getattr(args, hi_name)
    for name in ("ntrain", "nval", "ntest"):
        if getattr(args, name) <= 0:
            raise DataError(f"--{name} must be positive (got {getattr(args, name)})")
    if args.n < MIN_N or args.n % 2:
        raise DataError(f"--n must be even and >= {MIN_N} (got {args.n})")
    m = math.isqrt(max(args.ng, 0))
    if args.ng <= 0 or m * m != args.ng:
        raise DataError(f"--ng must be a positive perfect square (got {args.ng})")
    if not (math.isfinite(lo) and math.isfinite(hi)):
        raise DataError(f"--{lo_name} and --{hi_name} must be finite")
    if lo > hi:
        raise DataError(f"--{lo_name} ({lo:g}) must not exceed --{hi_name} ({hi:g})")
    if pde == "poisson" and lo <= 0:
        raise DataError(f"--e1 must be positive: K needs positive eigenvalues (got {lo:g})")
    if pde == "ad" and lo <= 0:
        raise DataError(f"advection-to-diffusion ratio range must be positive (got --adr1 {lo:g})")
    if pde == "helmholtz" and lo < 0:
        raise DataError(f"--o1 must be >= 0 (got {lo})")
    if args.workers < 1:
        raise DataError(f"--workers must be >= 1 (got {args.workers})")
    if args.chunk_size < BLOCK or args.chunk_size % BLOCK:
        raise DataError(f"--chunk_size must be a positive multiple of {BLOCK} "
                        f"(got {args.chunk_size})")
    if not 0 <= args.seed <= MAX_SEED:
        raise DataError(f"--seed must be in [0, 2**63 - 1] (got {args.seed})")
    if args.n > MAX_N:
        raise DataError(f"--n must be <= {MAX_N} (got {args.n})")
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    if args.workers > max(cpus or 1, 1):
        log.warning("--workers %d > %d CPUs: using %d (the files do not depend on it)",
                    args.workers, cpus, cpus)
        args.workers = cpus
    if not os.path.isdir(args.datapath):
        raise DataError(f"--datapath {args.datapath} is not an existing directory")
    if not os.access(args.datapath, os.W_OK | os.X_OK):
        raise DataError(f"--datapath {args.datapath} is not writable")
    if not args.overwrite:
        for split in SPLITS:
            path = dataset_path(args.datapath, pde, split, lo, hi)
            if os.path.exists(path):
                raise DataError(f"{path} exists (pass --overwrite to replace it)")
    check_resources(args, spec)
    return GenConfig(pde=pde, n=args.n, ng=args.ng, sparse=bool(args.sparse),
                     lo=float(lo), hi=float(hi))


def _gb(nbytes):
    return f"{nbytes / 1e9:.3g} GB"


def _mem_available():
    """Bytes of memory available to new allocations (Linux MemAvailable; None elsewhere)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_resources(args, spec):
    """DataError before any work if the three files cannot fit the free disk space of
    --datapath, or the workers' buffers the available memory."""
    per_sample = 4 * (2 * args.n * args.n + spec["k"] + (1 if spec["other"] else 0))
    need = per_sample * (args.ntrain + args.nval + args.ntest) * 1.01 + 2 ** 20
    free = shutil.disk_usage(args.datapath).free
    if need > free:
        raise DataError(f"the three splits need {_gb(need)} in {args.datapath}, only "
                        f"{_gb(free)} free")
    slots = 2 * args.workers if args.workers > 1 else 1
    memory = (slots * args.chunk_size * per_sample
              + args.workers * BLOCK * args.n * args.n * WORK_BYTES_PER_POINT)
    avail = _mem_available()
    if avail is not None and memory > avail:
        raise DataError(f"--n {args.n} with --workers {args.workers} --chunk_size "
                        f"{args.chunk_size} needs about {_gb(memory)} of memory, "
                        f"{_gb(avail)} available")


def remove_stale_temporaries(path):
    """Remove temporary files of `path` left by a generator that died (kill -9, power loss):
    `.{name}.{pid}-{hex}.tmp.h5` beside it whose process no longer runs."""
    d, base = os.path.split(os.path.abspath(path))
    pattern = re.compile(re.escape(f".{base}.") + r"(\d+)-[0-9a-f]+\.tmp\.h5")
    for name in os.listdir(d):
        m = pattern.fullmatch(name)
        if not m:
            continue
        try:
            os.kill(int(m.group(1)), 0)
            continue                       # its generator still runs
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        os.remove(os.path.join(d, name))
        log.info("removed %s (left by an interrupted run)", os.path.join(d, name))


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt


def run(pde: str, args) -> dict:
    """Generate the three splits; returns {split: path}."""
    cfg = validate(pde, args)
    for split in SPLITS:
        remove_stale_temporaries(dataset_path(args.datapath, pde, split, cfg.lo, cfg.hi))
    log.info("%s: %s", pde, {k: v for k, v in vars(args).items()})
    out = {}
    spec = PDE_SPECS[pde]
    with contextlib.ExitStack() as stack:
        pool = (stack.enter_context(WorkerPool(args.workers, args.chunk_size, cfg.n, spec["k"],
                                               spec["other"]))
                if args.workers > 1 else None)
        for split in SPLITS:
            path = dataset_path(args.datapath, pde, split, cfg.lo, cfg.hi)
            generate_split(cfg, split, getattr(args, f"n{split}"), path, args.seed,
                           workers=args.workers, chunk_size=args.chunk_size,
                           overwrite=args.overwrite, pool=pool)
            out[split] = path
    return out


def main(pde: str, argv=None) -> None:
    """Entry point of the generator scripts: one-line error and exit status 2 on misuse."""
    def body(argv):
        args = build_parser(pde).parse_args(argv)
        configure_malloc()
        signal.signal(signal.SIGTERM, _raise_interrupt)   # SIGTERM cleans up like Ctrl-C
        run(pde, args)
    run_cli(body, argv, interrupted="interrupted (no partial file was left)")
