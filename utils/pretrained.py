"""Pre-trained models for inference: `load_pretrained`, `PretrainedFNO.solve`, and export.

    from utils.pretrained import load_pretrained
    model = load_pretrained("pretrained/poisson_k1_5/model.pt", device="cpu")   # or .safetensors
    u = model.solve(f, coefficients)   # f (B, H, W) or (H, W); coefficients (B, k) or (k,)

`solve` takes PHYSICAL inputs (the source on any grid the model supports, the coefficients in
the HDF5 `tensor` layout of the PDE, e.g. Poisson [K11, K22, K12]) and returns the solution u
in physical units, numpy in -> numpy out, torch in -> torch out (on the input's device). The
per-instance normalisation is `utils.data_utils.normalize_inputs`, the one the data loader
uses; its factor cancels in u (DESIGN.md section 5), so the model's output is u itself.

model_info, the model card and checkpoint reading live in `utils/checkpoint.py`;
this module is the inference API on top of them and the export CLI.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys

import numpy as np
import torch

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils import pdes  # noqa: E402
from utils.checkpoint import (UNKNOWN_PDE, info_of, model_state_of,  # noqa: E402
                              read_checkpoint)
from utils.errors import CheckpointError, DataError, UserError  # noqa: E402
from utils.fileio import read_json  # noqa: E402
from utils.model_card import card_path_for, read_card, write_card  # noqa: E402
from utils.run_layout import MODEL_CARD  # noqa: E402


# --------------------------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------------------------
def _device(device):
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise UserError(f"device {device} is not a device name (auto, cpu, cuda, cuda:N)") \
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise UserError(f"device {device} requested but there are only "
                        f"{torch.cuda.device_count()} CUDA devices")
    return device


class PretrainedFNO:
    """A trained FNO with what it takes to use it. `solve(f, coefficients)` maps physical
    inputs to the solution; `info` is the model_info (architecture, channels, scales, data,
    metrics); `model` the torch module (eval mode)."""

    def __init__(self, model, info, device, path=None):
        self.model, self.info, self.device, self.path = model, info, device, path
        arch = info["architecture"]
        self.max_modes1, self.max_modes2 = max(arch["modes1"]), max(arch["modes2"])
        self.scales = np.asarray(info["scales"], np.float64)
        self.pde = info["pde"]

    def __repr__(self):
        a = self.info["architecture"]
        return (f"PretrainedFNO({self.pde}, channels {self.info['channels']}, width "
                f"{a['layers'][0]}, modes {self.max_modes1}x{self.max_modes2}, "
                f"{self.info.get('n_params')} parameters, trained on grid "
                f"{self.info['grid'][0]}x{self.info['grid'][1]}, device {self.device})")

    def check_grid(self, h, w):
        """DataError unless the FNO can take an h x w grid (H >= 2 modes1, W//2+1 >= modes2)."""
        if h < 2 * self.max_modes1 or w // 2 + 1 < self.max_modes2:
            raise DataError(f"grid {h}x{w} is too small for this model (modes "
                            f"{self.max_modes1}x{self.max_modes2}): it needs H >= "
                            f"{2 * self.max_modes1} and W >= {2 * (self.max_modes2 - 1)}")

    def coefficient_columns(self, pde=None):
        """(pde, column names) of the coefficients solve() expects for `pde`."""
        if pde is None:
            if self.pde == "mixed":
                raise DataError(f"this mixed-physics model needs pde= (one of "
                                f"{', '.join(self.info['coefficients'])})")
            pde = self.pde
        if pde not in self.info["coefficients"]:
            raise DataError(f"this is a {self.pde} model (trained on "
                            f"{', '.join(self.info['pdes'])}); it cannot solve {pde} problems")
        return pde, self.info["coefficients"][pde]

    def solve(self, f, coefficients, pde=None, batch_size=64):
        """Solution u for sources f and coefficients, in physical units.

        Args:
            f: (B, H, W) or (H, W) source on the periodic grid (x along the last axis), numpy
                or torch; any grid the model takes (check_grid).
            coefficients: (B, k) or (k,) in the HDF5 `tensor` layout of the PDE
                (info['coefficients'][pde], e.g. Poisson [K11, K22, K12]); for a PDE whose
                coefficient is a field (Darcy: [a]) the fields (B, k, H, W) or (k, H, W).
            pde: the PDE of the inputs; needed for a mixed-physics model, checked otherwise.
            batch_size: samples per forward pass (bounds memory).
        Returns:
            u of f's shape, float32; numpy for numpy input, torch (on f's device) for torch.
        """
        as_torch = torch.is_tensor(f)
        out_device = f.device if as_torch else None
        f = np.asarray(f.detach().cpu() if as_torch else f, dtype=np.float32)
        c = coefficients
        c = np.asarray(c.detach().cpu() if torch.is_tensor(c) else c, dtype=np.float64)
        pde, columns = self.coefficient_columns(pde)
        # coefficient fields (B, c, H, W) for a PDE whose inputs are fields (registry layout)
        fields = pde != UNKNOWN_PDE and pdes.get(pde).input_dataset == "coef_field"
        single = f.ndim == 2
        if single:
            f, c = f[None], (c.reshape(1, -1, *f.shape) if fields else c.reshape(1, -1))
        if f.ndim != 3:
            raise DataError(f"source f must be (B, H, W) or (H, W), got shape {f.shape}")
        want = (f.shape[0], len(columns), *(f.shape[1:] if fields else ()))
        if c.shape != want:
            raise DataError(f"{pde} coefficients must be {want} [{', '.join(columns)}], got "
                            f"shape {c.shape}")
        if not (np.all(np.isfinite(f)) and np.all(np.isfinite(c))):
            raise DataError("inputs hold NaN or inf values")
        b, h, w = f.shape
        self.check_grid(h, w)
        if self.info["channel_layout"] == "mixed":
            from utils.mixed_data import to_mixed
            c = to_mixed(pde, c)
        lx, ly = self.scales[-2], self.scales[-1]
        gh, gw = self.info["grid"]
        measure, ref_measure = (lx / w) * (ly / h), (lx / gw) * (ly / gh)
        from utils.data_utils import normalize_inputs

        out = np.empty((b, h, w), np.float32)
        with torch.no_grad():
            for i in range(0, b, batch_size):
                x = normalize_inputs(f[i:i + batch_size], c[i:i + batch_size], self.scales,
                                     measure, ref_measure)
                pred = self.model(torch.from_numpy(x).to(self.device))
                out[i:i + batch_size] = pred[:, 0].float().cpu().numpy()
        if single:
            out = out[0]
        return torch.from_numpy(out).to(out_device) if as_torch else out


def load_pretrained(path, device=None):
    """Load an exported model (`model.safetensors`, `model.pt`) or a checkpoint
    (`ckpt_best.tar`) for inference.

    device: None / 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', a torch.device.
    Returns a PretrainedFNO. Raises CheckpointError (one line) for a file that is not a usable
    checkpoint. Loading is safetensors or torch.load(weights_only=True): nothing but tensors
    and plain data is unpickled.
    """
    from models.fno import FNO2d

    device = _device(device)
    ckpt = read_checkpoint(path)
    state = model_state_of(ckpt, path)
    info = info_of(ckpt, path)
    arch = info["architecture"]
    try:
        model = FNO2d(**arch)
        model.load_state_dict(state)
    except (TypeError, RuntimeError, ValueError) as e:
        raise CheckpointError(f"{path}: the weights do not fit the architecture in its "
                              f"model_info ({' '.join(str(e).split())[:200]})") from None
    model.to(device).eval()
    return PretrainedFNO(model, info, device, path=os.path.abspath(path))


EXPORT_FORMATS = {"safetensors": "model.safetensors", "pt": "model.pt"}


STOPPING_KEYS = ("max_steps", "best_step", "stop_step", "stopped_early",
                 "capped_while_improving", "val_checks")


def stopping_point(weights):
    """The stopping point of the run whose best checkpoint `weights` is ({run}/checkpoints/
    ckpt_best.tar beside {run}/train_summary.json): its step cap, best and last step, whether
    early stopping ended it and whether the cap ended it while it still improved. {} for any
    other file or a run without a summary (e.g. a run still training)."""
    ckpt_dir = os.path.dirname(os.path.abspath(weights))
    if os.path.basename(weights) != "ckpt_best.tar" or os.path.basename(ckpt_dir) != "checkpoints":
        return {}
    summary = read_json(os.path.join(os.path.dirname(ckpt_dir), "train_summary.json"))
    if not isinstance(summary, dict):
        return {}
    return {k: summary[k] for k in STOPPING_KEYS if k in summary}


def export_pretrained(weights, out_dir, overwrite=False, fmt="safetensors"):
    """Write the shippable model of a checkpoint to `out_dir`: float32 weights, no optimizer
    state, and `model_card.json`; the test metrics of the card beside the checkpoint
    (eval.py) and the run's stopping point (`stopping_point`) are folded in. fmt
    'safetensors': `model.safetensors` (no pickle; the model_info is also its metadata key
    'model_info', JSON text, so the file is self-contained); 'pt': `model.pt` (torch.save
    of model_state + model_info).
    Returns (model path, card path)."""
    from utils.checkpoint import save_safetensors
    from utils.fileio import torch_save_atomic

    if fmt not in EXPORT_FORMATS:
        raise UserError(f"export format must be one of {', '.join(EXPORT_FORMATS)}, got {fmt!r}")
    ckpt = read_checkpoint(weights)
    state = {k: v.detach().to(torch.float32).contiguous().clone()
             for k, v in model_state_of(ckpt, weights).items()}
    info = dict(info_of(ckpt, weights))
    card = card_path_for(weights)
    if os.path.isfile(card):
        old = read_card(card)
        if old.get("weights") == os.path.basename(weights):
            if "test" in old.get("metrics", {}):
                info["metrics"] = dict(info.get("metrics", {}), test=old["metrics"]["test"])
            if old.get("evaluations"):
                info["evaluations"] = old["evaluations"]
    stopping = stopping_point(weights)
    if stopping:
        info["stopping"] = stopping
    os.makedirs(out_dir, exist_ok=True)
    name = EXPORT_FORMATS[fmt]
    model_path = os.path.join(out_dir, name)
    card_path = os.path.join(out_dir, MODEL_CARD)
    for p in (model_path, card_path):
        if os.path.exists(p) and not overwrite:
            raise UserError(f"{p} exists (pass --overwrite to replace it)")
    if fmt == "safetensors":
        save_safetensors(state, info, model_path)
    else:
        torch_save_atomic(dict(model_state=state, model_info=info), model_path)
    write_card(card_path, info, name)
    return model_path, card_path


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a checkpoint as a small self-contained "
                                            "model (model.safetensors + model_card.json).")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="checkpoint -> OUT_DIR/model.safetensors (or model.pt) "
                                      "+ model_card.json")
    e.add_argument("weights", help="checkpoint (e.g. .../checkpoints/ckpt_best.tar)")
    e.add_argument("out_dir")
    e.add_argument("--format", choices=sorted(EXPORT_FORMATS), default="safetensors",
                   help="safetensors (default: no pickle) or pt (torch.save)")
    e.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    model_path, card_path = export_pretrained(args.weights, args.out_dir, args.overwrite,
                                              args.format)
    size = os.path.getsize(model_path)
    logging.info("wrote %s (%.2f MB) and %s", model_path, size / 1e6, card_path)


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main)
