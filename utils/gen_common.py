"""Command line of the dataset generators (utils/gen_data_{pde}.py call `main(pde)`).

The arguments, their validation (one-line `DataError`, exit 2, before any work), the disk and
memory estimate, the clean-up of temporaries left by a killed run, and the loop over the three
splits. What differs between the PDEs (range flags and their bounds, help text) comes from the
registry utils/pdes.py; the recipes are in utils/gen_recipes.py, the chunked parallel
generation and its checks in utils/gen_pool.py (DESIGN.md section 3).
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import math
import os
import re
import shutil
import signal

from utils import pdes
from utils.cli import run_cli
from utils.errors import DataError
from utils.gen_pool import BLOCK, WorkerPool, generate_split
from utils.gen_recipes import GenConfig
from utils.h5io import dataset_path, SPLITS
from utils.malloc_tuning import configure_malloc, memory_available

log = logging.getLogger(__name__)

MIN_N = 32
MAX_N = 16384               # one sample (2 n^2 float32) must fit an HDF5 chunk (< 4 GiB)
MAX_SEED = 2 ** 63 - 1      # stored as an int64 attribute
WORK_BYTES_PER_POINT = 8 * 24   # a worker's float64/complex work arrays per grid point of a block


# --- command line ------------------------------------------------------------------------------

def build_parser(pde: str) -> argparse.ArgumentParser:
    spec = pdes.get(pde)
    p = argparse.ArgumentParser(
        description=f"Generate train/val/test HDF5 datasets of {spec.summary} on the periodic "
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
    rng = spec.coef_range
    lo, hi = rng.flags
    p.add_argument(f"--{lo}", type=rng.type, default=rng.defaults[0],
                   help=f"lower end of the range: {rng.help}")
    p.add_argument(f"--{hi}", type=rng.type, default=rng.defaults[1],
                   help=f"upper end of the range: {rng.help}")
    for flag, text in spec.extra_flags:
        p.add_argument(f"--{flag}", action="store_true", help=text)
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
    spec = pdes.get(pde)
    lo_name, hi_name = spec.coef_range.flags
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
    rng = spec.coef_range
    if lo < rng.lo_min or (lo == rng.lo_min and not rng.lo_min_inclusive):
        raise DataError(rng.lo_error.format(lo=lo))
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
    return GenConfig(pde=spec.name, n=args.n, ng=args.ng, sparse=bool(args.sparse),
                     lo=float(lo), hi=float(hi),
                     switches=frozenset(f for f, _ in spec.extra_flags if getattr(args, f)))


def _gb(nbytes):
    return f"{nbytes / 1e9:.3g} GB"


def check_resources(args, spec):
    """DataError before any work if the three files cannot fit the free disk space of
    --datapath, or the workers' buffers the available memory."""
    per_sample = 4 * ((2 + spec.n_field) * args.n * args.n + spec.k + spec.other)
    need = per_sample * (args.ntrain + args.nval + args.ntest) * 1.01 + 2 ** 20
    free = shutil.disk_usage(args.datapath).free
    if need > free:
        raise DataError(f"the three splits need {_gb(need)} in {args.datapath}, only "
                        f"{_gb(free)} free")
    slots = 2 * args.workers if args.workers > 1 else 1
    memory = (slots * args.chunk_size * per_sample
              + args.workers * BLOCK * args.n * args.n * WORK_BYTES_PER_POINT)
    avail = memory_available()
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
    with contextlib.ExitStack() as stack:
        pool = (stack.enter_context(WorkerPool(args.workers, args.chunk_size, cfg.n, pde))
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
