"""Checks a training run makes before it trains: is the config trainable, and may a checkpoint
be resumed with it.

One job: refuse, with one line (ConfigError / DataError, exit 2), a run that would train
something other than the user asked for. The trainer (utils/trainer.py) calls
`check_training_config` before it builds anything, and on resume `check_resume_config` and
`check_data_unchanged` before it loads any state from the checkpoint. Single keys (types,
ranges, allowed values) are checked when the config is loaded (utils/config_schema.py);
these are the rules between keys, and between a run and its checkpoint (DESIGN.md section 9).
"""
import logging

from utils.checkpoint import changed_data_file
from utils.config_schema import RESUME_SAFE_KEYS, SCHEMA, config_differences, defaults, param
from utils.errors import ConfigError, DataError


def check_training_config(params):
    """ConfigError when config `params` cannot train: a key training needs is missing, the
    model's sizes do not fit together (models/fno.resolve_config), or two keys contradict
    each other (e.g. warmup_steps without `scheduler: plateau`)."""
    from models.fno import resolve_config

    for key in (k for k, spec in SCHEMA.items() if spec.required == "train"):
        if params.get(key) is None:
            raise ConfigError(f"config '{params.config_name}' has no '{key}'")
    resolve_config(params)   # model sizes: consistent, and the weights fit in memory
    if params.get("scales_path") is None and params.get("scales") is None:
        raise ConfigError(f"config '{params.config_name}' has no 'scales_path' (it may be null "
                          f"only when 'pretrained' is a model that carries its scales)")
    if int(params.max_epochs) < 1:
        raise ConfigError(f"max_epochs must be >= 1, got {params.max_epochs}")
    min_steps = params.min_steps
    if min_steps is not None and (isinstance(min_steps, bool) or not isinstance(min_steps, int)
                                  or min_steps < 0):
        raise ConfigError(f"min_steps must be an integer >= 0 (0 or null: off), got {min_steps!r}")
    if not float(params.early_stop_min_delta or 0) < 1:
        raise ConfigError(f"early_stop_min_delta is a relative improvement and must be < 1, "
                          f"got {params.early_stop_min_delta!r}")
    if param(params, "scheduler") == "plateau" and not float(params.lr_plateau_factor) < 1:
        raise ConfigError(f"lr_plateau_factor must be < 1, got {params.lr_plateau_factor!r}")
    if params.warmup_steps and param(params, "scheduler") != "plateau":
        raise ConfigError("warmup_steps is the warm-up of `scheduler: plateau`; set that "
                          "scheduler or warmup_steps 0")


def check_resume_config(ckpt, params, run_dir):
    """ConfigError naming each setting of `params` that differs from the training config the
    checkpoint dict `ckpt` carries, other than RESUME_SAFE_KEYS (nothing to check when it
    carries none)."""
    if not (isinstance(ckpt, dict) and isinstance(ckpt.get("config"), dict)):
        return
    # a key the checkpoint lacks (written before the key existed) had its default
    diff = config_differences({**defaults(), **ckpt["config"]}, params.to_dict())
    if diff:
        raise ConfigError(
            f"cannot resume {run_dir} with other settings than its checkpoint "
            f"({'; '.join(diff)}); restore them or use a new --run_num (may change on "
            f"resume: {', '.join(RESUME_SAFE_KEYS)})")


def check_data_unchanged(ckpt, fingerprints, run_dir, path):
    """DataError naming a data file whose content differs from the one the checkpoint `ckpt`
    (read from `path`) was trained on (regenerated at the same path), by the run's current
    `fingerprints` (checkpoint.data_fingerprints); a warning for a checkpoint written before
    fingerprints were recorded."""
    recorded = ckpt.get("data_fingerprints") if isinstance(ckpt, dict) else None
    if not isinstance(recorded, dict):
        logging.warning("%s has no data fingerprints (written by an older version): "
                        "resuming without checking that the data files are unchanged", path)
        return
    changed = changed_data_file(recorded, fingerprints)
    if changed:
        raise DataError(f"cannot resume {run_dir}: the data file {changed[0]} "
                        f"({changed[1]}) changed since the checkpoint was written (another "
                        f"size or content: regenerated?); restore it or use a new --run_num")
