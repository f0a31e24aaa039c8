#!/usr/bin/env python
"""Normalisation scales of a train split (DESIGN.md section 5), as a function and a CLI.

    scales = [source_scale, tensor_scale_0 .. tensor_scale_{k-1}, sol_scale, Lx, Ly]
    source_scale   = median_i ||f_i||_2 * (Lx / n) * (Ly / n)
    tensor_scale_j = median_i |t_ij|        (the model's coefficient inputs: the `tensor`
                                             columns, or for a PDE whose input is a field
                                             `coef_field`, median_i mean_x |c_ij(x)|)
    sol_scale      = median_i max |u_i|

Usage: python utils/get_scale.py data/demo/poisson_train_k1_5.h5
writes data/demo/poisson_train_k1_5_scales.npy (atomically; --overwrite to replace).
"""
import argparse
import logging
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from utils.cli import cli  # noqa: E402
from utils.errors import DataError  # noqa: E402
from utils.fileio import save_npy_atomic  # noqa: E402
from utils.h5io import SplitFile, scales_file_for  # noqa: E402,F401  (scales_file_for: re-export)

log = logging.getLogger(__name__)
READ_CHUNK = 1024     # samples per read: memory stays bounded whatever the file size


def open_train_split(train_path: str) -> SplitFile:
    """The train split whose statistics are wanted (needs `fields` and `tensor`)."""
    return SplitFile(train_path, "train file", need_tensor=True)


def sample_stats(split: SplitFile):
    """Per-sample statistics of an open split file, read in slices (bounded memory), float64.

    Returns (ny, nx), src_norm (N,) = ||f_i||_2, sol_max (N,) = max|u_i|, coef (N, k): the
    `tensor` rows, or mean_x |c_ij(x)| of the coefficient fields when the PDE's model inputs
    are `coef_field` (SplitFile.input_dataset).
    """
    N = split.n_samples   # >= 1: SplitFile refuses an empty split when it opens it
    src_norm, sol_max = np.empty(N), np.empty(N)
    fields = split.input_dataset == "coef_field"
    coef = np.empty((N, split.n_inputs)) if fields else split.h5["tensor"][:].astype(np.float64)
    for s in range(0, N, READ_CHUNK):
        block = split.h5["fields"][s:s + READ_CHUNK].astype(np.float64)
        src_norm[s:s + len(block)] = np.sqrt((block[:, 0] ** 2).sum(axis=(1, 2)))
        sol_max[s:s + len(block)] = np.abs(block[:, 1]).max(axis=(1, 2))
        if fields:
            c = split.h5["coef_field"][s:s + READ_CHUNK].astype(np.float64)
            coef[s:s + len(block)] = np.abs(c).mean(axis=(2, 3))
    return split.shape, src_norm, sol_max, coef


def compute_scales(train_path: str, Lx: float = 1.0, Ly: float = 1.0) -> np.ndarray:
    """Scales (k + 4,) float64 of the train file at train_path (read in slices, float64 math)."""
    with open_train_split(train_path) as split:
        (ny, nx), src_norm, sol_max, tensor = sample_stats(split)
    bad = ~(np.isfinite(src_norm) & np.isfinite(sol_max) & np.isfinite(tensor).all(axis=1))
    if bad.any():   # NaN would propagate into every scale and switch normalisation off
        raise DataError(f"{train_path}: {int(bad.sum())} of {len(bad)} samples hold NaN or "
                        f"inf (first: sample {int(np.flatnonzero(bad)[0])}); no scales written")
    source_scale = np.median(src_norm) * (Lx / nx) * (Ly / ny)
    return np.concatenate([[source_scale], np.median(np.abs(tensor), axis=0),
                           [np.median(sol_max)], [Lx, Ly]])


@cli(user_errors=(OSError,))
def main(argv=None) -> None:
    p = argparse.ArgumentParser(description="Write the normalisation scales of a train split "
                                            "next to it ({train file}_scales.npy).")
    p.add_argument("train_path", help="a {pde}_train_{tag}.h5 file")
    p.add_argument("--Lx", type=float, default=1.0, help="domain length in x")
    p.add_argument("--Ly", type=float, default=1.0, help="domain length in y")
    p.add_argument("--out", default=None, help="output .npy (default: beside the train file)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing scales file")
    args = p.parse_args(argv)
    out = args.out or scales_file_for(args.train_path)
    if os.path.exists(out) and not args.overwrite:
        raise DataError(f"{out} exists (pass --overwrite to replace it)")
    scales = compute_scales(args.train_path, args.Lx, args.Ly)
    save_npy_atomic(out, scales)
    log.info("wrote %s: %s", out, np.array2string(scales, precision=6))


if __name__ == "__main__":
    main()
