"""Dataset file names and atomic, chunked HDF5 / .npy writing (DESIGN.md section 4).

A split is written to a temporary file in the destination directory and renamed onto
`{pde}_{split}_{tag}.h5` only when complete, so an interrupted run never leaves a truncated
dataset under the final name and never damages an existing one.
"""
from __future__ import annotations

import os
import secrets

import h5py
import numpy as np

from utils.errors import DataError

PDES = ("poisson", "ad", "helmholtz")
SPLITS = ("train", "val", "test")
TAG_PREFIX = {"poisson": "k", "ad": "adr", "helmholtz": "o"}


def format_number(x: float) -> str:
    """'%g' with '.' -> 'p': 1 -> '1', 0.2 -> '0p2', 2.5 -> '2p5'."""
    return ("%g" % float(x)).replace(".", "p")


def range_tag(pde: str, lo: float, hi: float) -> str:
    """Tag of a coefficient range: k1_5 (Poisson), adr0p2_1 (AD), o1_10 (Helmholtz)."""
    if pde not in TAG_PREFIX:
        raise DataError(f"unknown pde {pde!r} (expected one of {', '.join(PDES)})")
    return f"{TAG_PREFIX[pde]}{format_number(lo)}_{format_number(hi)}"


def dataset_path(datapath: str, pde: str, split: str, lo: float, hi: float) -> str:
    """Path of a split file, e.g. dataset_path('data', 'ad', 'val', 0.2, 1) ->
    'data/ad_val_adr0p2_1.h5'."""
    if split not in SPLITS:
        raise DataError(f"unknown split {split!r} (expected one of {', '.join(SPLITS)})")
    return os.path.join(datapath, f"{pde}_{split}_{range_tag(pde, lo, hi)}.h5")


def scales_path(datapath: str, pde: str, lo: float, hi: float) -> str:
    """Path of the scales of the train split, e.g. 'data/poisson_train_k1_5_scales.npy'."""
    return os.path.join(datapath, f"{pde}_train_{range_tag(pde, lo, hi)}_scales.npy")


def _temp_name(final_path: str, suffix: str) -> str:
    """A fresh hidden name beside final_path (same file system, so os.replace is atomic)."""
    d, base = os.path.split(os.path.abspath(final_path))
    return os.path.join(d, f".{base}.{os.getpid()}-{secrets.token_hex(4)}{suffix}")


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """np.save to a temporary file beside `path`, then rename over it."""
    tmp = _temp_name(path, ".tmp.npy")
    try:
        np.save(tmp, array)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


class SplitWriter:
    """Chunked writer of one split; use as a context manager.

        with SplitWriter(path, n_samples, n, k, with_other=True) as w:
            w.write(start, fields, tensor, other)   # any contiguous slices
            w.attrs.update(...)
        # renamed onto `path` here if no exception; the temporary file is removed otherwise

    `fields` (N, 2, n, n) float32 is chunked one sample per HDF5 chunk so that training
    readers can slice samples cheaply; `tensor` (N, k) and `other` (N, 1) are float32.
    Object timestamps are off so that identical inputs give identical files.
    """

    def __init__(self, path: str, n_samples: int, n: int, k: int, with_other: bool = False,
                 overwrite: bool = False):
        if os.path.exists(path) and not overwrite:
            raise DataError(f"{path} exists (pass --overwrite to replace it)")
        self.path = path
        self.tmp = _temp_name(path, ".tmp.h5")
        # whole chunks are written at once: no chunk cache needed (it only adds copies)
        self.file = h5py.File(self.tmp, "w-", track_order=False, rdcc_nbytes=0)
        kw = dict(dtype="<f4", track_times=False)
        # The small datasets are allocated (written) first and each sample's chunk is then
        # appended in position order, so the file layout does not depend on how the writes
        # are grouped (--chunk_size): identical inputs give byte-identical files.
        self.tensor = self.file.create_dataset("tensor", data=np.zeros((n_samples, k)), **kw)
        self.other = (self.file.create_dataset("other", data=np.zeros((n_samples, 1)), **kw)
                      if with_other else None)
        self.fields = self.file.create_dataset("fields", (n_samples, 2, n, n),
                                               chunks=(1, 2, n, n), **kw)
        self.attrs = {}

    def write(self, start: int, fields: np.ndarray, tensor: np.ndarray,
              other: np.ndarray | None = None) -> None:
        stop = start + len(fields)
        fields = np.ascontiguousarray(fields, dtype="<f4")
        for i in range(len(fields)):           # one HDF5 chunk per sample, written in order
            self.fields.id.write_direct_chunk((start + i, 0, 0, 0), fields[i])
        self.tensor[start:stop] = tensor.astype(np.float32, copy=False)
        if self.other is not None:
            self.other[start:stop] = np.asarray(other, np.float32).reshape(-1, 1)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                for key, val in self.attrs.items():
                    self.file.attrs[key] = val
            self.file.close()
            if exc_type is None:
                os.replace(self.tmp, self.path)
        finally:
            if os.path.exists(self.tmp):
                os.remove(self.tmp)
        return False
