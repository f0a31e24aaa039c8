"""Fine-tuning helpers: load pre-trained weights into a model (weights only, no optimizer)."""
import logging
import os

import torch

from utils.YParams import UserError

_PREFIXES = ("module.", "_orig_mod.")  # DDP wrapper, torch.compile wrapper


class FinetuneError(UserError):
    """Pre-trained weights missing or not matching the model."""


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


def load_pretrained(model, path):
    """Load weights from `path` into `model` (strict: same keys and shapes).

    `path` holds a checkpoint dict with `model_state` (ours or the published one, plain or
    from a DDP run) or a bare state dict. Returns dict(path, n_tensors, epoch) where epoch is
    the checkpoint's (None for a bare state dict). Raises FinetuneError with the mismatches.
    """
    if not path or not os.path.isfile(path):
        raise FinetuneError(f"pre-trained weights not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # torch raises several types for corrupt/foreign files
        raise FinetuneError(f"cannot read weights {path}: {type(e).__name__}: {e}") from e
    if not isinstance(ckpt, dict):
        raise FinetuneError(f"{path} holds a {type(ckpt).__name__}, not a checkpoint or state dict")
    state = ckpt.get("model_state", ckpt)
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise FinetuneError(f"{path} has no model state dict (keys: {', '.join(map(str, list(ckpt)[:8]))})")
    state = clean_state_dict(state)
    target = model.module if hasattr(model, "module") else model
    target = getattr(target, "_orig_mod", target)
    own = target.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
              for k in own if k in state and state[k].shape != own[k].shape]
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
    return dict(path=os.path.abspath(path), n_tensors=len(state), epoch=epoch)
