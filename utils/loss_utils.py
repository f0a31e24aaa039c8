"""Training losses and the relative L2 error (published module name).

Config keys (utils/config_schema.py):
  loss_func: 'mse'     squared error (published), per sample shaped by `loss_style`:
               loss_style 'sum':  sum over pixels of (pred - target)^2
                          (published: torch.sum((target - pred)**2) / batch_size);
               loss_style 'mean': mean over pixels of (pred - target)^2;
             'rel_l2'  relative L2 error of the original FNO paper (Li et al. 2021):
                       ||pred - target||_2 / ||target||_2 over a sample's pixels
                       (`loss_style` does not apply: the ratio has no pixel sum/mean choice).
The loss of a batch is the MEAN over its samples of the per-sample loss. Every rank of a DDP
run has the same number of samples and DDP averages gradients over ranks, so W ranks with B/W
samples each get exactly the gradient of one process with batch B (utils/trainer.py relies on
it).
"""
import torch

from utils.config_schema import SCHEMA, param
from utils.errors import ConfigError

LOSS_FUNCS = SCHEMA["loss_func"].choices
LOSS_STYLES = SCHEMA["loss_style"].choices


def rel_l2(pred, target):
    """(B,) relative L2 error ||pred - target||_2 / ||target||_2 of each sample, in float32.

    Differentiable everywhere (vector_norm has the subgradient 0 at a zero error, where
    sqrt(sum of squares) would give NaN); an all-zero target divides by the smallest float.
    """
    diff = (pred.float() - target.float()).flatten(1)
    ref = target.float().flatten(1)
    return (torch.linalg.vector_norm(diff, dim=1)
            / torch.linalg.vector_norm(ref, dim=1).clamp_min(torch.finfo(torch.float32).tiny))


class TrainingLoss:
    """The configured training loss: `per_sample(pred, target)` (B,), `loss(pred, target)`
    the batch mean. pred, target (B, C, H, W); computed in float32."""

    def __init__(self, loss_func, loss_style):
        if loss_func not in LOSS_FUNCS:
            raise ConfigError(f"loss_func must be one of {', '.join(map(repr, LOSS_FUNCS))}, "
                              f"got {loss_func!r}")
        if loss_style not in LOSS_STYLES:
            raise ConfigError(f"loss_style must be 'sum' or 'mean', got '{loss_style}'")
        self.loss_func, self.loss_style = loss_func, loss_style

    @classmethod
    def from_params(cls, params):
        return cls(param(params, "loss_func"), param(params, "loss_style"))

    def per_sample(self, pred, target):
        if self.loss_func == "rel_l2":
            return rel_l2(pred, target)
        sq = (pred.float() - target.float()).pow(2).flatten(1)
        return sq.sum(dim=1) if self.loss_style == "sum" else sq.mean(dim=1)

    def __call__(self, pred, target):
        """Loss of a batch: the mean over its samples of `per_sample`."""
        return self.per_sample(pred, target).mean()

    def __repr__(self):
        return f"TrainingLoss({self.loss_func!r}, {self.loss_style!r})"
