"""Fine-tuning helpers: load pre-trained weights into a model (weights only, no optimizer),
optionally only the tensors that fit (a checkpoint with other input channels), and freeze
parts of the network.

Config keys (read by utils/trainer.py):
    pretrained: path            weights to start from (the run's own checkpoint wins)
    pretrained_strict: true     false: load every tensor whose name and shape match, keep the
                                fresh initialisation of the rest (e.g. the lift of a model with
                                more input channels) and log which
    freeze: null                a preset ('fourier' = 'all_but_lift_proj': train only the lift
                                fc0 and the projection fc1/fc2; 'spectral'; 'all_but_proj') or
                                a list of parameter-name prefixes to freeze
"""
import logging
import os
import pickle

import numpy as np
import torch

from utils.errors import FinetuneError

_PREFIXES = ("module.", "_orig_mod.")  # DDP wrapper, torch.compile wrapper


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


def _numpy_array_globals():
    """The globals that unpickle a numeric numpy array (RNG states of older checkpoints):
    the array reconstructor, ndarray, dtype and the numeric dtype classes. None of them runs
    code; object arrays stay refused (their dtype class is not listed)."""
    core = getattr(np, "_core", None) or np.core
    names = ("Bool", "Int8", "Int16", "Int32", "Int64", "UInt8", "UInt16", "UInt32",
             "UInt64", "Float16", "Float32", "Float64", "Complex64", "Complex128")
    return [core.multiarray._reconstruct, np.ndarray, np.dtype] + [
        getattr(np.dtypes, f"{n}DType") for n in names if hasattr(np.dtypes, f"{n}DType")]


def safe_torch_load(path, map_location="cpu"):
    """torch.load that never runs code from the file (weights_only=True).

    Accepts tensors, plain Python values (dicts, lists, tuples, numbers, strings) and numeric
    numpy arrays. Anything else (a pickled object, e.g. one whose __reduce__ calls os.system)
    raises pickle.UnpicklingError before it is built. Other read errors propagate as torch
    raises them (callers turn both into one-line errors with `describe_load_error`).
    """
    with torch.serialization.safe_globals(_numpy_array_globals()):
        return torch.load(path, map_location=map_location, weights_only=True)


def describe_load_error(e):
    """One-line reason why `safe_torch_load` failed with exception `e`."""
    if isinstance(e, pickle.UnpicklingError):
        return ("it holds objects other than tensors and plain values: refused, loading "
                "them could run code")
    first = (str(e).strip().splitlines() or [""])[0]
    return f"not a readable checkpoint ({type(e).__name__}: {first})"


def _unwrap(model):
    """The module whose state dict has plain names (no DDP / torch.compile wrapper)."""
    target = model.module if hasattr(model, "module") else model
    return getattr(target, "_orig_mod", target)


def load_pretrained(model, path, strict=True):
    """Load weights from `path` into `model`.

    `path` holds a checkpoint dict with `model_state` (ours or the published one, plain or
    from a DDP run) or a bare state dict. strict=True: same keys and shapes, else
    FinetuneError with the mismatches. strict=False: load every tensor whose name and shape
    match, keep the model's own (fresh) values for the others, log both lists; at least one
    tensor must match.
    Returns dict(path, n_tensors, epoch, loaded, reinitialised, ignored): epoch is the
    checkpoint's (None for a bare state dict), `loaded` / `reinitialised` the model's tensor
    names taken from the file / kept as initialised, `ignored` the file's unused tensors.
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
    state = clean_state_dict(state)
    target = _unwrap(model)
    own = target.state_dict()
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
                    loaded=sorted(fits), reinitialised=reinit, ignored=unexpected)
    if missing or unexpected or shapes:
        parts = []
        if shapes:
            parts.append("shape mismatch: " + "; ".join(shapes[:4]))
        if missing:
            parts.append("missing: " + ", ".join(missing[:6]))
        if unexpected:
            parts.append("unexpected: " + ", ".join(unexpected[:6]))
        raise FinetuneError(f"weights {path} do not fit the model ({' | '.join(parts)})")
    target.load_state_dict(state)
    epoch = ckpt.get("epoch") if "model_state" in ckpt else None
    logging.info("loaded weights %s (%d tensors, epoch %s)", path, len(state), epoch)
    return dict(path=os.path.abspath(path), n_tensors=len(state), epoch=epoch,
                loaded=sorted(state), reinitialised=[], ignored=[])

# Named freezing presets over the parameter names of models/fno.py (fc0 = lift, sp_convs/ws =
# the Fourier layers' spectral and 1x1 weights, fc1/fc2 = projection).
FREEZE_PRESETS = {
    "none": (),
    "fourier": ("sp_convs.", "ws."),       # train only the lift and the projection
    "all_but_lift_proj": ("sp_convs.", "ws."),
    "spectral": ("sp_convs.",),            # train lift, 1x1 convs and projection
    "all_but_proj": ("fc0.", "sp_convs.", "ws."),
}


def freeze_parameters(model, spec):
    """Freeze (requires_grad=False) the parameters named by `spec`; return their names.

    spec: None / 'none', a preset of FREEZE_PRESETS, or a list of parameter-name prefixes
    (e.g. ['fc0.', 'sp_convs.0.']). Call before building the optimizer: frozen tensors get
    no gradient, so the optimizer never changes them (bit-identical after training).
    """
    if spec in (None, False, "none", ""):
        return []
    prefixes = FREEZE_PRESETS.get(spec) if isinstance(spec, str) else tuple(spec)
    if prefixes is None:
        raise FinetuneError(f"freeze: unknown preset {spec!r} (presets: "
                            f"{', '.join(FREEZE_PRESETS)}, or a list of parameter-name prefixes)")
    target = _unwrap(model)
    names = [n for n, _ in target.named_parameters()]
    unused = [p for p in prefixes if not any(n.startswith(p) for n in names)]
    if unused:
        raise FinetuneError(f"freeze: no parameter starts with {unused} (have {sorted({n.split('.')[0] for n in names})})")
    frozen = []
    for name, p in target.named_parameters():
        if name.startswith(tuple(prefixes)):
            p.requires_grad_(False)
            frozen.append(name)
    n_frozen = sum(p.numel() for p in target.parameters() if not p.requires_grad)
    n_all = sum(p.numel() for p in target.parameters())
    logging.info("froze %d tensors (%d of %d parameters): %s", len(frozen), n_frozen, n_all,
                 ", ".join(frozen))
    return frozen
