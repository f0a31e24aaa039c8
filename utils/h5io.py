"""Split files (DESIGN.md section 4): their names, and THE reader and writer of their layout.

Layout of `{pde}_{split}_{tag}.h5`: `fields` (N, 2, n, n) float32 [source f, solution u],
`tensor` (N, k) float32 coefficients, optional `other` (N, 1); root attributes such as `pde`.

- Names: `dataset_path`, `scales_path` / `scales_file_for` (the scales beside the train split).
- Reading: `SplitFile` opens a split ONCE, checks its layout (one-line `DataError` naming what
  was found) and reads sample slices from the same handle; `split_info` is its header only.
- Writing: `SplitWriter` writes a split chunk by chunk into a temporary file that is renamed
  onto the final name only when complete (`utils.fileio.atomic_path`), so an interrupted run
  never leaves a truncated dataset under the final name and never damages an existing one.
"""
from __future__ import annotations

import contextlib
import os
import sys

import h5py
import numpy as np

from utils.errors import DataError
from utils.fileio import atomic_path, save_npy_atomic  # noqa: F401  (save_npy_atomic: re-export)

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


def scales_file_for(train_path: str) -> str:
    """Scales file of a train split, beside it:
    'data/x/poisson_train_k1_5.h5' -> 'data/x/poisson_train_k1_5_scales.npy'."""
    root, _ = os.path.splitext(train_path)
    return root + "_scales.npy"


def scales_path(datapath: str, pde: str, lo: float, hi: float) -> str:
    """Path of the scales of the train split, e.g. 'data/poisson_train_k1_5_scales.npy'."""
    return scales_file_for(dataset_path(datapath, pde, "train", lo, hi))


# --------------------------------------------------------------------------------------------
# reading
# --------------------------------------------------------------------------------------------
class SplitFile:
    """One split file, opened once (read-only) and checked; use as a context manager.

        with SplitFile(path, "train file") as sf:
            sf.n_samples, sf.shape, sf.n_tensor, sf.pde    # header, checked at open
            fields, tensor = sf.read(slice(0, 64))          # (64, 2, H, W), (64, k) float32

    Args:
        path: the HDF5 file.
        what: how error messages name it ('train file', 'data file', ...).
        need_tensor: a missing `tensor` dataset is an error (else it reads as k = 0).
        need_solution: False also accepts `fields` (N, 1, H, W) [source] (predict.py input).
    Attributes:
        n_samples, shape (H, W), n_tensor k, has_other, has_solution, pde (root attribute
        `pde` or None), h5 (the open h5py.File).
    Raises:
        DataError: missing/unreadable file, or `fields` not (N, 2, H, W), or `tensor` not (N, k).
    """

    def __init__(self, path, what="data file", need_tensor=False, need_solution=True):
        if not path:
            raise DataError(f"no {what} given in the config")
        if not os.path.exists(path):
            raise DataError(f"{what} not found: {path} (does not exist)")
        if not os.path.isfile(path):
            raise DataError(f"{what} {path} is not a file")
        try:
            self.h5 = h5py.File(path, "r")
        except OSError as e:
            raise DataError(f"{what} {path} is not a readable HDF5 file ({e})") from None
        self.path = path
        try:
            self._check(what, need_tensor, need_solution)
        except BaseException:
            self.h5.close()
            raise

    def _check(self, what, need_tensor, need_solution=True):
        f, path = self.h5, self.path
        if "fields" not in f:
            found = ", ".join(sorted(f.keys())) or "none"
            raise DataError(f"{what} {path} has no dataset 'fields' (found: {found})")
        shape = f["fields"].shape
        if len(shape) != 4 or shape[1] not in ((2,) if need_solution else (1, 2)):
            raise DataError(f"{what} {path}: 'fields' must be (N, 2, n, n) [source, solution]"
                            f"{'' if need_solution else ' or (N, 1, n, n) [source]'}, "
                            f"found {tuple(shape)}")
        self.has_solution = shape[1] == 2
        self.n_samples, self.shape = shape[0], (shape[2], shape[3])
        self.n_tensor = 0
        if "tensor" in f:
            tshape = f["tensor"].shape
            if len(tshape) != 2 or tshape[0] != shape[0]:
                raise DataError(f"{what} {path}: 'tensor' must be (N={shape[0]}, k), "
                                f"found {tuple(tshape)}")
            self.n_tensor = tshape[1]
        elif need_tensor:
            found = ", ".join(sorted(f.keys()))
            raise DataError(f"{what} {path} has no dataset 'tensor' (found: {found})")
        self.has_other = "other" in f
        pde = f.attrs.get("pde")
        self.pde = pde.decode() if isinstance(pde, bytes) else (None if pde is None else str(pde))

    def read(self, sel, other=False):
        """Samples `sel` (a slice, or increasing row indices) as float32 arrays:
        (fields (B, 2, H, W) (or (B, 1, H, W) without solution), tensor (B, k)
        [, other (B, 1) or None])."""
        fields = np.asarray(self.h5["fields"][sel], dtype=np.float32)
        tensor = (np.asarray(self.h5["tensor"][sel], dtype=np.float32) if self.n_tensor
                  else np.zeros((len(fields), 0), np.float32))
        if not other:
            return fields, tensor
        return fields, tensor, (np.asarray(self.h5["other"][sel], np.float32)
                                if self.has_other else None)

    def close(self):
        self.h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def split_info(path, what="data file"):
    """Header of a split file (opened once, arrays not read):
    dict(n_samples, shape=(H, W), n_tensor, pde). Raises DataError like SplitFile."""
    with SplitFile(path, what) as sf:
        return dict(n_samples=sf.n_samples, shape=sf.shape, n_tensor=sf.n_tensor, pde=sf.pde)


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------


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
        # the temporary file: renamed onto `path` by __exit__ on success, removed on errors
        self._atomic = contextlib.ExitStack()
        self.tmp = self._atomic.enter_context(atomic_path(path))
        try:
            self._create(n_samples, n, k, with_other)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise

    def _create(self, n_samples, n, k, with_other):
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
        except BaseException:
            if not self._atomic.__exit__(*sys.exc_info()):
                raise
        else:   # rename on success; remove the temporary file if the body failed
            self._atomic.__exit__(exc_type, exc, tb)
        return False
