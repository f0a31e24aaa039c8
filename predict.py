"""Predict solutions with a pre-trained model for the sources and coefficients of an HDF5 file.

    python predict.py --weights pretrained/poisson_k1_5/model.pt --input data.h5 --out pred.h5 \
        [--device auto|cpu|cuda] [--batch_size 64] [--overwrite]

The input is a split file (DESIGN.md section 4): `fields` (N, 2, n, n) [source, solution] or
(N, 1, n, n) [source] and `tensor` (N, k) in the layout of its PDE (and `coef_field`
(N, c, n, n) for a PDE whose coefficient is a field, e.g. Darcy's a). The model (any checkpoint
of this code: model.safetensors, model.pt, ckpt_best.tar) must be one of that PDE (or a
mixed-physics model trained on it) and the grid one it can take.
Writes --out atomically: `prediction` (N, n, n) float32 and `tensor` (N, k), and, when the
input holds solutions, `rel_l2` (N,) with the relative L2 error of every sample, whose mean
and median are printed. Exit status 2 with one `error: ...` line for a bad input.
"""
import argparse
import logging
import os

import h5py
import numpy as np

from utils.malloc_tuning import configure_malloc


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", required=True, help="model.safetensors, model.pt or a checkpoint "
                   "(ckpt_best.tar)")
    p.add_argument("--input", required=True, help="HDF5 file with fields (N, 1|2, n, n), tensor")
    p.add_argument("--out", required=True, help="output HDF5 file")
    p.add_argument("--device", default="auto", help="auto (CUDA if available), cpu, cuda, cuda:1")
    p.add_argument("--batch_size", type=int, default=64, help="samples per forward pass")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    return p


def check_compatible(model, path, pde_attr, k, grid):
    """One-line DataError when the file's PDE, coefficient count or grid does not fit."""
    from utils import pdes
    from utils.errors import DataError

    # the file's `pde` attribute (generator files have one), else its name prefix
    try:
        pde = pdes.of_file(path, pde_attr).name
    except pdes.UnknownPDE as e:
        raise DataError(str(e)) from None
    if pde not in model.info["coefficients"]:
        raise DataError(f"{model.path} is a {model.pde} model (input channels "
                        f"{model.info['channels']}) but {path} holds "
                        f"{pde} data with {k} coefficient columns")
    columns = model.info["coefficients"][pde]
    if k != len(columns):
        raise DataError(f"{path} has {k} coefficient columns but {pde} needs {len(columns)} "
                        f"{columns} (model {model.path})")
    model.check_grid(*grid)
    return pde


def warn_if_shifted(model, path, h5):
    """Log a warning when the file's coefficient range or grid differs from the training data."""
    from utils.checkpoint import plain

    train = model.info.get("data", [{}])[0]
    rng = h5.attrs.get("coef_range")
    if rng is not None and train.get("coef_range") is not None and \
            not np.allclose(plain(rng), train["coef_range"]):
        logging.warning("%s: coefficient range %s differs from the training range %s: "
                        "zero-shot prediction outside the training distribution", path,
                        plain(rng), train["coef_range"])


def main(argv=None):
    configure_malloc()
    args = build_parser().parse_args(argv)
    from utils.errors import DataError, UserError
    from utils.fileio import atomic_path, writing
    from utils.h5io import SplitFile, check_finite
    from utils.pretrained import load_pretrained

    if args.batch_size < 1:
        raise UserError(f"--batch_size must be >= 1, got {args.batch_size}")
    if os.path.exists(args.out) and not args.overwrite:
        raise DataError(f"{args.out} exists (pass --overwrite to replace it)")
    if os.path.exists(args.out) and os.path.exists(args.input) and \
            os.path.samefile(args.out, args.input):
        raise DataError("--out must not be the --input file")
    model = load_pretrained(args.weights, device=args.device)
    with SplitFile(args.input, "input file", need_tensor=True, need_solution=False) as sf:
        n, grid, has_solution = sf.n_samples, sf.shape, sf.has_solution
        pde = check_compatible(model, args.input, sf.pde, sf.n_inputs, grid)
        warn_if_shifted(model, args.input, sf.h5)
        logging.info("%s: %d samples on a %dx%d grid (%s); %r", args.input, n, *grid, pde, model)
        rel = np.empty(n, np.float64) if has_solution else None
        with writing(args.out):
            os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with atomic_path(args.out) as tmp, h5py.File(tmp, "w") as out:
            pred_ds = out.create_dataset("prediction", (n, *grid), dtype="<f4",
                                         chunks=(1, *grid))
            tensor_ds = out.create_dataset("tensor", (n, sf.n_tensor), dtype="<f4")
            for i in range(0, n, args.batch_size):   # bounded memory: one batch in flight
                j = min(i + args.batch_size, n)
                fields, tensor = sf.read(slice(i, j))
                # the model's coefficient inputs: the tensor rows, or the coefficient fields
                coef = tensor if sf.input_dataset == "tensor" else sf.read_coef_field(slice(i, j))
                check_finite(args.input, i, fields, coef)   # no prediction or error from NaN
                u = model.solve(fields[:, 0], coef, pde=pde, batch_size=args.batch_size)
                pred_ds[i:j], tensor_ds[i:j] = u, tensor
                if has_solution:
                    ref = fields[:, 1].reshape(j - i, -1).astype(np.float64)
                    err = u.reshape(j - i, -1) - ref
                    rel[i:j] = np.linalg.norm(err, axis=1) / np.maximum(
                        np.linalg.norm(ref, axis=1), np.finfo(np.float32).tiny)
            out.attrs.update(dict(weights=os.path.abspath(args.weights), pde=pde,
                                  input=os.path.abspath(args.input), n=grid[1],
                                  num_samples=n))
            if has_solution:
                out.create_dataset("rel_l2", data=rel.astype(np.float32))
                out.attrs.update(dict(rel_l2_mean=float(rel.mean()),
                                      rel_l2_median=float(np.median(rel))))
    if has_solution:
        print(f"relative L2 error: mean {rel.mean():.4f}, median {np.median(rel):.4f} over {n} "
              f"samples ({args.out})")
    else:
        print(f"wrote {n} predictions to {args.out}")


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main)
