"""Training losses (utils/loss_utils.py): values on hand-computed examples, DDP batch
splitting, and the `loss_func: rel_l2` option end to end."""
import json

import pytest
import torch

from tests.helpers import tiny_config, write_poisson_set
from utils.errors import ConfigError
from utils.loss_utils import TrainingLoss, rel_l2
from utils.trainer import Trainer
from utils.YParams import YParams


def _pair():
    """Two samples (B, 1, 2, 2) with errors worked out by hand below."""
    target = torch.tensor([[[[3.0, 4.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 1.0]]]])
    pred = torch.tensor([[[[0.0, 0.0], [0.0, 0.0]]], [[[1.0, 1.0], [1.0, 2.0]]]])
    return pred, target


def test_values_by_hand():
    pred, target = _pair()
    # sample 0: error (-3, -4, 0, 0): squared sum 25, |e| 5, |t| 5 -> relative 1
    # sample 1: error (0, 0, 0, 1):   squared sum 1,  |e| 1, |t| 2 -> relative 0.5
    assert TrainingLoss("mse", "sum").per_sample(pred, target).tolist() == [25.0, 1.0]
    assert TrainingLoss("mse", "sum")(pred, target).item() == 13.0
    assert TrainingLoss("mse", "mean")(pred, target).item() == (25 / 4 + 1 / 4) / 2
    assert TrainingLoss("rel_l2", "sum").per_sample(pred, target).tolist() == [1.0, 0.5]
    assert TrainingLoss("rel_l2", "mean")(pred, target).item() == 0.75  # style does not apply
    assert rel_l2(pred, target).tolist() == [1.0, 0.5]


def test_rel_l2_gradient_is_finite_at_zero_error():
    target = torch.randn(3, 1, 4, 4)
    pred = target.clone().requires_grad_(True)
    TrainingLoss("rel_l2", "sum")(pred, target).backward()
    assert torch.isfinite(pred.grad).all() and (pred.grad == 0).all()


@pytest.mark.parametrize("func,style", [("mse", "sum"), ("mse", "mean"), ("rel_l2", "sum")])
def test_batch_mean_splits_over_ranks(func, style):
    """DDP: 2 ranks with B/2 samples each, gradients averaged, == one process with batch B."""
    torch.manual_seed(0)
    w = torch.randn(1, 1, 8, 8, requires_grad=True)
    x, target = torch.randn(6, 1, 8, 8), torch.randn(6, 1, 8, 8)
    loss = TrainingLoss(func, style)
    full = loss(w * x, target)
    g_full, = torch.autograd.grad(full, w)
    halves = [loss(w * x[i:i + 3], target[i:i + 3]) for i in (0, 3)]
    grads = [torch.autograd.grad(h, w)[0] for h in halves]
    torch.testing.assert_close((halves[0] + halves[1]) / 2, full)
    torch.testing.assert_close((grads[0] + grads[1]) / 2, g_full)


def test_unknown_names_are_config_errors():
    with pytest.raises(ConfigError, match="loss_func must be one of 'mse', 'rel_l2', got 'l1'"):
        TrainingLoss("l1", "sum")
    with pytest.raises(ConfigError, match="loss_style must be 'sum' or 'mean'"):
        TrainingLoss("mse", "max")
    assert TrainingLoss.from_params({}).loss_func == "mse"      # the published default


def test_trainer_with_rel_l2_loss(tmp_path):
    """With loss_func rel_l2 the validation loss IS the validation relative L2 error."""
    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(16, 8, 8))
    cfg = tiny_config(tmp_path, data, max_epochs=1, loss_func="rel_l2")
    summary = Trainer(YParams(cfg, "tiny"), str(tmp_path / "run")).fit()
    row = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert row["val_loss"] == pytest.approx(row["val_rel_l2"], rel=1e-6)
    assert summary["best_val_loss"] == pytest.approx(summary["best_val_rel_l2"], rel=1e-6)
