"""Optimizer, learning-rate schedule and step arithmetic of a training run (published keys:
optimizer, lr, weight_decay, scheduler, max_cosine_lr_epochs; the step budget `min_steps` and
the validation cadence `val_every_steps`, `val_every_growth` (`next_check_step`); the
early-stopping rule and the plateau schedule of converged training: `early_stop_update`,
`EarlyStopping`, `PlateauSchedule`)."""
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
    """'cosine': per epoch over max_cosine_lr_epochs (default: `epochs`, the epochs the run
    trains, else max_epochs); 'plateau': `PlateauSchedule` (per step and per check); 'none'."""
    name = param(params, "scheduler")
    if name in (None, "none"):
        return None
    if name == "cosine":
        t_max = param(params, "max_cosine_lr_epochs") or epochs or param(params, "max_epochs")
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=int(t_max))
    if name == "plateau":
        return PlateauSchedule(optimizer, int(param(params, "warmup_steps") or 0),
                               int(param(params, "lr_plateau_patience")),
                               float(param(params, "lr_plateau_factor")),
                               float(param(params, "early_stop_min_delta") or 0))
    raise ConfigError(f"unknown scheduler '{name}' (expected cosine, plateau or none)")


def is_improvement(value, best, min_delta):
    """`value` improves on `best` by more than the relative margin `min_delta`:
    value < best (1 - min_delta); anything finite improves on best = inf."""
    return value < best * (1.0 - min_delta) if math.isfinite(best) else math.isfinite(value)


def early_stop_update(best, bad_checks, value, min_delta):
    """One validation check of the stopping rule: (best, bad_checks) after `value`.

    best: the best value so far by the rule (inf before the first check); bad_checks: the
    checks since it was set. A value that improves on best by more than min_delta (relative)
    becomes the best and resets the count; any other value adds one."""
    if is_improvement(value, best, min_delta):
        return value, 0
    return best, bad_checks + 1


class EarlyStopping:
    """The early-stopping state of a run (`early_stop_patience` P, `early_stop_min_delta`):
    `update` applies `early_stop_update` at each validation check; the run stops at the P-th
    check in a row without an improvement (P 0: never, the state is still kept for
    `capped_while_improving`). `state_dict` is plain values (a checkpoint's `early_stop`)."""

    def __init__(self, patience=0, min_delta=0.0):
        self.patience, self.min_delta = int(patience or 0), float(min_delta or 0)
        self.best, self.bad_checks, self.val_checks, self.stopped = math.inf, 0, 0, False

    def update(self, value):
        """One validation check with loss `value`; True when the run stops at it."""
        self.val_checks += 1
        self.best, self.bad_checks = early_stop_update(self.best, self.bad_checks, value,
                                                       self.min_delta)
        stop = bool(self.patience) and self.bad_checks >= self.patience
        self.stopped = self.stopped or stop
        return stop

    def capped_while_improving(self):
        """True when the step budget, not convergence, ended the run: it was not stopped early
        and its validation loss improved (early_stop_update) within the last max(patience, 1)
        checks, i.e. with early stopping on the stopping rule had not fired, and without it
        the last check was an improvement."""
        return (not self.stopped and self.val_checks > 0
                and self.bad_checks < max(self.patience, 1))

    def state_dict(self):
        return dict(best=self.best, bad_checks=self.bad_checks, val_checks=self.val_checks,
                    stopped=self.stopped)

    def load_state_dict(self, state):
        """Restore a `state_dict` (None or missing keys, from an older checkpoint: fresh)."""
        state = state or {}
        self.best = float(state.get("best", math.inf))
        self.bad_checks = int(state.get("bad_checks", 0))
        self.val_checks = int(state.get("val_checks", 0))
        self.stopped = bool(state.get("stopped", False))


class PlateauSchedule:
    """Warm-up, then a constant lr reduced on plateaus (`scheduler: plateau`).

    The lr of optimizer step s (1-based) is lr0 min(1, s / warmup_steps) factor^k, where k
    counts the reductions so far: after `patience` validation checks in a row without an
    improvement (`is_improvement` with `min_delta`, the rule of early stopping) the lr is
    multiplied by `factor` and the count restarts. With early stopping's patience larger than
    this one the run tries smaller learning rates before it stops. State: plain values."""

    def __init__(self, optimizer, warmup_steps, patience, factor, min_delta):
        self.optimizer = optimizer
        self.base_lrs = [g["lr"] for g in optimizer.param_groups]
        self.warmup_steps, self.patience, self.factor = warmup_steps, patience, factor
        self.min_delta = min_delta
        self.reductions, self.best, self.bad_checks = 0, math.inf, 0

    def set_step(self, step):
        """Set the lr of optimizer step `step` (1-based) in every parameter group."""
        warm = min(1.0, step / self.warmup_steps) if self.warmup_steps else 1.0
        for group, base in zip(self.optimizer.param_groups, self.base_lrs):
            group["lr"] = base * warm * self.factor ** self.reductions

    def on_check(self, value):
        """A validation check with loss `value`: count it, reduce the lr on a plateau."""
        self.best, self.bad_checks = early_stop_update(self.best, self.bad_checks, value,
                                                       self.min_delta)
        if self.bad_checks >= self.patience:
            self.reductions += 1
            self.bad_checks = 0
            logging.info("validation plateau: lr x %g (reduction %d)", self.factor,
                         self.reductions)

    def state_dict(self):
        return dict(base_lrs=list(self.base_lrs), reductions=self.reductions, best=self.best,
                    bad_checks=self.bad_checks)

    def load_state_dict(self, state):
        self.base_lrs = list(state["base_lrs"])
        self.reductions, self.best = int(state["reductions"]), float(state["best"])
        self.bad_checks = int(state["bad_checks"])


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


def next_check_step(step, check_every, growth=0.0):
    """The first validation check after optimizer step `step` (0: the start of training).

    The checks are at s_1 = check_every and s_(k+1) = s_k + max(check_every, ceil(growth s_k)):
    every `check_every` steps with growth 0 (the fixed cadence), and, with growth g > 0, at
    least g times the steps trained so far apart once g s_k exceeds check_every, i.e.
    geometrically spaced. Patience counted in checks then grows with the run: P checks
    without improvement after a best at step b span about b ((1 + g)^P - 1) steps (8 checks
    at g = 0.05: 0.48 b), so a long run that improves slowly is not stopped by a patience
    sized for a short one. E.g. check_every 32, g 0.1: 32, 64, ..., 320, 352, 388, 427, ...
    A pure function of the step: resume recomputes it (no state to save)."""
    check_every = max(1, int(check_every))
    if not growth:
        return (int(step) // check_every + 1) * check_every
    s = check_every
    while s <= step:
        s += max(check_every, math.ceil(growth * s))
    return s


def check_interval(val_every_steps, steps_per_epoch):
    """Optimizer steps between two validation checks: every `val_every_steps` steps or every
    epoch, whichever is later (0 or null: every epoch, the published protocol); e.g. 1-step
    epochs with val_every_steps 50 -> 50, 32-step epochs with 50 -> 50, with 20 -> 32."""
    return max(int(val_every_steps or 0), int(steps_per_epoch), 1)
