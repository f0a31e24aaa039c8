"""Optimizer, learning-rate schedule and step arithmetic of a training run (published keys:
optimizer, lr, weight_decay, scheduler, max_cosine_lr_epochs; the step budget `min_steps` and
the validation cadence `val_every_steps`)."""
import logging
import math

import torch

from utils.config_schema import param
from utils.errors import ConfigError


def build_optimizer(params, model):
    """Optimizer from the config. Adam/AdamW use the fused kernel (one pass over the weights
    instead of several; 7x faster for the 67M-parameter FNO on CPU) when every parameter is a
    real floating tensor, which the fused kernel requires."""
    name = param(params, "optimizer")
    lr = float(param(params, "lr"))
    fused = all(p.is_floating_point() for p in model.parameters())
    if name == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr, fused=fused)
    if name == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=lr, fused=fused,
                                 weight_decay=float(param(params, "weight_decay")))
    if name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    raise ConfigError(f"unknown optimizer '{name}' (expected adam, adamw or sgd)")


def build_scheduler(params, optimizer, epochs=None):
    """Per-epoch schedule: 'cosine' over max_cosine_lr_epochs (default: `epochs`, the epochs
    the run trains, else max_epochs) or 'none'."""
    name = param(params, "scheduler")
    if name in (None, "none"):
        return None
    if name == "cosine":
        t_max = param(params, "max_cosine_lr_epochs") or epochs or param(params, "max_epochs")
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(t_max))
    raise ConfigError(f"unknown scheduler '{name}' (expected cosine or none)")


def adapt_cosine_period(scheduler, optimizer, t_max):
    """Give a restored CosineAnnealingLR the period `t_max` (a resume with another
    max_epochs): the learning rate becomes the cosine of the new period at the current epoch,
    eta_min + (base - eta_min) (1 + cos(pi e / t_max)) / 2, and continues on it, so the
    remaining epochs run at the rates a run started with t_max would use."""
    if not isinstance(scheduler, torch.optim.lr_scheduler.CosineAnnealingLR) \
            or scheduler.T_max == t_max:
        return
    e = scheduler.last_epoch
    lrs = [scheduler.eta_min + (base - scheduler.eta_min) * (1 + math.cos(math.pi * e / t_max)) / 2
           for base in scheduler.base_lrs]
    logging.info("cosine period %d -> %d epochs: lr %.4g at epoch %d", scheduler.T_max, t_max,
                 lrs[0], e)
    scheduler.T_max = t_max
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = lrs


def epochs_for_steps(max_epochs, min_steps, steps_per_epoch):
    """Epochs to train: max_epochs, or more when that gives fewer than min_steps optimizer steps.

    max(max_epochs, ceil(min_steps / steps_per_epoch)); e.g. 8 samples in batches of 8 (one step
    an epoch) with max_epochs 30 and min_steps 250 -> 250 epochs.
    """
    return max(int(max_epochs), -(-int(min_steps) // max(1, int(steps_per_epoch))))


def check_interval(val_every_steps, steps_per_epoch):
    """Optimizer steps between two validation checks: every `val_every_steps` steps or every
    epoch, whichever is later (0 or null: every epoch, the published protocol); e.g. 1-step
    epochs with val_every_steps 50 -> 50, 32-step epochs with 50 -> 50, with 20 -> 32."""
    return max(int(val_every_steps or 0), int(steps_per_epoch), 1)
