"""Mixed-physics data (DESIGN.md section 5): one 7-channel layout for the scalar-coefficient PDEs.

Every PDE is written as  -div(K grad u) + v . grad u - omega u = f  and its coefficients as the
6 columns [K11, K22, K12, v1, v2, omega]; the registry (utils/pdes.py, `mixed`) says which
`tensor` column of each PDE fills which of them (absent terms are 0), e.g. Helmholtz
(t0, t1) -> [t0, t0, 0, 0, 0, t1]. So the model input is [f, K11, K22, K12, v1, v2, omega]
(in_dim 7) whatever the PDE, and one train set is made of several files
(`train_path: [poisson..., ad..., helmholtz...]`). A file's PDE is its `pde` attribute.

Scales over the union of the train files (10 entries, DESIGN.md order):
[source_scale, 6 coefficient scales, sol_scale, Lx, Ly] with source_scale = median over ALL
samples of ||f||_2 (Lx/n)(Ly/n), sol_scale = median over all samples of max|u|, and the scale
of a coefficient channel = median |value| over the samples whose PDE HAS that term (a
Poisson sample's v = 0 is an absent term, not a small velocity; with the plain median over the
union, v and omega would get scale 0 -> 1 whenever fewer than half of the samples have them).

    python utils/mixed_data.py data/demo/poisson_train_k1_5.h5 data/demo/ad_train_adr0p2_1.h5 \
        data/demo/helmholtz_train_o1_10.h5 --out data/demo/mixed_train_scales.npy
"""
import argparse
import logging
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import pdes  # noqa: E402
from utils.cli import cli  # noqa: E402
from utils.errors import MixedDataError  # noqa: E402,F401  (re-export: raised here)
from utils.fileio import save_npy_atomic  # noqa: E402
from utils.get_scale import open_train_split, sample_stats  # noqa: E402

logger = logging.getLogger(__name__)

MIXED_CHANNELS = ("f",) + pdes.MIXED_COLUMNS
N_MIXED_COEF = len(MIXED_CHANNELS) - 1


def pde_of(path, n_tensor, attr=None):
    """Registered PDE name of a split file: its `pde` attribute `attr` (or, for a file
    without one, its name prefix; utils.pdes.of_file), checked against its coefficient
    width `n_tensor`. MixedDataError when neither names a PDE or the width does not fit."""
    try:
        spec = pdes.of_file(path, attr)
    except pdes.UnknownPDE as e:
        raise MixedDataError(f"{path}: {e}") from None
    if int(n_tensor) != spec.k:
        raise MixedDataError(f"{path}: a {spec.name} file needs {spec.k} coefficient columns "
                             f"{list(spec.coefficients)}, found {n_tensor}")
    return spec.name


def to_mixed(pde, tensor):
    """Coefficients (B, k) of `pde` -> (B, 6) [K11, K22, K12, v1, v2, omega], same dtype."""
    tensor = np.asarray(tensor)
    try:
        pairs = pdes.get(pde).to_mixed_columns()
    except pdes.UnknownPDE as e:
        raise MixedDataError(str(e)) from None
    out = np.zeros((tensor.shape[0], N_MIXED_COEF), dtype=tensor.dtype)
    for j, i in pairs:
        out[:, j] = tensor[:, i]
    return out


class CoefficientMap:
    """Picklable callable (B, k) -> (B, 6) for one file's PDE (a DataLoader worker may copy it)."""

    n_out = N_MIXED_COEF

    def __init__(self, pde):
        self.pde = pde

    def __call__(self, tensor):
        return to_mixed(self.pde, tensor)


def coefficient_map(path, n_tensor, pde_attr=None):
    """CoefficientMap of the split file `path` from its coefficient width `n_tensor` and its
    `pde` attribute `pde_attr` (utils.h5io.SplitFile.pde; None: not checked)."""
    pde = pde_of(path, n_tensor, pde_attr)
    try:
        pdes.get(pde).to_mixed_columns()      # a PDE without a mixed layout fails here
    except pdes.UnknownPDE as e:
        raise MixedDataError(f"{path}: {e}") from None
    return CoefficientMap(pde)


def _file_stats(path):
    """PDE, grid, per-sample ||f||_2 and max|u|, and mixed coefficients of one split file."""
    with open_train_split(path) as split:
        grid, src_norm, sol_max, tensor = sample_stats(split)
        pde = pde_of(path, split.n_tensor, split.pde)
    return pde, grid, src_norm, sol_max, to_mixed(pde, tensor)


def mixed_scales(train_paths, Lx=1.0, Ly=1.0):
    """Scales (10,) float64 over the union of the train files (see module docstring)."""
    if not train_paths:
        raise MixedDataError("no train files for the mixed scales")
    stats = [_file_stats(p) for p in train_paths]
    grids = {s[1] for s in stats}
    if len(grids) != 1:
        raise MixedDataError(f"train files have different grids {sorted(grids)}")
    ny, nx = grids.pop()
    src = np.concatenate([s[2] for s in stats])
    sol = np.concatenate([s[3] for s in stats])
    coef_scales = []
    for j in range(N_MIXED_COEF):
        vals = np.concatenate([np.abs(s[4][:, j]) for s in stats
                               if pdes.get(s[0]).mixed[j] is not None] or [np.zeros(1)])
        coef_scales.append(np.median(vals))
    return np.concatenate([[np.median(src) * (Lx / nx) * (Ly / ny)], coef_scales,
                           [np.median(sol), Lx, Ly]])


@cli(user_errors=(OSError,))
def main(argv=None):
    p = argparse.ArgumentParser(description="Scales of a mixed-physics train set (union).")
    p.add_argument("train_paths", nargs="+", help="train split files of the PDEs to mix")
    p.add_argument("--out", required=True, help="output .npy")
    p.add_argument("--Lx", type=float, default=1.0)
    p.add_argument("--Ly", type=float, default=1.0)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    if os.path.exists(args.out) and not args.overwrite:
        raise MixedDataError(f"{args.out} exists (pass --overwrite to replace it)")
    scales = mixed_scales(args.train_paths, args.Lx, args.Ly)
    save_npy_atomic(args.out, scales)
    logger.info("wrote %s: %s", args.out, np.array2string(scales, precision=6))


if __name__ == "__main__":
    main()
