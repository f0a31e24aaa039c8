"""Model cards: the JSON description beside a model's weights, and the test results it records.

One job: the card file. `model_card.json` is the model_info of the weights (utils/checkpoint.py
describes its fields) plus `weights`, the file name it describes. The trainer writes it beside
ckpt_best.tar with every write of that file (`checkpoint.save_checkpoint` calls `write_card`); an export
(`python utils/pretrained.py export ...`) writes one beside `model.safetensors` / `model.pt`,
keeping the card's test metrics.

eval.py never rewrites a checkpoint, nor the card of an exported / shipped model; it records
its result in the card of a training run only when it evaluates that run on its own test split
or a training distribution (`record_test_result`, the rule in DESIGN.md section 9): under
`evaluations[test file name]` (a mixed-physics model: one entry per PDE range it is tested
on), and under `metrics.test` when the test file comes from a single-PDE model's training
distribution (same PDE, coefficient range, grid and source parameters, see
`same_distribution`).
"""
import json
import logging
import os

import numpy as np

from utils.errors import CheckpointError
from utils.fileio import write_json_atomic
from utils.run_layout import MODEL_CARD

# root attributes that describe the distribution of a data file (compared by same_distribution)
DISTRIBUTION_KEYS = ("pde", "coef_range", "n", "ng", "sigma", "sparse", "Lx", "Ly")


def card_path_for(weights):
    """The model card of the weights file `weights`: MODEL_CARD in the same directory."""
    return os.path.join(os.path.dirname(os.path.abspath(weights)), MODEL_CARD)


def write_card(path, info, weights_name):
    """Write the model card (model_info + the weights file name) atomically."""
    write_json_atomic(path, dict(info, weights=weights_name))


def read_card(path):
    """The card at `path` as a dict; a one-line CheckpointError when it cannot be read or is
    not a JSON object."""
    try:
        with open(path) as f:
            card = json.load(f)
    except (OSError, ValueError) as e:
        raise CheckpointError(f"cannot read model card {path} ({e})") from None
    if not isinstance(card, dict):
        raise CheckpointError(f"model card {path} is not a JSON object")
    return card


def _has_distribution(train, grid, test_attrs):
    """True when the test file's attributes match the training file's `train` (a `data` entry
    of a card) on every key of DISTRIBUTION_KEYS that both have, and its grid is `grid`."""
    if not isinstance(grid, list) or list(test_attrs.get("grid", [])) != grid:
        return False
    for key in DISTRIBUTION_KEYS:
        if key in train and key in test_attrs:
            a, b = train[key], test_attrs[key]
            if isinstance(a, (int, float, list)) and not isinstance(a, bool):
                try:
                    if not np.allclose(np.asarray(a, float), np.asarray(b, float), rtol=1e-6):
                        return False
                except (TypeError, ValueError):   # not numbers, or another shape
                    return False
            elif a != b:
                return False
    return True


def same_distribution(info, test_attrs):
    """True when the model has a single training file and the test file has its distribution
    (`_has_distribution`): the test result then describes the model (`metrics.test`)."""
    data = info.get("data")
    if info.get("pde") == "mixed" or not isinstance(data, list) or len(data) != 1:
        return False
    return isinstance(data[0], dict) and _has_distribution(data[0], info.get("grid"),
                                                           test_attrs)


def of_a_training_distribution(info, test_attrs):
    """True when the test file has the distribution of one of the model's training files: a
    single-PDE model's, or one PDE range of a mixed-physics model."""
    data = info.get("data")
    return isinstance(data, list) and any(
        isinstance(train, dict) and _has_distribution(train, info.get("grid"), test_attrs)
        for train in data)


def _same_file(a, b):
    try:
        return isinstance(a, str) and isinstance(b, str) and os.path.samefile(a, b)
    except OSError:
        return False


def record_test_result(weights, summary, rel_l2, run_config=None):
    """After eval.py: put the test result into the model card beside `weights`, when the rule
    below allows it. Returns the card path, or None when the card was left as it is.

    The rule (DESIGN.md section 9): a card takes a test result only from an evaluation of
    its own training run on that run's test split or distribution, that is when
    - the weights are a training checkpoint: they carry their training config `run_config`
      (an exported or shipped `model.pt` carries none, so its card is never rewritten);
    - the card beside them describes them (its `weights` is their file name);
    - the test file is the file the run's config names as `test_path` (the same file), or
      has the distribution of a training file (`of_a_training_distribution`: e.g. fresh
      samples of it; for a mixed-physics model, of one of its PDE ranges);
    - the errors are finite (a NaN result is never recorded).
    The result goes under `evaluations[test file]`, and under `metrics.test` when the test
    file has the training distribution (`same_distribution`). A card that cannot be written
    (read-only location, full disk) is a warning: the evaluation's own outputs are written.
    """
    from utils.checkpoint import describe_data_file   # it imports this module for write_card
    from utils.errors import StorageError

    path = card_path_for(weights)
    if not (isinstance(run_config, dict) and os.path.isfile(path)):
        return None
    card = read_card(path)
    if card.get("weights") != os.path.basename(weights):
        return None  # the card describes another file of this directory (ckpt_best.tar)
    attrs = describe_data_file(summary["test_path"])
    if not (_same_file(run_config.get("test_path"), summary["test_path"])
            or of_a_training_distribution(card, attrs)):
        return None   # zero-shot, another grid: the result lives in the eval output folder
    rel_l2 = np.asarray(rel_l2, np.float64)
    if rel_l2.size == 0 or not np.all(np.isfinite(rel_l2)):
        logging.warning("model card %s left unchanged: the test error is not finite", path)
        return None
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
