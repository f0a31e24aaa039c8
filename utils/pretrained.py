"""Self-contained pre-trained models: what a checkpoint carries, the model card, and the API.

    from utils.pretrained import load_pretrained
    model = load_pretrained("pretrained/poisson_k1_5/model.pt", device="cpu")
    u = model.solve(f, coefficients)   # f (B, H, W) or (H, W); coefficients (B, k) or (k,)

`solve` takes PHYSICAL inputs (the source on any grid the model supports, the coefficients in
the HDF5 `tensor` layout of the PDE, e.g. Poisson [K11, K22, K12]) and returns the solution u
in physical units, numpy in -> numpy out, torch in -> torch out (on the input's device). The
per-instance normalisation is `utils.data_utils.normalize_inputs`, the one the data loader
uses; its factor cancels in u (DESIGN.md section 5), so the model's output is u itself.

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

Model card: the trainer writes `model_card.json` (the model_info of ckpt_best.tar plus
`weights`) beside ckpt_best.tar with every new best. eval.py never rewrites a checkpoint, nor
the card of an exported / shipped model; it records its result in the card of a training run
only when it evaluates that run on its own test split (`record_test_result` has the rule):
under `evaluations[test file name]`, and under `metrics.test` when the test file comes from
the training distribution (same PDE, coefficient range, grid and source parameters, see
`same_distribution`). `export_pretrained` (python utils/pretrained.py export ...)
writes a small shippable `model.pt` (float32 weights + model_info with the card's test
metrics, no optimizer state) and its card.

Checkpoints written before model_info existed still load here when the training config they
carry still points to the scales file and train file (their info is rebuilt from them); they
fine-tune and evaluate through a config as before.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import re
import sys
import zipfile

import h5py
import numpy as np
import torch

if __name__ == "__main__":  # run as a script: make the repository root importable
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.errors import CheckpointError, DataError, UserError  # noqa: E402
from utils.run_layout import MODEL_CARD  # noqa: E402

MODEL_INFO_VERSION = 1
# HDF5 `tensor` columns of each PDE (DESIGN.md section 4); the model input is [f, columns..]
COEFFICIENTS = {
    "poisson": ["K11", "K22", "K12"],
    "ad": ["K11", "K22", "K12", "v1", "v2"],
    "helmholtz": ["t0", "omega"],
}
# root attributes that describe the distribution of a data file (compared by same_distribution)
DISTRIBUTION_KEYS = ("pde", "coef_range", "n", "ng", "sigma", "sparse", "Lx", "Ly")
_REQUIRED = ("version", "architecture", "pde", "channel_layout", "channels", "coefficients",
             "scales", "grid")


# --------------------------------------------------------------------------------------------
# reading checkpoints safely
# --------------------------------------------------------------------------------------------
def read_checkpoint(path):
    """utils.finetune.safe_torch_load (weights_only=True) of a checkpoint, with one-line
    CheckpointErrors that say what the file is instead (HDF5 data, not a torch file, a pickle
    that needs code: refused, never executed). Returns the loaded dict (on the CPU).
    """
    if not path or not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    if head.startswith(b"\x89HDF"):
        raise CheckpointError(f"{path} is an HDF5 data file, not a checkpoint")
    if not (zipfile.is_zipfile(path) or head.startswith(b"\x80")):  # torch.save: zip or pickle
        raise CheckpointError(f"{path} is not a PyTorch checkpoint (not a torch.save file)")
    from utils.finetune import safe_torch_load

    try:
        obj = safe_torch_load(path)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = found.group(1) if found else "objects other than tensors and plain data"
        raise CheckpointError(f"{path} refused: loading it would unpickle {what} (only "
                              f"tensors and plain data are loaded, weights_only=True)") from None
    except Exception as e:  # torch raises several types for foreign or truncated files
        raise CheckpointError(f"{path} is not a PyTorch checkpoint ({type(e).__name__}: "
                              f"{' '.join(str(e).split())[:120]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a checkpoint")
    return obj


def _state_of(ckpt, path):
    from utils.finetune import clean_state_dict

    state = ckpt.get("model_state")
    if not (isinstance(state, dict) and state and all(map(torch.is_tensor, state.values()))):
        raise CheckpointError(f"{path} has no model weights ('model_state'); keys: "
                              f"{', '.join(map(str, list(ckpt)[:8])) or 'none'}")
    return clean_state_dict(state)


# --------------------------------------------------------------------------------------------
# building model_info
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
        attrs["pde"] = pde_of(path, sf.n_tensor, sf.pde)
        attrs.update(file=os.path.basename(path), n_samples=int(sf.n_samples),
                     grid=[int(s) for s in sf.shape], n_tensor=int(sf.n_tensor))
    return attrs


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
    pdes = [d["pde"] for d in files]
    if layout == "mixed":
        from utils.mixed_data import MIXED_CHANNELS

        pde, channels = "mixed", list(MIXED_CHANNELS)
    else:
        pde = pdes[0]
        channels = ["f"] + COEFFICIENTS[pde]
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
                "lora_rank"):
        training[key] = plain(_get(params, key))
    training["pretrained"] = os.path.basename(pretrained) if pretrained else None
    return dict(
        version=MODEL_INFO_VERSION,
        architecture=plain(arch),
        n_params=int(n_params if n_params is not None else count_parameters(arch)),
        pde=pde, pdes=sorted(set(pdes), key=pdes.index), channel_layout=layout,
        channels=channels,
        coefficients={p: list(COEFFICIENTS[p]) for p in sorted(set(pdes), key=pdes.index)},
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
# model card
# --------------------------------------------------------------------------------------------
def card_path_for(weights):
    return os.path.join(os.path.dirname(os.path.abspath(weights)), MODEL_CARD)


def write_card(path, info, weights_name):
    """Write the model card (model_info + the weights file name) atomically."""
    from utils.fileio import write_json_atomic

    write_json_atomic(path, dict(info, weights=weights_name))


def read_card(path):
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read model card {path} ({e})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {path} is not a JSON object")
    return card


def same_distribution(info, test_attrs):
    """True when the test file's attributes match the (single) training file's on every key of
    DISTRIBUTION_KEYS that both have, and the grid is the same."""
    if info.get("pde") == "mixed" or len(info.get("data", [])) != 1:
        return False
    train = info["data"][0]
    if list(test_attrs.get("grid", [])) != list(info["grid"]):
        return False
    for key in DISTRIBUTION_KEYS:
        if key in train and key in test_attrs:
            a, b = train[key], test_attrs[key]
            if isinstance(a, (int, float, list)) and not isinstance(a, bool):
                if not np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6):
                    return False
            elif a != b:
                return False
    return True


def _same_file(a, b):
    try:
        return isinstance(a, str) and isinstance(b, str) and os.path.samefile(a, b)
    except OSError:
        return False


def record_test_result(weights, summary, rel_l2, run_config=None):
    """After eval.py: put the test result into the model card beside `weights`, when the rule
    below allows it. Returns the card path, or None when the card was left as it is.

    The rule (DESIGN.md section 9): a card takes a test result only from an evaluation of
    its own training run on that run's test split, that is when
    - the weights are a training checkpoint: they carry their training config `run_config`
      (an exported or shipped `model.pt` carries none, so its card is never rewritten);
    - the card beside them describes them (its `weights` is their file name);
    - the test file is the file the run's config names as `test_path` (the same file);
    - the mean error is finite (a NaN result is never recorded).
    The result goes under `evaluations[test file]`, and under `metrics.test` when the test
    file has the training distribution (`same_distribution`). A card that cannot be written
    (read-only location, full disk) is a warning: the evaluation's own outputs are written.
    """
    from utils.errors import StorageError

    path = card_path_for(weights)
    if not (isinstance(run_config, dict) and os.path.isfile(path)):
        return None
    if not _same_file(run_config.get("test_path"), summary["test_path"]):
        return None   # another test file: its result lives in the eval output folder only
    rel_l2 = np.asarray(rel_l2, np.float64)
    if rel_l2.size == 0 or not np.all(np.isfinite(rel_l2)):
        logging.warning("model card %s left unchanged: the test error is not finite", path)
        return None
    card = read_card(path)
    if card.get("weights") != os.path.basename(weights):
        return None  # the card describes another file of this directory (ckpt_best.tar)
    attrs = describe_data_file(summary["test_path"])
    result = dict(rel_l2_mean=float(rel_l2.mean()), rel_l2_median=float(np.median(rel_l2)),
                  rel_l2_std=float(rel_l2.std(ddof=1)) if rel_l2.size > 1 else 0.0,
                  n_test=int(rel_l2.size), test_loss=summary.get("test_loss"),
                  test_file=attrs["file"], test_seed=attrs.get("seed"), grid=attrs["grid"],
                  pde=attrs["pde"], coef_range=attrs.get("coef_range"))
    card.setdefault("evaluations", {})[attrs["file"]] = result
    if same_distribution(card, attrs):
        card.setdefault("metrics", {})["test"] = result
    try:
        write_card(path, {k: v for k, v in card.items() if k != "weights"}, card["weights"])
    except (StorageError, OSError) as e:
        logging.warning("model card %s not updated (%s); the result is in the evaluation's "
                        "output folder", path, e)
        return None
    logging.info("model card %s: recorded the test result on %s", path, attrs["file"])
    return path


# --------------------------------------------------------------------------------------------
# the API
# --------------------------------------------------------------------------------------------
def _device(device):
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {device} requested but CUDA is not available")
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
                (info['coefficients'][pde], e.g. Poisson [K11, K22, K12]).
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
        single = f.ndim == 2
        if single:
            f, c = f[None], c.reshape(1, -1)
        if f.ndim != 3:
            raise DataError(f"source f must be (B, H, W) or (H, W), got shape {f.shape}")
        pde, columns = self.coefficient_columns(pde)
        if c.ndim != 2 or c.shape != (f.shape[0], len(columns)):
            raise DataError(f"{pde} coefficients must be (B={f.shape[0]}, {len(columns)}) "
                            f"[{', '.join(columns)}], got shape {c.shape}")
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
    """Load a checkpoint or exported model (`model.pt`, `ckpt_best.tar`) for inference.

    device: None / 'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1', a torch.device.
    Returns a PretrainedFNO. Raises CheckpointError (one line) for a file that is not a usable
    checkpoint. Loading is torch.load(weights_only=True): nothing but tensors and plain data
    is unpickled.
    """
    from models.fno import FNO2d

    device = _device(device)
    ckpt = read_checkpoint(path)
    state = _state_of(ckpt, path)
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


def export_pretrained(weights, out_dir, overwrite=False):
    """Write `out_dir/model.pt` (float32 weights + model_info, no optimizer state) and
    `out_dir/model_card.json` from a checkpoint; the test metrics of the card beside the
    checkpoint (eval.py) are folded in. Returns (model path, card path)."""
    from utils.fileio import torch_save_atomic

    ckpt = read_checkpoint(weights)
    state = {k: v.detach().to(torch.float32).contiguous().clone()
             for k, v in _state_of(ckpt, weights).items()}
    info = dict(info_of(ckpt, weights))
    card = card_path_for(weights)
    if os.path.isfile(card):
        old = read_card(card)
        if old.get("weights") == os.path.basename(weights):
            if "test" in old.get("metrics", {}):
                info["metrics"] = dict(info.get("metrics", {}), test=old["metrics"]["test"])
            if old.get("evaluations"):
                info["evaluations"] = old["evaluations"]
    os.makedirs(out_dir, exist_ok=True)
    model_path = os.path.join(out_dir, "model.pt")
    card_path = os.path.join(out_dir, MODEL_CARD)
    for p in (model_path, card_path):
        if os.path.exists(p) and not overwrite:
            raise UserError(f"{p} exists (pass --overwrite to replace it)")
    torch_save_atomic(dict(model_state=state, model_info=info), model_path)
    write_card(card_path, info, "model.pt")
    return model_path, card_path


def main(argv=None):
    p = argparse.ArgumentParser(description="Export a checkpoint as a small self-contained "
                                            "model (model.pt + model_card.json).")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("export", help="checkpoint -> OUT_DIR/model.pt + model_card.json")
    e.add_argument("weights", help="checkpoint (e.g. .../checkpoints/ckpt_best.tar)")
    e.add_argument("out_dir")
    e.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    model_path, card_path = export_pretrained(args.weights, args.out_dir, args.overwrite)
    size = os.path.getsize(model_path)
    logging.info("wrote %s (%.2f MB) and %s", model_path, size / 1e6, card_path)


if __name__ == "__main__":
    from utils.cli import run_cli

    run_cli(main)
