"""THE checkpoint module: every file that holds model weights is read, converted, described
and written here.

- Reading is data only: `safe_torch_load` is `torch.load(weights_only=True)` allowing tensors,
  plain Python values and numeric numpy arrays, and reads a `.safetensors` file (tensors and
  a JSON header; the model_info is its metadata key `model_info`) by its suffix;
  `read_checkpoint` adds one-line errors that say what a file is instead (HDF5 data, not a
  torch file, a pickle that needs code).
- The published layout (the study's SpectralConv2dV2: `sp_convs.i.weights1/weights2`
  (Cin, Cout, m1, m2, 2) multiplying the rows [:m1] and [-m1:] of rfft2, and a Conv1d
  `ws.i.weight` (Cout, Cin, 1)) is recognised by its names and converted by
  `published_to_ours` onto this code's mode-major `sp_convs.i.weight` and Linear
  `ws.i.weight`; the outputs are the published model's (its rfft2/irfft2 pair with
  norm='ortho' equals the default-normalised pair here).
- `load_weights(model, path, strict)` puts the weights of any of these files into a model
  (`pretrained: PATH`, `eval.py --weights`); `utils.pretrained.load_pretrained(path)` builds
  the model from the file alone for inference.
- `save_checkpoint` writes a checkpoint (and the model card, utils/model_card.py)
  atomically; `host_copy` keeps one in memory, unchanged by later training, to write later.
- `data_fingerprints` identifies the data files a checkpoint was trained on (size and a
  hash of their first and last MiB and HDF5 root attributes), so a resume can refuse files
  regenerated since (`changed_data_file`).

`model_info` (every checkpoint the trainer writes; plain types, so it loads with
`torch.load(weights_only=True)`):

    version         MODEL_INFO_VERSION
    architecture    the resolved FNO constructor arguments (models/fno.resolve_config):
                    in_dim, out_dim, layers, modes1, modes2, fc_dim, dropout
    n_params        number of parameters
    pde             'poisson' | 'ad' | 'helmholtz', or 'mixed' (channel_layout 'mixed')
    pdes            the PDE of each training file
    channel_layout  'native' (the file's own coefficient columns) | 'mixed' (7 channels)
    channels        the model's input channels, e.g. ['f', 'K11', 'K22', 'K12']
    coefficients    {pde: the HDF5 `tensor` columns solve() takes for that PDE}
    scales          [source, coefficient scales .., sol, Lx, Ly] (values, DESIGN.md section 5)
    grid            [H, W] of the training data (the reference grid of the normalisation)
    data            one dict per training file: its HDF5 root attributes (pde, n,
                    coef_range, ng, sigma, sparse, seed, num_samples, ...), `file`, `n_samples`
    training        config name, max_epochs, n_train, batch_size, lr, optimizer, loss_style,
                    seed, subsample, freeze, pretrained (file name)
    metrics         of THESE weights: epoch, val_loss, val_rel_l2, n_val (None for a
                    mid-epoch checkpoint); `test` once eval.py has run (model card, export)

The model card beside the weights (`model_card.json`), and when eval.py records a test result
in it, is utils/model_card.py. `export_pretrained` (python utils/pretrained.py export ...)
writes a small shippable `model.safetensors` (float32 weights, no pickle; the model_info with
the card's test metrics is its metadata key `model_info`, JSON text) or, with `--format pt`,
`model.pt` (weights + model_info), no optimizer state, and its card.

Checkpoints written before model_info existed still load here when the training config they
carry still points to the scales file and train file (their info is rebuilt from them); they
fine-tune and evaluate through a config as before.
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import pickle
import re
import zipfile

import numpy as np
import torch

from utils import pdes
from utils.errors import CheckpointError, DataError, FinetuneError, UserError
from utils.fileio import atomic_path, torch_save_atomic
from utils.model_card import write_card

MODEL_INFO_VERSION = 1
UNKNOWN_PDE = "unknown"     # model_info pde of data files that name no PDE
_REQUIRED = ("version", "architecture", "pde", "channel_layout", "channels", "coefficients",
             "scales", "grid")
_PREFIXES = ("module.", "_orig_mod.")  # DDP wrapper, torch.compile wrapper
ADAPTER_NAMES = ("lora_a", "lora_b")


# --------------------------------------------------------------------------------------------
# reading: data only (torch.load weights_only=True)
# --------------------------------------------------------------------------------------------
def _numpy_array_globals():
    """The globals that unpickle a numeric numpy array (RNG states of older checkpoints):
    the array reconstructor, ndarray, dtype and the numeric dtype classes. None of them runs
    code; object arrays stay refused (their dtype class is not listed)."""
    core = getattr(np, "_core", None) or np.core
    names = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
             "UInt64", "Float16", "Float32", "Float64", "Complex64", "Complex128")
    return [core.multiarray._reconstruct, np.ndarray, np.dtype] + [
        getattr(np.dtypes, f"{n}DType") for n in names if hasattr(np.dtypes, f"{n}DType")]


SAFETENSORS_SUFFIX = ".safetensors"
SAFETENSORS_INFO_KEY = "model_info"   # metadata key holding the model_info as JSON text


def load_safetensors(path, map_location="cpu"):
    """A `.safetensors` file as a checkpoint dict: {'model_state': tensors} plus 'model_info'
    (parsed from the JSON text of the metadata key SAFETENSORS_INFO_KEY) when the file has it.

    The format is a JSON header and raw tensor bytes: loading it cannot run code. Read errors
    propagate as safetensors raises them (callers make one-line errors of them).
    """
    from safetensors import safe_open

    with safe_open(path, framework="pt", device=str(map_location)) as f:
        state = {k: f.get_tensor(k) for k in f.keys()}
        meta = f.metadata() or {}
    ckpt = {"model_state": state}
    if SAFETENSORS_INFO_KEY in meta:
        ckpt["model_info"] = json.loads(meta[SAFETENSORS_INFO_KEY])
    return ckpt


def save_safetensors(state, info, path):
    """Write float tensors `state` and the model_info `info` (metadata key
    SAFETENSORS_INFO_KEY, JSON text) to `path` atomically. The bytes are built in memory (a
    model's size) and written by Python, so the file gets the umask's permissions
    (safetensors' own writer creates it 0600)."""
    from safetensors.torch import save

    blob = save(state, metadata={"format": "pt", SAFETENSORS_INFO_KEY: json.dumps(info)})
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        f.write(blob)


def safe_torch_load(path, map_location="cpu"):
    """torch.load that never runs code from the file (weights_only=True); a `.safetensors`
    file is read with `load_safetensors` (no pickle at all).

    Accepts tensors, plain Python values (dicts, lists, tuples, numbers, strings) and numeric
    numpy arrays. Anything else (a pickled object, e.g. one whose __reduce__ calls os.system)
    raises pickle.UnpicklingError before it is built. Other read errors propagate as torch
    raises them (callers turn both into one-line errors with `describe_load_error`).
    """
    if str(path).endswith(SAFETENSORS_SUFFIX):
        return load_safetensors(path, map_location)
    with torch.serialization.safe_globals(_numpy_array_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def describe_load_error(e):
    """One-line reason why `safe_torch_load` failed with exception `e`."""
    if isinstance(e, pickle.UnpicklingError):
        return ("it holds objects other than tensors and plain values: refused, loading "
                "them could run code")
    first = (str(e).strip().splitlines() or [""])[0]
    return f"not a readable checkpoint ({type(e).__name__}: {first})"


def read_checkpoint(path):
    """`safe_torch_load` (weights_only=True) of a checkpoint, or of a `.safetensors` model
    ({'model_state', 'model_info'}), with one-line CheckpointErrors that say what the file is
    instead (HDF5 data, not a torch file, a pickle that needs code: refused, never executed).
    Returns the loaded dict (on the CPU).
    """
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        raise CheckpointError(f"{path} is an HDF5 data file, not a checkpoint")
    safetensors = path.endswith(SAFETENSORS_SUFFIX)
    # torch.save writes a zip (or, older, a pickle)
    if not (safetensors or zipfile.is_zipfile(path) or head.startswith(b"\x80")):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save file)")
    try:
        obj = safe_torch_load(path)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "objects other than tensors and plain data"
        raise CheckpointError(f"{path} refused: loading it would unpickle {what} (only "
                              f"tensors and plain data are loaded, weights_only=True)") from None
    except Exception as e:  # torch raises several types for foreign or truncated files
        what = "safetensors model" if safetensors else "PyTorch checkpoint"
        raise CheckpointError(f"{path} is not a readable {what} ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint")
    return obj


def clean_state_dict(state):
    """Strip DDP (`module.`) and torch.compile (`_orig_mod.`) prefixes from every key."""
    out = {}
    for key, value in state.items():
        changed = True
        while changed:
            changed = False
            for p in _PREFIXES:
                if key.startswith(p):
                    key = key[len(p):]
                    changed = True
        out[key] = value
    return out


def model_state_of(ckpt, path):
    """The checkpoint's `model_state` without DDP / compile prefixes; CheckpointError if it has
    none."""
    state = ckpt.get("model_state")
    if not (isinstance(state, dict) and state and all(map(torch.is_tensor, state.values()))):
        raise CheckpointError(f"{path} has no model weights ('model_state'); keys: "
                              f"{', '.join(map(str, list(ckpt)[:8])) or 'none'}")
    return clean_state_dict(state)


# --------------------------------------------------------------------------------------------
# the published layout, converted
# --------------------------------------------------------------------------------------------
_OURS_SPECTRAL = re.compile(r"^sp_convs\.(\d+)\.weight$")
_PUB_SPECTRAL = re.compile(r"^sp_convs\.(\d+)\.weights([12])$")
_PUB_POINTWISE = re.compile(r"^ws\.(\d+)\.weight$")


def published_to_ours(state):
    """Map a state dict of the published FNO (prefixes already stripped) onto this code's names.

    sp_convs.i.weights1, weights2 (Cin, Cout, m1, m2, 2) real (or (Cin, Cout, m1, m2) complex)
        -> sp_convs.i.weight (2*m1*m2, Cin, Cout, 2): the two corners stacked along the mode
           row (weights1 = rows [:m1] first, then weights2 = rows [-m1:], as SpectralConv2d
           stores them), then mode-major: index (row r, column c) -> r*m2 + c.
    ws.i.weight (Cout, Cin, 1) (Conv1d)  -> ws.i.weight (Cout, Cin) (Linear, same numbers)
    Every other tensor (fc0/fc1/fc2, biases) keeps its name and value.
    """
    out = {k: v for k, v in state.items() if not _PUB_SPECTRAL.match(k)}
    for key, value in state.items():
        if _PUB_POINTWISE.match(key) and value.dim() == 3 and value.shape[-1] == 1:
            out[key] = value[..., 0]
    for i in sorted({int(_PUB_SPECTRAL.match(k).group(1)) for k in state if _PUB_SPECTRAL.match(k)}):
        pair = [state.get(f"sp_convs.{i}.weights{c}") for c in (1, 2)]
        if any(w is None for w in pair):
            raise FinetuneError(f"published layout: sp_convs.{i} needs both weights1 and weights2")
        pair = [torch.view_as_real(w) if w.is_complex() else w for w in pair]
        w1, w2 = pair
        if w1.dim() != 5 or w1.shape[-1] != 2 or w1.shape != w2.shape:
            raise FinetuneError(f"published layout: sp_convs.{i}.weights1/weights2 must both be "
                                f"(Cin, Cout, m1, m2, 2), got {tuple(w1.shape)} and {tuple(w2.shape)}")
        cin, cout, m1, m2, _ = w1.shape
        both = torch.cat([w1, w2], dim=2)                     # (Cin, Cout, 2*m1, m2, 2)
        out[f"sp_convs.{i}.weight"] = both.permute(2, 3, 0, 1, 4).reshape(
            2 * m1 * m2, cin, cout, 2).contiguous()
    return out


def to_our_layout(state, path):
    """(state dict in this code's names, True if it was converted from the published layout).

    The layout is told by the spectral weights' names; a state dict with neither (or both) is
    not an FNO checkpoint of either code: FinetuneError.
    """
    ours = any(_OURS_SPECTRAL.match(k) for k in state)
    published = any(_PUB_SPECTRAL.match(k) for k in state)
    if ours == published:
        raise FinetuneError(
            f"weights {path} match neither this code's FNO layout (sp_convs.i.weight) nor the "
            f"published one (sp_convs.i.weights1/weights2)" + (" (it has both)" if ours else ""))
    return (state, False) if ours else (published_to_ours(state), True)


# --------------------------------------------------------------------------------------------
# weights into a model (pretrained: PATH, eval.py --weights)
# --------------------------------------------------------------------------------------------
def unwrap_model(model):
    """The module whose state dict has plain names (no DDP / torch.compile wrapper)."""
    target = model.module if hasattr(model, "module") else model
    return getattr(target, "_orig_mod", target)


def is_adapter(name):
    """True for the state-dict name of a LoRA adapter tensor (sp_convs.i.lora_a / lora_b)."""
    return name.rsplit(".", 1)[-1] in ADAPTER_NAMES


def load_weights(model, path, strict=True):
    """Load weights from `path` into `model`.

    `path` holds a checkpoint dict with `model_state` (ours or the published one, plain or
    from a DDP run) or a bare state dict, in this code's layout or the published one
    (converted, see `published_to_ours`; one INFO line says so). strict=True: same keys and shapes, else
    FinetuneError with the mismatches. strict=False: load every tensor whose name and shape
    match, keep the model's own (fresh) values for the others, log both lists; at least one
    tensor must match.
    Returns dict(path, n_tensors, epoch, config, loaded, reinitialised, ignored): epoch and
    config (the training config, a dict) are the checkpoint's (None for a bare state dict or
    an exported model), `loaded` / `reinitialised` the model's tensor names taken from the
    file / kept as initialised, `ignored` the file's unused tensors.
    """
    if not path or not os.path.isfile(path):
        raise FinetuneError(f"pre-trained weights not found: {path}")
    try:
        ckpt = safe_torch_load(path, map_location="cpu")
    except Exception as e:  # torch raises several types for corrupt/foreign files
        raise FinetuneError(f"cannot read weights {path}: {describe_load_error(e)}") from e
    if not isinstance(ckpt, dict):
        raise FinetuneError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint or state dict")
    state = ckpt.get("model_state", ckpt)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise FinetuneError(f"{path} has no model state dict (keys: {', '.join(map(str, list(ckpt)[:8]))})")
    state, converted = to_our_layout(clean_state_dict(state), path)
    config = ckpt.get("config") if isinstance(ckpt.get("config"), dict) else None
    if converted:
        logging.info("weights %s are in the published layout: converted sp_convs.i.weights1/"
                     "weights2 to mode-major sp_convs.i.weight and the Conv1d ws.i.weight to "
                     "(Cout, Cin)", path)
    target = unwrap_model(model)
    # LoRA adapters are not part of a pre-trained model: they keep their (zero-update) init
    own = {k: v for k, v in target.state_dict().items() if not is_adapter(k)}
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
    if not strict:
        fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        if not fits:
            raise FinetuneError(f"weights {path}: no tensor matches the model by name and shape")
        reinit = [k for k in own if k not in fits]
        target.load_state_dict(fits, strict=False)
        epoch = ckpt.get("epoch") if "model_state" in ckpt else None
        logging.info("loaded %d/%d tensors from %s (epoch %s)", len(fits), len(own), path, epoch)
        if reinit:
            logging.info("re-initialised (no matching tensor in the weights): %s", ", ".join(
                f"{k} {tuple(own[k].shape)}" + (f" (file {tuple(state[k].shape)})" if k in state
                                                 else "") for k in reinit))
        if unexpected:
            logging.info("ignored tensors of the weights file: %s", ", ".join(unexpected))
        return dict(path=os.path.abspath(path), n_tensors=len(fits), epoch=epoch,
                    config=config, loaded=sorted(fits), reinitialised=reinit,
                    ignored=unexpected)
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:4]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:6]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:6]))
        raise FinetuneError(f"weights {path} do not fit the model ({' | '.join(parts)})")
    target.load_state_dict(state, strict=False)  # checked above; adapters (if any) stay
    epoch = ckpt.get("epoch") if "model_state" in ckpt else None
    logging.info("loaded weights %s (%d tensors, epoch %s)", path, len(state), epoch)
    return dict(path=os.path.abspath(path), n_tensors=len(state), epoch=epoch, config=config,
                loaded=sorted(state), reinitialised=[], ignored=[])


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def host_copy(ckpt):
    """A copy of the checkpoint dict `ckpt` that later training steps cannot change (the
    trainer keeps its best check this way until it writes ckpt_best.tar): every tensor
    detached and copied to the CPU (a tensor found twice, e.g. under `model_state` and
    `lora_state`, copied once), lists, tuples and dicts rebuilt, numbers, strings and None
    shared (immutable; deep-copying the ~1250 ints of the RNG states took longer than the
    weights), anything else deep-copied.
    Costs host memory of the size of its tensors: weights + optimizer state (Adam: 3x the
    parameters' bytes). `safe_torch_load` maps the tensors back to the device of a reader."""
    memo = {}

    def copy_of(value):
        if torch.is_tensor(value):
            if id(value) not in memo:
                memo[id(value)] = value.detach().to("cpu", copy=True)
            return memo[id(value)]
        if isinstance(value, dict):
            return {k: copy_of(v) for k, v in value.items()}
        if type(value) in (list, tuple):
            return type(value)(copy_of(v) for v in value)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        return copy.deepcopy(value)
    return copy_of(ckpt)


def save_checkpoint(ckpt, path, card_path=None):
    """Write the checkpoint dict `ckpt` to `path` atomically (temporary file, fsync, rename)
    and, with `card_path`, then the model card of its `model_info` (naming `path`'s file).
    Everything in `ckpt` must be tensors and plain values, so that `safe_torch_load` reads it
    (the trainer stores RNG states as plain values for that reason)."""
    torch_save_atomic(ckpt, path)
    if card_path is not None:
        write_card(card_path, ckpt["model_info"], os.path.basename(path))


# --------------------------------------------------------------------------------------------
# model_info
# --------------------------------------------------------------------------------------------
def plain(value):
    """HDF5 attributes / numpy values -> JSON-able plain Python (weights_only-loadable)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    if isinstance(value, np.ndarray):
        return [plain(v) for v in value.tolist()]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def describe_data_file(path):
    """Distribution of a split file from its header: root attributes + grid, sample count,
    number of coefficient columns and its PDE. No array is read."""
    from utils.h5io import SplitFile
    from utils.mixed_data import pde_of

    with SplitFile(path) as sf:
        attrs = {k: plain(v) for k, v in sf.h5.attrs.items()}
        try:
            attrs["pde"] = pde_of(path, sf.n_tensor, sf.pde)
        except DataError:
            if sf.pde is not None:          # a named PDE whose columns do not fit
                raise
            # a foreign file that names no PDE (no attribute, no {pde}_ name): a native
            # model of its columns still trains; its info says the PDE is unknown
            attrs["pde"] = UNKNOWN_PDE
        attrs.update(file=os.path.basename(path), n_samples=int(sf.n_samples),
                     grid=[int(s) for s in sf.shape], n_tensor=int(sf.n_tensor))
    return attrs


def input_channels(pde, n_tensor):
    """Names of the model's coefficient input channels for data of `pde` (the registry's
    input layout; t0, t1, ... for a file that names no PDE)."""
    if pde == UNKNOWN_PDE:
        return [f"t{j}" for j in range(n_tensor)]
    return list(pdes.get(pde).input_channels)


def _get(params, key, default=None):
    return params.get(key, default)


def build_model_info(params, metrics=None, n_params=None):
    """model_info of a model trained with config `params` (YParams or the config dict a
    checkpoint stores); reads the train file headers and the scales (or `scales`)."""
    from models.fno import count_parameters, resolve_config
    from utils.data_utils import load_scales, resolve_paths, training_rows

    arch = resolve_config(params)
    layout = _get(params, "channel_layout", "native") or "native"
    train = _get(params, "train_path")
    paths = resolve_paths(train) if isinstance(train, (list, tuple)) else [train]
    files = [describe_data_file(p) for p in paths]
    file_pdes = [d["pde"] for d in files]
    if layout == "mixed":
        from utils.mixed_data import MIXED_CHANNELS

        pde, channels = "mixed", list(MIXED_CHANNELS)
    else:
        pde = file_pdes[0]
        channels = ["f"] + input_channels(pde, files[0]["n_tensor"])
    if len(channels) != arch["in_dim"]:
        raise CheckpointError(f"{layout} layout of {pde} data gives {len(channels)} input "
                              f"channels {channels} but the model has in_dim {arch['in_dim']}")
    if _get(params, "scales") is not None:
        from utils.data_utils import check_scales
        scales = check_scales(_get(params, "scales"), len(channels) - 1, "config 'scales'")
    else:
        scales = load_scales(_get(params, "scales_path"), len(channels) - 1)
    pretrained = _get(params, "pretrained")
    name = getattr(params, "config_name", None) or _get(params, "config_name")
    # the rows the data loader trains on (n_train or subsample; utils.data_utils)
    training = dict(config=name, n_train=sum(len(training_rows(params, d["n_samples"]))
                                             for d in files))
    for key in ("max_epochs", "batch_size", "lr", "optimizer", "scheduler", "loss_func",
                "loss_style", "seed", "subsample", "freeze", "finetune_mode",
                "lora_rank", "min_steps", "max_steps", "val_every_steps",
                "val_every_growth", "val_metric", "early_stop_patience",
                "early_stop_min_delta", "warmup_steps", "lr_plateau_factor",
                "lr_plateau_patience"):
        training[key] = plain(_get(params, key))
    training["pretrained"] = os.path.basename(pretrained) if pretrained else None
    return dict(
        version=MODEL_INFO_VERSION,
        architecture=plain(arch),
        n_params=int(n_params if n_params is not None else count_parameters(arch)),
        pde=pde, pdes=sorted(set(file_pdes), key=file_pdes.index), channel_layout=layout,
        channels=channels,
        coefficients={d["pde"]: input_channels(d["pde"], d["n_tensor"]) for d in files},
        scales=[float(s) for s in scales],
        grid=list(files[0]["grid"]),
        data=files,
        training=training,
        metrics=plain(metrics) if metrics else {},
    )


def check_model_info(info, path):
    """Validate a model_info dict read from `path`; CheckpointError naming what is wrong."""
    if not isinstance(info, dict):
        raise CheckpointError(f"{path}: model_info is a {type(info).__name__}, not a dict")
    missing = [k for k in _REQUIRED if k not in info]
    if missing:
        raise CheckpointError(f"{path}: model_info lacks {', '.join(missing)}")
    if int(info["version"]) > MODEL_INFO_VERSION:
        raise CheckpointError(f"{path}: model_info version {info['version']} is newer than this "
                              f"code understands ({MODEL_INFO_VERSION}); update the code")
    n_coef = len(info["channels"]) - 1
    if len(info["scales"]) != n_coef + 4:
        raise CheckpointError(f"{path}: model_info has {len(info['scales'])} scales for "
                              f"{n_coef} coefficient channels (expected {n_coef + 4})")
    return info


def info_of(ckpt, path):
    """The model_info of a loaded checkpoint; for one written before model_info existed, rebuilt
    from the training config it carries (its scales and train files must still exist)."""
    if "model_info" in ckpt:
        return check_model_info(ckpt["model_info"], path)
    config = ckpt.get("config")
    if not isinstance(config, dict):
        raise CheckpointError(f"{path} carries no model_info and no training config: it cannot "
                              f"be used without one (evaluate it with eval.py and its config)")
    try:
        info = build_model_info(config)
    except UserError as e:
        raise CheckpointError(f"{path} predates self-contained checkpoints and its model_info "
                              f"cannot be rebuilt from its training config ({e}); evaluate or "
                              f"fine-tune it with eval.py / train.py and its config") from None
    logging.info("%s has no model_info (older checkpoint): rebuilt from its training config",
                 path)
    return info


def scales_from_weights(params, weights):
    """A config without `scales_path` (and without `scales`) takes the normalisation scales of
    the model it starts from: sets params['scales'] from the model_info of `weights`.
    Returns True when it did. Used by the trainer (fine-tuning from a shipped model) and eval."""
    if params.get("scales_path") or params.get("scales") is not None or not weights:
        return False
    ckpt = read_checkpoint(weights)
    if "model_info" not in ckpt:
        raise CheckpointError(f"the config has no scales_path and {weights} carries no "
                              f"model_info with scales; set scales_path")
    params["scales"] = list(check_model_info(ckpt["model_info"], weights)["scales"])
    logging.info("normalisation scales from %s: %s", weights,
                 np.array2string(np.asarray(params["scales"]), precision=6))
    return True


# --------------------------------------------------------------------------------------------
# data fingerprints (resume refuses data regenerated since the checkpoint)
# --------------------------------------------------------------------------------------------
# the data files a run reads, and how much of each file its fingerprint reads (start and end)
DATA_KEYS = ("train_path", "val_path", "test_path", "scales_path")
FINGERPRINT_BLOCK = 1 << 20


def file_fingerprint(path):
    """Cheap identity of a file's content: {size, sha256 (16 hex digits) of its first and
    last MiB and, for HDF5, of its root attributes}. It reads at most 2 MiB of a file of any
    size and ignores the file's name, place and times, so the same bytes moved, copied or
    restored still match; a regenerated file (another seed, range, size or content) does not.
    """
    import h5py

    digest = hashlib.sha256()
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        digest.update(f.read(FINGERPRINT_BLOCK))
        if size > FINGERPRINT_BLOCK:
            f.seek(max(FINGERPRINT_BLOCK, size - FINGERPRINT_BLOCK))
            digest.update(f.read(FINGERPRINT_BLOCK))
    if h5py.is_hdf5(path):
        with h5py.File(path, "r") as h5:
            attrs = sorted((str(k), plain(v)) for k, v in h5.attrs.items())
        digest.update(json.dumps(attrs).encode())
    return dict(size=int(size), sha256=digest.hexdigest()[:16])


def data_fingerprints(params):
    """{key: [{file, size, sha256}, ...]} for each data key of DATA_KEYS that names existing
    files (a list of files for a split made of several); stored in every checkpoint."""
    from utils.data_utils import resolve_paths

    out = {}
    for key in DATA_KEYS:
        value = params.get(key)
        paths = resolve_paths(value) if isinstance(value, (list, tuple)) else [value]
        if paths and all(isinstance(p, str) and os.path.isfile(p) for p in paths):
            out[key] = [dict(file=p, **file_fingerprint(p)) for p in paths]
    return out


def changed_data_file(recorded, current):
    """(path, key) of the first data file whose fingerprint differs between `recorded` (a
    checkpoint's) and `current`; None when every file present in both is unchanged."""
    for key, old in recorded.items():
        new = current.get(key)
        if not new or len(new) != len(old):
            continue   # missing now (or a key that changed: the config check reports it)
        for a, b in zip(old, new):
            if (a.get("size"), a.get("sha256")) != (b["size"], b["sha256"]):
                return b["file"], key
    return None
