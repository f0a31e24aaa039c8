"""Data loading: HDF5 splits (DESIGN.md section 4) -> normalised model inputs (section 5).

``get_data_loader(params, location, distributed, train) -> (loader, dataset, sampler)`` is the
entry point (published signature). Each batch is ``(X, y)``:

- ``X`` float32 (B, 1 + k, n, n): [f, t_0 .. t_{k-1} broadcast to n x n] (or, for a PDE
  whose registry input layout is a coefficient field, [f, its `coef_field` channels]),
  divided by the per-instance factor s = ||f||_2 * (Lx/n) * (Ly/n) / source_scale,
  coefficient channels further divided by their scales (DESIGN.md section 5);
- ``y`` float32 (B, 1, n, n): the solution u, not scaled.

Speed: the DataLoader hands a whole batch of indices to ``PDEDataset.__getitems__``, which reads
the rows with one HDF5 selection (a slice when the rows are contiguous, as for validation and
test) and normalises the batch with vectorised numpy; there is no per-sample Python loop. HDF5
files are opened lazily in each process (fork-safe); ``in_memory: True`` reads the split into
RAM once instead (a sweep worker keeps whole split files in memory between its trials:
``enable_split_cache``).

Training subsets: ``subsample: k`` keeps every k-th sample, as published
(N // k samples). ``n_train: n`` keeps a RANDOM subset of n samples instead: the first n entries
of one permutation of the file's rows drawn from ``seed`` alone (``training_rows``), so for one
seed the subsets of different n are nested and every run with that seed and n (fine-tuned or
from scratch, any number of ranks) sees the same samples. Validation and test splits are never
subset and never depend on the seed. ``subset_hash`` fingerprints the rows a run trains on.

Ordering: the training sampler is a ``DistributedSampler`` in every case (with one process it
has one replica), seeded with ``seed`` and re-shuffled by ``set_epoch``: W ranks with batch B/W
see, step for step, exactly the samples one process sees with batch B, and an epoch's order
does not depend on any global RNG (exact resume). Validation/test samplers split the samples
into contiguous per-rank shards without padding or dropping, so metrics summed over ranks are
exact averages over every sample.

Mixed physics (DESIGN.md section 5): with `channel_layout: mixed` each file's coefficients are
mapped to the 7-channel layout [f, K11, K22, K12, v1, v2, omega] in `PDEDataset._read_rows`
(utils/mixed_data.py), and a split given as a LIST of files is one `MultiFileDataset`; the
normalisation `normalize_inputs` takes any (B, k) coefficient array and a scales vector.
"""
import hashlib
import logging
import os
import signal
from itertools import islice

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Dataset, Sampler
from torch.utils.data.distributed import DistributedSampler

from utils.config_schema import SCHEMA, param
from utils.errors import DataError
from utils.h5io import SplitFile, split_info


# --------------------------------------------------------------------------------------------
# file inspection and scales
# --------------------------------------------------------------------------------------------
def load_scales(path, n_tensor):
    """Read a scales file [source, tensor_0 .. tensor_{k-1}, sol, Lx, Ly]; zeros read as 1.

    Returns float64 array of length k + 4. Raises DataError if missing or of the wrong length.
    """
    if not path:
        raise DataError("no scales_path in the config (needed for the per-instance normalisation)")
    if not os.path.isfile(path):
        raise DataError(f"scales file not found: {path}")
    try:
        scales = np.load(path)
    except (OSError, ValueError) as e:
        raise DataError(f"cannot read scales file {path} ({e})") from e
    return check_scales(scales, n_tensor, f"scales file {path}")


def check_scales(scales, n_tensor, what="scales"):
    """Scales as a float64 vector of length k + 4 (zeros read as 1); DataError otherwise.
    `what` names their origin in the message (a file, the config key, a checkpoint)."""
    try:
        scales = np.asarray(scales, dtype=np.float64).ravel()
    except (TypeError, ValueError) as e:
        raise DataError(f"{what} is not a list of numbers ({e})") from e
    expected = n_tensor + 4
    if scales.size != expected:
        raise DataError(f"{what} has {scales.size} entries, expected {expected} "
                        f"= [source, {n_tensor} tensor, sol, Lx, Ly] for data with {n_tensor} "
                        f"coefficient columns")
    if not np.all(np.isfinite(scales)):
        raise DataError(f"{what} holds non-finite values: {scales.tolist()}")
    if np.any(scales < 0):   # a negative scale would flip the inputs' signs
        raise DataError(f"{what} holds negative values: {scales.tolist()}")
    return np.where(scales == 0, 1.0, scales)


def normalize_inputs(source, tensor, scales, measure, ref_measure=None):
    """Per-instance normalisation of DESIGN.md section 5, vectorised over the batch.

    Args:
        source: (B, H, W) source f on the grid.
        tensor: (B, k) coefficients t (broadcast over the grid), or (B, k, H, W) coefficient
            fields (a PDE whose registry input layout is 'coef_field', e.g. Darcy's a(x)).
        scales: (k + 4,) [source_scale, tensor_scale_0.., sol_scale, Lx, Ly], zeros read as 1.
        measure: cell area (Lx/W) * (Ly/H) of this grid.
        ref_measure: cell area of the grid the scales were computed on (the training grid);
            None: `measure`. For a test grid of another resolution the norm is rescaled to
            ||f||_2 * sqrt(measure * ref_measure), which equals the published
            ||f||_2 * measure on the training grid and keeps the input resolution-independent.
    Returns:
        X float32 (B, 1 + k, H, W) = [f, t broadcast] / s, coefficient channels / their scales,
        with s = ||f||_2 * measure / source_scale (the norm in float64).
    """
    if ref_measure is None:
        ref_measure = measure
    b, h, w = source.shape
    k = tensor.shape[1]
    norm = np.sqrt(np.einsum("bij,bij->b", source, source, dtype=np.float64))
    s = norm * np.sqrt(measure * ref_measure) / scales[0]
    s = np.where(s > 0, s, 1.0)  # an all-zero source has nothing to normalise
    x = np.empty((b, 1 + k, h, w), dtype=np.float32)
    np.multiply(source, (1.0 / s).astype(np.float32)[:, None, None], out=x[:, 0])
    if tensor.ndim == 2:    # constant channels: the same division, broadcast over the grid
        x[:, 1:] = (tensor / s[:, None] / scales[1:1 + k]).astype(np.float32)[:, :, None, None]
    else:                   # coefficient fields
        x[:, 1:] = tensor / s[:, None, None, None] / scales[1:1 + k, None, None]
    return x


# --------------------------------------------------------------------------------------------
# training subsets
# --------------------------------------------------------------------------------------------
# a constant mixed into the seed so that the subset stream differs from the torch/numpy streams
# that the same `seed` drives (model initialisation, epoch order)
SUBSET_STREAM = 0x5EED5B5E


def _int_key(params, key, low):
    """params[key] as an int >= low (missing or null: its default, utils/config_schema.py);
    DataError for anything else."""
    value = param(params, key)
    if value is None:
        return SCHEMA[key].default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
        raise DataError(f"{key} must be an integer >= {low}, got {value!r}")
    return int(value)


def subset_permutation(n_total, seed):
    """The seed's order of the rows 0 .. n_total-1 (int64 (n_total,)): depends on nothing else."""
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence([SUBSET_STREAM, int(seed)])))
    return rng.permutation(n_total)


def training_rows(params, n_total):
    """Sorted file rows (int64) of the training subset that `params` asks for.

    `n_train: n` -> the first n entries of `subset_permutation(n_total, seed)` (nested in n,
    the same for every approach); otherwise `subsample: k` -> rows 0, k, 2k, ... (N // k rows,
    the published protocol; the seed plays no part). Giving both is an error.
    """
    subsample = _int_key(params, "subsample", 1)
    n_train = _int_key(params, "n_train", 1)
    if n_train is None:
        if n_total // subsample == 0:
            raise DataError(f"{n_total} training samples; subsample {subsample} keeps none")
        return np.arange(n_total // subsample, dtype=np.int64) * subsample
    if subsample != 1:
        raise DataError(f"give either n_train ({n_train}) or subsample ({subsample}), not both")
    if n_train > n_total:
        raise DataError(f"n_train {n_train} is more than the {n_total} training samples")
    seed = _int_key(params, "seed", 0)
    return np.sort(subset_permutation(n_total, seed)[:n_train]).astype(np.int64)


def subset_hash(rows):
    """Short fingerprint (12 hex digits) of a subset's sorted row indices."""
    return hashlib.sha256(np.asarray(rows, dtype="<i8").tobytes()).hexdigest()[:12]


# --------------------------------------------------------------------------------------------
# split cache of long-lived processes (sweep workers, utils/sweep_workers.py)
# --------------------------------------------------------------------------------------------
def file_identity(path):
    """(absolute path, st_dev, st_ino, st_size, st_mtime_ns): a file rewritten in place or
    replaced by a rename gets another identity."""
    st = os.stat(path)
    return (os.path.abspath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


class _SplitInMemory:
    """A split file's model inputs in memory, read like `SplitFile.read_inputs` (fresh float32
    copies): fields (N, 2, H, W) and the coefficient inputs, `tensor` rows (N, k) or
    `coef_field` (N, c, H, W)."""

    def __init__(self, fields, inputs):
        self.fields, self.inputs = fields, inputs
        self.nbytes = fields.nbytes + inputs.nbytes

    def read_inputs(self, sel):
        return np.array(self.fields[sel]), np.array(self.inputs[sel])


class SplitCache:
    """Whole split files kept in memory by a process that builds many datasets in a row.

    Only `in_memory` datasets use it: `split(path, sf)` returns the file's arrays (read once
    with `sf`, an open SplitFile of `path`) behind SplitFile's `read_inputs(sel)`, so a dataset
    built from the cache holds exactly the values it would read from the file. Entries are
    keyed by `file_identity`: a file rewritten since it was read is read again. Least
    recently used files are dropped beyond `max_bytes`; a larger file is not cached.
    """

    def __init__(self, max_bytes):
        self.max_bytes = int(max_bytes)
        self._files = {}     # identity -> _SplitInMemory, oldest use first
        self.hits = self.misses = 0

    def split(self, path, sf):
        key = file_identity(path)
        hit = self._files.pop(key, None)
        if hit is not None:
            self._files[key] = hit   # now the most recent
            self.hits += 1
            return hit
        self.misses += 1
        h, w = sf.shape
        per_input = 1 if sf.input_dataset == "tensor" else h * w
        size = sf.n_samples * (2 * h * w + sf.n_inputs * per_input) * 4
        if size > self.max_bytes:
            return sf
        entry = _SplitInMemory(*sf.read_inputs(slice(None)))
        if file_identity(path) != key:   # changed while it was read: use it once, keep nothing
            return entry
        entry.fields.flags.writeable = entry.inputs.flags.writeable = False
        while self._files and sum(e.nbytes for e in self._files.values()) + entry.nbytes \
                > self.max_bytes:
            self._files.pop(next(iter(self._files)))
        self._files[key] = entry
        return entry


_SPLIT_CACHE = []   # the process's SplitCache once `enable_split_cache` was called


def enable_split_cache(max_bytes):
    """Keep the split files that `in_memory` datasets read in this process's memory (at most
    `max_bytes`); returns the SplitCache. Off by default: one training run reads each split
    once anyway."""
    _SPLIT_CACHE[:] = [SplitCache(max_bytes)]
    return _SPLIT_CACHE[0]


def _cached(path, sf):
    """The cached arrays of split `path` if a cache is enabled, else the open file `sf`."""
    return _SPLIT_CACHE[0].split(path, sf) if _SPLIT_CACHE else sf


# --------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------
class PDEDataset(Dataset):
    """One split file; `dataset[list_of_indices]` / `__getitems__` return a whole batch.

    Args:
        params: config (`in_dim`, `scales_path`, `Lx`, `Ly`, `subsample`, `n_train`, `seed`,
            `in_memory`, and `train_path` for the reference resolution of val/test files).
        location: the HDF5 file.
        train: keep the training subset (`training_rows`) only when True; otherwise every row.

    `rows` (sorted int64) are the file rows of dataset indices 0 .. len-1; `subset_hash`
    fingerprints them.
    """

    def __init__(self, params, location, train):
        self.path = location
        self.train = train
        # the file is opened once here: header checks, and the reads of in_memory
        with SplitFile(location, "train file" if train else "data file") as sf:
            self._init(params, sf)

    def _init(self, params, sf):
        location, train = self.path, self.train
        self.n_total = sf.n_samples
        self.img_shape = sf.shape  # (H, W) = (ny, nx)
        self.n_tensor = sf.n_tensor
        # channel_layout 'mixed': coefficients in the 7-channel layout of the scalar-coefficient
        # PDEs (DESIGN.md section 5, utils/mixed_data.py); 'native': the file's own inputs,
        # its `tensor` columns or its `coef_field` channels (the registry's input layout)
        self.layout = param(params, "channel_layout")
        self._coef = _coefficient_map(self.layout, location, self.n_tensor, sf.pde)
        self.n_coef = self._coef.n_out if self._coef else sf.n_inputs
        self.in_channels = 1 + self.n_coef
        in_dim = param(params, "in_dim")
        if in_dim is not None and int(in_dim) != self.in_channels:
            raise DataError(f"{location} gives 1 source + {self.n_coef} coefficient channels = "
                            f"{self.in_channels} input channels ({self.layout} layout), but the "
                            f"config has in_dim = {in_dim}")
        if param(params, "scales") is not None:  # values (e.g. from a pre-trained model's info)
            self.scales = check_scales(param(params, "scales"), self.n_coef, "config 'scales'")
        else:
            self.scales = load_scales(param(params, "scales_path"), self.n_coef)
        lx, ly = self.scales[-2], self.scales[-1]
        self.measure = (lx / self.img_shape[1]) * (ly / self.img_shape[0])
        self.ref_measure = self.measure
        if not train:
            ref = _reference_shape(params, self.img_shape)
            self.ref_measure = (lx / ref[1]) * (ly / ref[0])
        try:
            self.rows = (training_rows(params, self.n_total) if train
                         else np.arange(self.n_total, dtype=np.int64))
        except DataError as e:
            raise DataError(f"{location}: {e}") from e
        self.n_samples = len(self.rows)
        self.subset_hash = subset_hash(self.rows)
        self._file = None
        self._pid = None
        self._mem = None
        if param(params, "in_memory"):
            self._mem = self._read_rows(self.rows, _cached(location, sf))
        how = (f"random subset of seed {param(params, 'seed')}, {self.subset_hash}"
               if train and param(params, "n_train") is not None
               else f"subsample {int(param(params, 'subsample')) if train else 1}")
        logging.info("data %s: %d samples (of %d, %s), grid %dx%d, %d input channels%s",
                     location, self.n_samples, self.n_total, how, self.img_shape[0],
                     self.img_shape[1], self.in_channels, ", in memory" if self._mem else "")

    def __len__(self):
        return self.n_samples

    # HDF5 access: opened lazily, once per process (a handle must not cross a fork)
    def _split(self):
        if self._file is None or self._pid != os.getpid():
            self._file = SplitFile(self.path)
            self._pid = os.getpid()
        return self._file

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_file"] = None
        state["_pid"] = None
        return state

    def _read_rows(self, rows, split=None):
        """Raw (source (B,H,W), solution (B,1,H,W), coefficient inputs (B,k) or (B,k,H,W))
        float32 for file rows `rows` (read from `split`, an open SplitFile, default this
        process's handle)."""
        rows = np.asarray(rows, dtype=np.int64)
        split = split or self._split()
        order = np.argsort(rows, kind="stable")
        srt = rows[order]
        if len(srt) > 1 and np.unique(srt).size != srt.size:
            raise ValueError("duplicate indices in one batch")
        step = int(srt[1] - srt[0]) if len(srt) > 1 else 1
        if step > 0 and np.all(np.diff(srt) == step):
            sel = slice(int(srt[0]), int(srt[-1]) + 1, step)  # contiguous / strided: one slice
        else:
            sel = srt  # h5py point selection needs increasing indices
        fields, tensor = split.read_inputs(sel)
        if not np.all(order == np.arange(len(order))):
            inv = np.empty_like(order)
            inv[order] = np.arange(len(order))
            fields, tensor = fields[inv], tensor[inv]
        if self._coef:
            tensor = self._coef(tensor)
        return fields[:, 0], fields[:, 1:2], tensor

    def __getitems__(self, indices):
        """Batch (X (B, in_dim, H, W), y (B, 1, H, W)) float32 tensors for dataset indices."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= self.n_samples):
            raise IndexError(f"index out of range for {self.n_samples} samples")
        if self._mem is not None:
            src, sol, ten = (a[idx] for a in self._mem)
        else:
            src, sol, ten = self._read_rows(self.rows[idx])
        x = normalize_inputs(src, ten, self.scales, self.measure, self.ref_measure)
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(sol))

    def __getitem__(self, idx):
        if isinstance(idx, (list, tuple, np.ndarray)):
            return self.__getitems__(idx)
        x, y = self.__getitems__([int(idx)])
        return x[0], y[0]


def _coefficient_map(layout, location, n_tensor, pde_attr=None):
    """Callable (B, k) -> (B, k') mapping the file's coefficients to `layout`, or None."""
    if layout == "native":
        return None
    if layout == "mixed":
        from utils.mixed_data import coefficient_map
        return coefficient_map(location, n_tensor, pde_attr)
    raise DataError(f"channel_layout must be 'native' or 'mixed', got {layout!r}")


def resolve_paths(paths):
    """List of split files from a config: relative entries are relative to the repository
    root, like the single-file paths that YParams resolves."""
    from utils.YParams import REPO_ROOT
    return [p if os.path.isabs(p) else os.path.normpath(os.path.join(REPO_ROOT, p))
            for p in paths]


class MultiFileDataset(Dataset):
    """Concatenation of PDEDatasets (same grid and channels) with batched `__getitems__`.

    Dataset index i runs over the files in order; a batch is read with one call per file
    and returned in the requested order: (X (B, C, H, W), y (B, 1, H, W)).
    """

    def __init__(self, parts):
        shapes = {(p.img_shape, p.in_channels) for p in parts}
        if len(shapes) != 1:
            raise DataError("the files of one split must share grid and input channels, got "
                            + ", ".join(f"{p.path}: {p.img_shape} x {p.in_channels}" for p in parts))
        self.parts = parts
        self.img_shape, self.in_channels = parts[0].img_shape, parts[0].in_channels
        self.offsets = np.cumsum([0] + [len(p) for p in parts])
        self.path = [p.path for p in parts]

    def __len__(self):
        return int(self.offsets[-1])

    def __getitems__(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"index out of range for {len(self)} samples")
        part = np.searchsorted(self.offsets, idx, side="right") - 1
        x = y = None
        for j in np.unique(part):
            sel = np.nonzero(part == j)[0]
            xj, yj = self.parts[j].__getitems__(idx[sel] - self.offsets[j])
            if x is None:
                x = xj.new_empty((len(idx),) + tuple(xj.shape[1:]))
                y = yj.new_empty((len(idx),) + tuple(yj.shape[1:]))
            rows = torch.from_numpy(sel)
            x[rows], y[rows] = xj, yj
        return x, y

    def __getitem__(self, idx):
        if isinstance(idx, (list, tuple, np.ndarray)):
            return self.__getitems__(idx)
        x, y = self.__getitems__([int(idx)])
        return x[0], y[0]


def _reference_shape(params, own_shape):
    """Grid (H, W) the scales were computed on: the training file's (its header only)."""
    train_path = param(params, "train_path")
    if isinstance(train_path, (list, tuple)):  # several train files share one grid
        train_path = resolve_paths(train_path)[0] if train_path else None
    if train_path:
        try:
            return split_info(train_path, "train file")["shape"]
        except DataError:
            pass
    logging.warning("train file not readable: normalising with this file's own grid %s", own_shape)
    return own_shape


def _ignore_sigint(worker_id):
    """Loader workers leave Ctrl-C to the trainer (it checkpoints and stops the loader)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _batch_collate(batch):
    """The dataset already returns a collated batch."""
    return batch


# --------------------------------------------------------------------------------------------
# samplers and loader
# --------------------------------------------------------------------------------------------
class TrainSampler(DistributedSampler):
    """DistributedSampler (shuffle, drop_last) that can start an epoch after `start` samples.

    `set_start(n)` skips this rank's first n indices of the current epoch (mid-epoch resume);
    the order of the rest is unchanged.
    """

    def __init__(self, dataset, num_replicas, rank, seed):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=True,
                         seed=seed, drop_last=True)
        self.start = 0

    def set_start(self, start):
        self.start = int(start)

    def __iter__(self):
        return islice(super().__iter__(), self.start, None)

    def __len__(self):
        return self.num_samples - self.start


class ShardSampler(Sampler):
    """Contiguous shard `rank` of range(n) split over `world` ranks: no padding, no drops."""

    def __init__(self, n, rank=0, world=1):
        bounds = np.linspace(0, n, world + 1).round().astype(int)
        self.lo, self.hi = int(bounds[rank]), int(bounds[rank + 1])

    def __iter__(self):
        return iter(range(self.lo, self.hi))

    def __len__(self):
        return self.hi - self.lo


def effective_batch_size(batch_size, n_samples, world_size):
    """Global training batch: at most the training set, a multiple of the world size."""
    b = min(int(batch_size), n_samples)
    b -= b % world_size
    if b < 1:
        raise DataError(f"{n_samples} training samples cannot fill a batch on {world_size} ranks")
    if b != int(batch_size):
        logging.warning("global batch size %d -> %d (%d training samples, %d ranks)",
                        int(batch_size), b, n_samples, world_size)
    return b


def get_data_loader(params, location, distributed, train=True):
    """Build the loader of one split.

    Args:
        params: config (`batch_size`/`valid_batch_size` are GLOBAL; `num_data_workers`, `seed`).
        location: HDF5 file of the split.
        distributed: shard over the initialised process group.
        train: shuffled, subsampled, full batches (drop_last) when True; otherwise every sample
            once, in file order within each rank's contiguous shard.
    Returns:
        (loader, dataset, sampler); call `sampler.set_epoch(e)` before each training epoch.
    """
    world = dist.get_world_size() if distributed else 1
    rank = dist.get_rank() if distributed else 0
    if isinstance(location, (list, tuple)):   # one split made of several files (mixed physics)
        if train and param(params, "n_train") is not None:
            raise DataError("n_train needs a single training file (a split of several files "
                            "takes subsample)")
        dataset = MultiFileDataset([PDEDataset(params, p, train) for p in resolve_paths(location)])
    else:
        dataset = PDEDataset(params, location, train)
    if train:
        global_batch = effective_batch_size(param(params, "batch_size"), len(dataset), world)
        sampler = TrainSampler(dataset, world, rank, int(param(params, "seed")))
    else:
        # null valid_batch_size: batch_size (1 when neither is set; utils/config_schema.py)
        global_batch = int(param(params, "valid_batch_size") or param(params, "batch_size") or 1)
        sampler = ShardSampler(len(dataset), rank, world)
    local_batch = max(1, global_batch // world)
    workers = int(param(params, "num_data_workers"))
    loader = DataLoader(dataset, batch_size=local_batch, sampler=sampler, drop_last=train,
                        num_workers=workers, collate_fn=_batch_collate,
                        worker_init_fn=_ignore_sigint if workers > 0 else None,
                        pin_memory=torch.cuda.is_available(),
                        persistent_workers=workers > 0)
    return loader, dataset, sampler
