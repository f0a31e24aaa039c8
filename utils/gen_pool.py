"""Chunked, parallel generation of one split and its checks (DESIGN.md sections 3-4).

How a split is made:
1. A split-level shuffle fixes which sparsity level vf each stored position gets (equal
   shares, shuffled), so the stored order is already mixed.
2. Positions are cut into chunks (--chunk_size) that worker processes generate; inside a
   chunk, samples are computed in fixed blocks of BLOCK positions by the PDE's recipe
   (utils/gen_recipes.py, named by the registry utils/pdes.py). Every random number of a
   sample is a function of (seed, pde, split, range, position) only (utils/sampling.py) and
   blocks are aligned to absolute positions, so the file is bit identical whatever --workers
   or --chunk_size.
3. Solves are in float64 up to the inverse FFT of u, which runs in float32, the stored
   precision. Stored coefficients are rounded to float32 before the solve, so the stored
   (f, u, t) are consistent up to float32 rounding of f and u.
4. On every RESIDUAL_STRIDE-th position (1 per block) the PDE residual of the float64
   solution is checked in float64 (RESIDUAL_TOL), and the stored float32 u against it
   (FLOAT32_TOL); a failure stops the run. The worst residual goes in the attribute
   `max_residual`.
5. The parent process writes chunks in order to a temporary HDF5 file (bounded memory: at
   most 2 chunks per worker in flight, in shared memory) and renames it when complete.
"""
from __future__ import annotations

import collections
import logging
import math
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from utils import pdes, sampling, spectral
from utils.errors import DataError
from utils.fileio import writing
from utils.gen_recipes import GenConfig
from utils.h5io import SplitWriter
from utils.malloc_tuning import configure_malloc
from utils.run_guard import die_with_parent

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1.0"
BLOCK = 32                  # samples computed together; chunk sizes are multiples of it
RESIDUAL_STRIDE = 32        # check the residual of every 32nd position (1 per block)
RESIDUAL_TOL = 1e-9         # relative max-norm residual allowed in float64
FLOAT32_TOL = 1e-6          # float32 inverse FFT of u vs float64, relative max norm


def _out_shapes(spec, rows, n, lead=()):
    """Shapes of generate_chunk's `out` arrays for `rows` samples (None: not stored)."""
    return ((*lead, rows, 2, n, n), (*lead, rows, spec.k),
            (*lead, rows, 1) if spec.other else None,
            (*lead, rows, spec.n_field, n, n) if spec.n_field else None)


def generate_chunk(cfg: GenConfig, key: int, start: int, vf: np.ndarray, out=None) -> dict:
    """Samples of positions start .. start + len(vf) - 1 (start a multiple of BLOCK).

    Results go to `out` = (fields (>= B, 2, n, n), tensor (>= B, k), other (>= B, 1) or None,
    coefficient field (>= B, c, n, n) or None) float32 arrays (new ones if None). Returns
    dict(out=..., max_residual, checked (number of residual checks), stats (dict of per-PDE
    summaries)).
    """
    assert start % BLOCK == 0
    B = len(vf)
    spec = pdes.get(cfg.pde)
    recipe = pdes.fn(spec.recipe)
    if out is None:
        out = tuple(None if sh is None else np.empty(sh, np.float32)
                    for sh in _out_shapes(spec, B, cfg.n))
    fields, tensor, other, coef_field = out
    worst, checked, stats = 0.0, 0, {}
    for b0 in range(0, B, BLOCK):
        sl = slice(b0, min(b0 + BLOCK, B))
        pos = np.arange(start + sl.start, start + sl.stop)
        blk = recipe(cfg, key, pos, vf[sl])
        # Checks on a sample of the block, in float64: the PDE residual of the float64
        # solution, and the float32 transform of the stored u against it.
        chk = np.flatnonzero(pos % RESIDUAL_STRIDE == 0)
        u64 = spectral.irfft2(blk.u_hat[chk], cfg.n)
        coefs = blk.tensor[chk] if blk.field is None else blk.field[chk]
        res = spectral.residual(cfg.pde, blk.f[chk], u64, coefs, cfg.L, cfg.L)
        dev = np.abs(blk.u[chk] - u64).max(axis=(1, 2)) / np.abs(u64).max(axis=(1, 2))
        if not np.all(res <= RESIDUAL_TOL):   # also catches NaN
            bad = int(np.nanargmax(np.where(np.isnan(res), np.inf, res)))
            raise DataError(f"{cfg.pde}: PDE residual {res[bad]:.3e} > {RESIDUAL_TOL:g} at "
                            f"position {int(pos[chk[bad]])}")
        if not np.all(dev <= FLOAT32_TOL):
            raise DataError(f"{cfg.pde}: float32 solution deviates by {np.nanmax(dev):.2e} "
                            f"(> {FLOAT32_TOL:g}) from the float64 one")
        worst, checked = max(worst, float(res.max(initial=0.0))), checked + len(chk)
        fields[sl, 0], fields[sl, 1], tensor[sl] = blk.f, blk.u, blk.tensor
        if other is not None:
            other[sl, 0] = blk.other
        if coef_field is not None:
            coef_field[sl] = blk.field
        _merge_stats(stats, blk.stats)
    return dict(out=out, max_residual=worst, checked=checked, stats=stats)


def _merge_stats(acc: dict, new: dict) -> None:
    """Accumulate summaries: keys 'max_*' by maximum, the others by sum."""
    for k, v in new.items():
        acc[k] = max(acc.get(k, v), v) if k.startswith("max") else acc.get(k, 0) + v


# --- worker processes: results travel through shared memory, not pipes ---------------------------

_SLOTS = None      # per worker process: generate_chunk's `out` arrays, shape (slots, chunk, ...)


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
    three splits of a run (same PDE, n and chunk size).
    """

    def __init__(self, workers: int, chunk_size: int, n: int, pde: str):
        self.n_slots, self.chunk_size = 2 * workers, chunk_size
        shapes = _out_shapes(pdes.get(pde), chunk_size, n, lead=(self.n_slots,))
        # the slots live in a file-backed arena (/dev/shm or the temp dir): creating it is a
        # write, which a full disk or a file-size limit refuses (StorageError, exit status 3)
        with writing("the workers' shared-memory buffers"):
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
    spec = pdes.get(cfg.pde)
    tag = spec.tag(cfg.lo, cfg.hi)
    key = sampling.dataset_key(seed, cfg.pde, split, tag)
    vf = sampling.vf_labels(n_samples, np.random.default_rng(
        sampling.dataset_key(seed, cfg.pde, split, tag, "shuffle")))
    starts = list(range(0, n_samples, chunk_size))
    worst, checked, stats = 0.0, 0, {}
    t0 = time.perf_counter()
    bar = _progress(n_samples, f"{cfg.pde} {split}")
    with SplitWriter(path, n_samples, cfg.n, spec.k, spec.other, overwrite,
                     n_field=spec.n_field) as writer:
        def consume(start, res, out):
            nonlocal worst, checked
            B = min(chunk_size, n_samples - start)
            writer.write(start, out[0][:B], out[1][:B], None if out[2] is None else out[2][:B],
                         None if out[3] is None else out[3][:B])
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
            with WorkerPool(workers, chunk_size, cfg.n, cfg.pde) as own:
                own.run(cfg, key, starts, vf, consume)
        bar.close()
        lo_name, hi_name = spec.coef_range.flags
        writer.attrs.update({
            "pde": cfg.pde, "split": split, "equation": spec.equation,
            "n": cfg.n, "ng": cfg.ng, "sigma": sampling.SIGMA, "spacing": 2 * sampling.SIGMA,
            "sparse": bool(cfg.sparse), "vf_values": np.asarray(sampling.VF_VALUES),
            "Lx": cfg.L, "Ly": cfg.L, "coef_range": np.array([cfg.lo, cfg.hi], np.float64),
            lo_name: cfg.lo, hi_name: cfg.hi, "tag": tag, "seed": int(seed),
            "num_samples": int(n_samples), "generator_version": GENERATOR_VERSION,
            "max_residual": worst, "residual_tol": RESIDUAL_TOL,
            "residual_checked": int(checked), "residual_stride": RESIDUAL_STRIDE,
            **stats,
        })
        writer.attrs.update({name: name in cfg.switches for name, _ in spec.extra_flags})
        writer.attrs.update(spec.extra_attrs)
        attrs = dict(writer.attrs)
    dt = time.perf_counter() - t0
    log.info("wrote %s: %d samples in %.1f s (%.0f samples/s), max residual %.2e",
             path, n_samples, dt, n_samples / dt, worst)
    return attrs
