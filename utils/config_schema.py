"""THE config defaults: every key the code reads, with its default, type and allowed values.

`utils/YParams.py` applies `defaults()` when a config is loaded, so code reads `params.lr`
and never re-states a default; library functions that also accept plain dicts (tests,
notebooks) read keys through `param(params, key)`, which falls back to the same table.
A config file only needs the keys that differ from these defaults (and the data paths).

`SCHEMA` is plain data, meant to be validated against: for each key a `Key` with
    default   the value when the config does not give the key (None: none / derived, see doc)
    types     the Python types a value may have (YAML-loaded); None is allowed iff nullable
    choices   allowed values (strings), or None
    min       smallest allowed number, or None
    max       largest allowed number, or None
    below     numbers must be smaller than this (an open bound), or None
    required  'train' when train.py needs the key (no default), else None
    doc       one line
`IGNORED` lists the published keys (configs of the original study) that the code accepts
but does not read, with their published value and why nothing reads them.

`validate` checks a config against the table when it is loaded and after every `--set`
(`utils/YParams.py`): an unknown key is an error that names the closest known key, a value of
the wrong type or out of range is an error; both are one line with exit status 2.
"""
import difflib
import math
from dataclasses import dataclass
from typing import Any, Optional

NUM = (int, float)
PATHS = (str, list)     # a split may be a list of files (mixed physics)

# THE fine-tuning modes (`finetune_mode`), each as the `freeze` preset it equals (the presets:
# utils/finetune.py FREEZE_PRESETS); 'lora' adds low-rank adapters to the frozen spectral
# weights. Read by utils/finetune.py and benchmarks/finetune_modes.py.
FINETUNE_MODES = {
    "full": "none",                 # every tensor trains (as published)
    "head": "fourier",              # lift fc0 + projection fc1/fc2 train
    "frozen_fourier": "spectral",   # all but the spectral weights train
    "lora": "spectral",             # frozen_fourier + low-rank spectral updates
}


@dataclass(frozen=True)
class Key:
    default: Any
    types: tuple
    doc: str
    nullable: bool = False
    choices: Optional[tuple] = None
    min: Optional[float] = None
    required: Optional[str] = None
    max: Optional[float] = None
    below: Optional[float] = None


SCHEMA = {
    # --- data (utils/data_utils.py, DESIGN.md sections 4-5)
    "train_path": Key(None, PATHS, "train split file(s)", nullable=True, required="train"),
    "val_path": Key(None, PATHS, "validation split file(s)", nullable=True, required="train"),
    "test_path": Key(None, PATHS, "test split file(s) of eval.py (or --test_path)",
                     nullable=True),
    "scales_path": Key(None, (str,), "normalisation scales .npy (utils/get_scale.py); null only "
                       "when `pretrained` is a model that carries its scales", nullable=True),
    "scales": Key(None, (list,), "the scales as values (set from a pre-trained model's info); "
                  "wins over scales_path", nullable=True),
    "channel_layout": Key("native", (str,), "model input channels: the file's own "
                          "coefficients, or the 7-channel mixed-physics layout",
                          choices=("native", "mixed")),
    "subsample": Key(1, (int,), "keep every k-th TRAINING sample (N // k samples; published)",
                     min=1),
    "n_train": Key(None, (int,), "a random subset of n TRAINING samples drawn with `seed` "
                   "(nested in n); null: subsample", nullable=True, min=1),
    "in_memory": Key(False, (bool,), "read the whole (subsampled) split into RAM once"),
    "num_data_workers": Key(0, (int,), "DataLoader worker processes (0: main process)", min=0),
    "batch_size": Key(None, (int,), "GLOBAL training batch (each of W ranks: batch_size // W)",
                      nullable=True, min=1, required="train"),
    "valid_batch_size": Key(None, (int,), "GLOBAL validation/test batch; null: batch_size "
                            "(1 when neither is set)", nullable=True, min=1),
    # --- model (models/fno.py, DESIGN.md section 6)
    "in_dim": Key(None, (int,), "input channels: 1 source + coefficient channels",
                  nullable=True, min=1, required="train"),
    "out_dim": Key(1, (int,), "output channels", min=1),
    "layers": Key(None, (list,), "widths: lift width + one per Fourier layer (L + 1)",
                  nullable=True),
    "width": Key(None, (int,), "one width for all layers when `layers` is not given",
                 nullable=True, min=1),
    "n_layers": Key(4, (int,), "Fourier layers when `width` is given and modes are ints", min=1),
    "modes1": Key(None, (int, list), "Fourier modes along H (int or one per layer)",
                  nullable=True),
    "modes2": Key(None, (int, list), "Fourier modes along W (int or one per layer)",
                  nullable=True),
    "fc_dim": Key(128, (int,), "hidden width of the projection", min=1),
    "mode_cut": Key(0, (int,), "> 0: all modes = mode_cut (published override)", min=0),
    "embed_cut": Key(0, (int,), "> 0: all widths = embed_cut (published override)", min=0),
    "fc_cut": Key(0, NUM, "> 0 with embed_cut: fc_dim = embed_cut * fc_cut", min=0),
    "dropout": Key(0.0, NUM, "dropout probability in the projection", nullable=True, min=0,
                   below=1),
    "amp": Key(False, (bool,), "bf16 autocast on CUDA (FFTs stay float32)"),
    "compile": Key(False, (bool,), "torch.compile the model"),
    # --- optimisation (utils/trainer.py, utils/loss_utils.py)
    "loss_func": Key("mse", (str,), "training loss: 'mse' squared error (published, shaped by "
                     "loss_style), 'rel_l2' relative L2 of the FNO paper",
                     choices=("mse", "rel_l2")),
    "loss_style": Key("sum", (str,), "'mse' loss per sample: 'sum' (published) or 'mean' "
                      "over pixels", choices=("sum", "mean")),
    "optimizer": Key("adam", (str,), "optimizer", choices=("adam", "adamw", "sgd")),
    "lr": Key(1e-3, NUM, "learning rate", min=0),
    "weight_decay": Key(0.01, NUM, "AdamW weight decay", min=0),
    "scheduler": Key("none", (str,), "learning-rate schedule: 'cosine' per epoch over the "
                     "epochs trained (published), 'plateau' warm-up + constant + reduce on "
                     "validation plateaus (for early stopping), 'none'", nullable=True,
                     choices=("cosine", "plateau", "none")),
    "warmup_steps": Key(0, (int,), "linear warm-up steps of scheduler 'plateau'",
                        nullable=True, min=0),
    "lr_plateau_patience": Key(3, (int,), "scheduler 'plateau': checks without improvement "
                               "before the lr is reduced", min=1),
    "lr_plateau_factor": Key(0.5, NUM, "scheduler 'plateau': lr multiplier at a plateau (< 1)",
                             min=0),
    "max_epochs": Key(None, (int,), "epochs to train", nullable=True, min=1,
                      required="train"),
    "min_steps": Key(0, (int,), "at least this many optimizer steps; 0 or null: fixed epochs "
                     "(published)", nullable=True, min=0),
    "max_cosine_lr_epochs": Key(None, (int,), "cosine period in epochs; null: the epochs the "
                                "run trains", nullable=True, min=1),
    "max_steps": Key(0, (int,), "> 0: the run's length in optimizer steps (the cap of an "
                     "early-stopped run), instead of max_epochs / min_steps; 0 or null: "
                     "max_epochs", nullable=True, min=0),
    "early_stop_patience": Key(0, (int,), "stop at the validation check that is the n-th in "
                               "a row without improvement; 0 or null: off (published)",
                               nullable=True, min=0),
    "early_stop_min_delta": Key(0.0, NUM, "an improvement: validation loss < best * (1 - "
                                "this) (relative; < 1); also the plateau schedule's",
                                nullable=True, min=0),
    "val_every_steps": Key(0, (int,), "validate (and checkpoint) every max(this, steps per "
                           "epoch) optimizer steps and at the end; 0 or null: every epoch "
                           "(published)", nullable=True, min=0),
    "val_metric": Key("loss", (str,), "the validation metric that picks the best checkpoint "
                      "and drives early stopping and the plateau schedule: 'loss' (the "
                      "training loss, published) or 'rel_l2' (the relative L2 error)",
                      choices=("loss", "rel_l2")),
    "val_every_growth": Key(0.0, NUM, "> 0: validation checks at least this fraction of the "
                            "steps trained so far apart (geometric cadence: patience counted "
                            "in checks grows with the run); 0 or null: every val_every_steps",
                            nullable=True, min=0),
    "ckpt_every_s": Key(0, NUM, "> 0: write the latest checkpoint when this many seconds "
                        "passed since the last one (checked after every step) instead of at "
                        "every validation, and the best one with it (kept in memory until "
                        "then); 0 or null: at every validation", nullable=True,
                        min=0),
    "grad_clip": Key(None, NUM, "max gradient 2-norm; null: no clipping", nullable=True,
                     min=0),
    "seed": Key(0, (int,), "model initialisation, epoch order, n_train subset", min=0,
                max=2 ** 32 - 1),   # numpy's seeds are 32-bit
    # --- fine-tuning (utils/finetune.py)
    "pretrained": Key(None, (str,), "weights to start from (the run's own checkpoint wins)",
                      nullable=True),
    "pretrained_strict": Key(True, (bool,), "false: load only the tensors that fit"),
    "freeze": Key(None, (str, list), "a preset of utils.finetune.FREEZE_PRESETS or a list of "
                  "parameter-name prefixes", nullable=True),
    "finetune_mode": Key("full", (str,), "what trains: everything, lift + projection only, all "
                         "but the spectral weights, or those plus LoRA adapters on them",
                         nullable=True, choices=tuple(FINETUNE_MODES)),
    "lora_rank": Key(None, (int,), "adapter rank with finetune_mode lora; null: 4",
                     nullable=True, min=1),
    # --- run outputs, logging
    "save_checkpoint": Key(True, (bool,), "write checkpoints (resume needs them)"),
    "plot_figs": Key(False, (bool,), "log an example figure to W&B each epoch"),
    "log_to_wandb": Key(False, (bool,), "log to Weights & Biases (WANDB_MODE is respected)"),
    "entity": Key(None, (str,), "W&B entity", nullable=True),
    "project": Key(None, (str,), "W&B project", nullable=True),
}

# published keys that nothing reads: accepted (with their published value), never used
IGNORED = {
    "model": ("fno", "the only model is the FNO (models/fno.py)"),
    "system": (None, "the PDE is given by the data files, not the config"),
    "Lx": (1.0, "the domain size used by the normalisation is the one in the scales file"),
    "Ly": (1.0, "the domain size used by the normalisation is the one in the scales file"),
    "nx": (128, "the grid is the data file's (the FNO is resolution-agnostic)"),
    "ny": (128, "the grid is the data file's (the FNO is resolution-agnostic)"),
    "log_to_screen": (True, "rank 0 always logs to stderr (utils/logging_utils.py)"),
}


def defaults():
    """{key: default} applied at load: every SCHEMA key, and the IGNORED keys that have a
    published value (so a loaded config lists every key as the published configs did)."""
    out = {k: spec.default for k, spec in SCHEMA.items()}
    out.update({k: v for k, (v, _) in IGNORED.items() if v is not None})
    return out


def param(params, key):
    """`key` of a params object (YParams, dict, or any object with attributes), or its
    SCHEMA default when the object does not have it."""
    if isinstance(params, dict):
        if key in params:
            return params[key]
    elif hasattr(params, "keys") and key in params.keys():
        return params[key]
    else:
        try:
            return getattr(params, key)
        except (AttributeError, KeyError):
            pass
    return SCHEMA[key].default


# names other codes use for our keys: an unknown key close to one of them suggests our key
ALIASES = {"learning_rate": "lr", "epochs": "max_epochs", "num_epochs": "max_epochs",
           "n_epochs": "max_epochs", "num_workers": "num_data_workers",
           "val_batch_size": "valid_batch_size", "eval_batch_size": "valid_batch_size",
           "clip_grad": "grad_clip", "gradient_clip": "grad_clip", "random_seed": "seed",
           "use_wandb": "log_to_wandb", "lr_scheduler": "scheduler", "weights": "pretrained",
           "checkpoint": "pretrained", "modes": "mode_cut"}
# what the items of a list value must be: positive integers, strings or numbers
_LIST_ITEMS = {"layers": "int", "modes1": "int", "modes2": "int", "train_path": "str",
               "val_path": "str", "test_path": "str", "freeze": "str", "scales": "num"}


def _type_name(spec):
    names = {int: "an integer", float: "a number", bool: "true or false", str: "a string",
             list: "a list"}
    types = tuple(t for t in spec.types if not (t is int and float in spec.types))
    text = " or ".join(names.get(t, t.__name__) for t in types)
    return text + (" or null" if spec.nullable and not spec.required else "")


def check_value(key, value):
    """`value` checked against SCHEMA[key] (type, null, choices, bounds); returns it, an
    integral float turned into an int for an integer key (YAML reads 1e3 as a float).
    Raises ConfigError with one line otherwise."""
    from utils.errors import ConfigError

    spec = SCHEMA[key]
    if value is None:
        if spec.nullable:
            return value
        raise ConfigError(f"{key} must be {_type_name(spec)}, got null")
    if (isinstance(value, float) and int in spec.types and float not in spec.types
            and math.isfinite(value) and value.is_integer()):
        value = int(value)
    ok = (bool in spec.types) if isinstance(value, bool) else isinstance(value, spec.types)
    if not ok:
        raise ConfigError(f"{key} must be {_type_name(spec)}, got {value!r}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be finite, got {value!r}")
    if isinstance(value, list):
        item = _LIST_ITEMS.get(key)
        ok = {"str": lambda v: isinstance(v, str),
              "int": lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 1,
              "num": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
              and math.isfinite(v)}.get(item, lambda v: True)
        if not value or not all(ok(v) for v in value):
            what = {"str": "strings", "int": "positive integers", "num": "finite numbers"}
            raise ConfigError(f"{key} must be a non-empty list of {what.get(item, 'values')}, "
                              f"got {value!r}")
    if spec.choices is not None and value not in spec.choices:
        raise ConfigError(f"{key} must be one of {', '.join(map(str, spec.choices))}, "
                          f"got {value!r}")
    if not isinstance(value, (list, str, bool)):
        if spec.min is not None and value < spec.min:
            raise ConfigError(f"{key} must be >= {spec.min:g}, got {value!r}")
        if spec.max is not None and value > spec.max:
            raise ConfigError(f"{key} must be <= {spec.max}, got {value!r}")
        if spec.below is not None and value >= spec.below:
            raise ConfigError(f"{key} must be < {spec.below:g}, got {value!r}")
    return value


def suggest(key):
    """The known key closest to an unknown one (typos, other codes' names), or None."""
    names = list(SCHEMA) + list(IGNORED) + list(ALIASES)
    close = difflib.get_close_matches(str(key), names, n=1, cutoff=0.6)
    return ALIASES.get(close[0], close[0]) if close else None


def validate(config, where="the config"):
    """Check (and normalise, see `check_value`) every key of the dict `config` in place.

    An unknown key is an error naming the closest known key; the published keys the code
    ignores (IGNORED) are known keys. Raises ConfigError (one line, exit status 2)."""
    from utils.errors import ConfigError

    for key in list(config):
        if key in IGNORED:
            continue
        if key not in SCHEMA:
            close = suggest(key)
            raise ConfigError(f"unknown key '{key}' in {where}"
                              + (f"; did you mean '{close}'?" if close else "")
                              + " (the keys: utils/config_schema.py)")
        config[key] = check_value(key, config[key])
    return config


# Keys that may differ between a run's checkpoint and the config it is resumed with: they
# change how the run is executed or logged, not what it computes. max_epochs, max_steps (and
# max_cosine_lr_epochs) may change too: the cosine schedule then follows the new period from
# the current epoch (`adapt_cosine_period`). Any other difference refuses the resume.
RESUME_SAFE_KEYS = ("max_epochs", "max_cosine_lr_epochs", "num_data_workers", "valid_batch_size",
                    "log_to_wandb", "plot_figs", "entity", "project", "in_memory", "compile",
                    "save_checkpoint", "pretrained", "pretrained_strict", "ckpt_every_s",
                    "max_steps")


def config_differences(old, new, safe=RESUME_SAFE_KEYS):
    """['key: old -> new', ...] for the keys of two config dicts that differ, except `safe`."""
    out = []
    for key in sorted(set(old) | set(new), key=str):
        if key in safe:
            continue
        a, b = old.get(key), new.get(key)
        if a != b:
            out.append(f"{key}: {a!r} -> {b!r}")
    return out
