"""Split files (DESIGN.md section 4): their names, and THE reader and writer of their layout.

Layout of `{pde}_{split}_{tag}.h5`: `fields` (N, 2, n, n) float32 [source f, solution u],
`tensor` (N, k) float32 coefficients, optional `other` (N, 1), and for a PDE whose
coefficient is a field `coef_field` (N, c, n, n); root attributes such as `pde`.

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

from utils import pdes
from utils.errors import DataError
from utils.fileio import atomic_path, save_npy_atomic  # noqa: F401  (save_npy_atomic: re-export)
from utils.pdes import format_number  # noqa: F401  (re-export)

SPLITS = ("train", "val", "test")


def range_tag(pde: str, lo: float, hi: float) -> str:
    """Tag of a coefficient range in the PDE's format (utils/pdes.py), e.g. k1_5, adr0p2_1."""
    try:
        return pdes.get(pde).tag(lo, hi)
    except pdes.UnknownPDE as e:
        raise DataError(str(e)) from None


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
        `pde` or None), n_field (channels of `coef_field`, 0 without), h5 (the open h5py.File),
        input_dataset / n_inputs: where the model's coefficient channels come from ('tensor'
        or 'coef_field', the registry's layout of the file's PDE; 'tensor' for a file that
        names no registered PDE) and how many there are.
    Raises:
        DataError: missing/unreadable file, `fields` not (N, 2, H, W) with N >= 1, `tensor`
            not (N, k), `coef_field` not (N, c, H, W), a PDE that needs `coef_field` without
            it, or a dataset not of real numbers (strings, complex).
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
        if self.n_samples == 0:
            raise DataError(f"{what} {path} holds no samples ('fields' is {tuple(shape)})")
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
        for name in ("fields", "tensor", "other", "coef_field"):
            if name in f:
                _check_real(f[name], f"{what} {path}: '{name}'")
        pde = f.attrs.get("pde")
        self.pde = pde.decode() if isinstance(pde, bytes) else (None if pde is None else str(pde))
        self.n_field = 0
        if "coef_field" in f:
            cshape = f["coef_field"].shape
            if len(cshape) != 4 or cshape[0] != shape[0] or cshape[2:] != shape[2:]:
                raise DataError(f"{what} {path}: 'coef_field' must be (N={shape[0]}, c, "
                                f"{shape[2]}, {shape[3]}), found {tuple(cshape)}")
            self.n_field = cshape[1]
        try:
            self.input_dataset = pdes.of_file(path, self.pde).input_dataset
        except pdes.UnknownPDE:
            self.input_dataset = "tensor"   # a foreign file: its columns are the inputs
        if self.input_dataset == "coef_field" and not self.n_field:
            raise DataError(f"{what} {path}: a {self.pde} file needs the dataset 'coef_field' "
                            f"(N, c, n, n) (found: {', '.join(sorted(f.keys()))})")
        self.n_inputs = self.n_field if self.input_dataset == "coef_field" else self.n_tensor

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

    def read_inputs(self, sel):
        """Samples `sel` as the model reads them: (fields (B, 2, H, W), coefficient inputs:
        `tensor` rows (B, k) or `coef_field` (B, c, H, W), per `input_dataset`) float32."""
        if self.input_dataset == "tensor":
            return self.read(sel)
        return np.asarray(self.h5["fields"][sel], dtype=np.float32), self.read_coef_field(sel)

    def read_coef_field(self, sel):
        """`coef_field` (B, c, H, W) float32 of samples `sel`."""
        return np.asarray(self.h5["coef_field"][sel], dtype=np.float32)

    def close(self):
        self.h5.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


def _check_real(dataset, what):
    """DataError unless the HDF5 dataset holds real numbers (h5py would read strings of
    digits as numbers and drop imaginary parts silently)."""
    kind = dataset.dtype.kind
    if kind not in "fiu":
        found = {"S": "strings", "U": "strings", "O": "strings or objects",
                 "c": "complex numbers", "b": "booleans"}.get(kind, f"dtype {dataset.dtype}")
        raise DataError(f"{what} holds {found}, not real numbers")


def check_finite(what, first, *arrays):
    """DataError naming the first sample (counting from `first`) of `arrays` (each (B, ...),
    numpy or CPU torch) that holds NaN or inf: no error is computed from such a sample."""
    ok = np.ones(len(arrays[0]), bool)
    for a in arrays:
        ok &= np.isfinite(np.asarray(a)).reshape(len(a), -1).all(axis=1)
    if not ok.all():
        raise DataError(f"{what}: sample {first + int(np.argmin(ok))} holds NaN or inf values")


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
    readers can slice samples cheaply; `tensor` (N, k) and `other` (N, 1) are float32;
    with n_field = c > 0 the coefficient fields `coef_field` (N, c, n, n) are chunked like
    `fields`, each sample's chunk right after its `fields` chunk.
    Object timestamps are off so that identical inputs give identical files.
    """

    def __init__(self, path: str, n_samples: int, n: int, k: int, with_other: bool = False,
                 overwrite: bool = False, n_field: int = 0):
        if os.path.exists(path) and not overwrite:
            raise DataError(f"{path} exists (pass --overwrite to replace it)")
        self.path = path
        # the temporary file: renamed onto `path` by __exit__ on success, removed on errors
        self._atomic = contextlib.ExitStack()
        self.tmp = self._atomic.enter_context(atomic_path(path))
        try:
            self._create(n_samples, n, k, with_other, n_field)
        except BaseException:
            self._atomic.__exit__(*sys.exc_info())
            raise

    def _create(self, n_samples, n, k, with_other, n_field):
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
        self.coef_field = (self.file.create_dataset("coef_field", (n_samples, n_field, n, n),
                                                    chunks=(1, n_field, n, n), **kw)
                           if n_field else None)
        self.attrs = {}

    def write(self, start: int, fields: np.ndarray, tensor: np.ndarray,
              other: np.ndarray | None = None, coef_field: np.ndarray | None = None) -> None:
        stop = start + len(fields)
        fields = np.ascontiguousarray(fields, dtype="<f4")
        if self.coef_field is not None:
            coef_field = np.ascontiguousarray(coef_field, dtype="<f4")
        for i in range(len(fields)):           # one HDF5 chunk per sample, written in order
            self.fields.id.write_direct_chunk((start + i, 0, 0, 0), fields[i])
            if self.coef_field is not None:
                self.coef_field.id.write_direct_chunk((start + i, 0, 0, 0), coef_field[i])
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
