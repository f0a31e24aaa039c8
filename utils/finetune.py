"""Fine-tuning helpers: load pre-trained weights into a model (weights only, no optimizer;
this code's checkpoints or the published code's, converted), optionally only the tensors that
fit (a checkpoint with other input channels), and choose what trains (fine-tuning modes,
freezing, low-rank adapters).

Config keys (read by utils/trainer.py):
    pretrained: path            weights to start from (the run's own checkpoint wins)
    pretrained_strict: true     false: load every tensor whose name and shape match, keep the
                                fresh initialisation of the rest (e.g. the lift of a model with
                                more input channels) and log which
    finetune_mode: full         what trains (utils/config_schema.py FINETUNE_MODES): 'full'
                                every tensor (as published); 'head' the lift fc0 and the
                                projection fc1/fc2 only; 'frozen_fourier' everything but the
                                spectral weights sp_convs.*; 'lora' as
                                frozen_fourier plus a trainable low-rank update of each layer's
                                spectral weights (models/fno.py SpectralConv2d.add_lora)
    lora_rank: 4                rank r of the adapters (finetune_mode: lora only)
    freeze: null                lower-level alternative to finetune_mode (not both): a preset
                                ('fourier' = 'all_but_lift_proj' = head; 'spectral' =
                                frozen_fourier; 'all_but_proj') or a list of parameter-name
                                prefixes to freeze

Published layout (models/fno.py of the study's code, SpectralConv2dV2): `sp_convs.i.weights1`
and `weights2` (Cin, Cout, m1, m2, 2) multiply the rows [:m1] and [-m1:] of rfft2, and
`ws.i.weight` is a Conv1d weight (Cout, Cin, 1). `published_to_ours` maps them onto this
code's mode-major `sp_convs.i.weight` and Linear `ws.i.weight`; outputs are the same (the
published rfft2/irfft2 pair with norm='ortho' equals the default-normalised pair here).
"""
import logging
import os
import pickle
import re

import numpy as np
import torch

from utils.config_schema import FINETUNE_MODES
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


def _unwrap(model):
    """The module whose state dict has plain names (no DDP / torch.compile wrapper)."""
    target = model.module if hasattr(model, "module") else model
    return getattr(target, "_orig_mod", target)


def load_pretrained(model, path, strict=True):
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
    target = _unwrap(model)
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


# ------------------------------------------------------------------------------ fine-tuning modes
# The modes and what each freezes: utils/config_schema.FINETUNE_MODES; 'lora' then adds adapters.
LORA_RANK_DEFAULT = 4
_ADAPTER_NAMES = ("lora_a", "lora_b")


def is_adapter(name):
    """True for the state-dict name of a LoRA adapter tensor (sp_convs.i.lora_a / lora_b)."""
    return name.rsplit(".", 1)[-1] in _ADAPTER_NAMES


def _spectral_layers(model):
    from models.fno import SpectralConv2d

    return [(n, m) for n, m in _unwrap(model).named_modules() if isinstance(m, SpectralConv2d)]


def apply_finetune_mode(model, params):
    """Freeze / add adapters as the config says (keys `finetune_mode`, `lora_rank`, `freeze`).

    Call on the model before the optimizer is built (and before loading a checkpoint that
    holds adapters). Returns the frozen parameter names. FinetuneError for an unknown mode,
    a bad rank, or `freeze` together with a mode other than full.
    """
    mode = params.get("finetune_mode") or "full"
    freeze = params.get("freeze")
    rank = params.get("lora_rank")
    if not isinstance(mode, str) or mode not in FINETUNE_MODES:
        raise FinetuneError(f"finetune_mode: unknown {mode!r} (use {', '.join(FINETUNE_MODES)})")
    if mode != "full" and freeze not in (None, False, "none", ""):
        raise FinetuneError(f"finetune_mode: {mode} and freeze: {freeze!r} both choose what "
                            f"trains; set one of them")
    if rank is not None and mode != "lora":
        raise FinetuneError(f"lora_rank is only used with finetune_mode: lora (got mode {mode})")
    if mode == "full":
        return freeze_parameters(model, freeze)
    frozen = freeze_parameters(model, FINETUNE_MODES[mode])
    if mode == "lora":
        rank = LORA_RANK_DEFAULT if rank is None else rank
        layers = _spectral_layers(model)
        widest = min(min(m.in_channels, m.out_channels) for _, m in layers)
        if isinstance(rank, bool) or not isinstance(rank, int) or not 1 <= rank <= widest:
            raise FinetuneError(f"lora_rank must be an integer in [1, {widest}] (the smallest "
                                f"layer width), got {rank!r}")
        for _, layer in layers:
            layer.add_lora(rank)
    target = _unwrap(model)
    n_train = sum(p.numel() for p in target.parameters() if p.requires_grad)
    n_all = sum(p.numel() for n, p in target.named_parameters() if not is_adapter(n))
    logging.info("fine-tuning mode %s%s: %d trainable parameters (model: %d)", mode,
                 f" (rank {rank})" if mode == "lora" else "", n_train, n_all)
    return frozen


def export_state_dict(model):
    """Plain state dict of `model` with every LoRA adapter merged into its spectral weight.

    Same names and shapes as a model without adapters: eval.py, `pretrained` and the
    published-format tools need nothing special. Without adapters: the state dict itself.
    """
    state = clean_state_dict(_unwrap(model).state_dict())
    for name, layer in _spectral_layers(model):
        if layer.lora_a is not None:
            state[f"{name}.weight"] = layer.merged_weight().detach()
            for a in _ADAPTER_NAMES:
                del state[f"{name}.{a}"]
    return state


def has_adapters(model):
    return any(layer.lora_a is not None for _, layer in _spectral_layers(model))


def merge_adapters(model):
    """Fold every LoRA adapter into its base weight in place and remove it (for inference).

    The base weights keep requires_grad as they were (frozen after a LoRA run).
    """
    for _, layer in _spectral_layers(model):
        layer.merge_lora()
