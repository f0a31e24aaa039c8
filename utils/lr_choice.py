"""THE learning-rate choice of the study: the lr whose metric, averaged over seeds, is best.

One rule serves both places that choose a learning rate:
- the sweep runner's lr search (`utils/lr_search.py`: `--extend_lr`, which extends the lr
  grid of a group of trials while the chosen lr lies at the edge of the lrs tried, and the n
  ascent, which seeds each n's lrs from the previous n's choice);
- the analysis (`utils/scaling_stats.py` `select_on_validation`), which picks the lr of each
  (model, approach, n_train) whose test error is reported.
Both choose on the VALIDATION metric; test errors never take part.
"""
import numpy as np


def choose_lr(values_by_lr, maximize=False):
    """The chosen lr of one group of trials (all settings equal but lr and seed).

    values_by_lr: {lr (float): [metric of each seed]} (one value per seed, repeats of a seed
    already averaged; an empty list = no finished trial at that lr, ignored).
    The lr with the best mean over its seeds wins (lowest, or highest with `maximize`); ties
    go to the smaller lr.
    Returns None when no lr has a value, else dict(lr, mean (of the chosen lr), means ({lr:
    mean} of the lrs with values), n_lrs (how many), edge): edge is 'single' when only one lr
    has values, 'low' / 'high' when the choice is the smallest / largest of them, else ''
    (a choice at the edge means the grid may not hold the best lr).
    """
    means = {float(lr): float(np.mean(v)) for lr, v in values_by_lr.items() if len(v)}
    if not means:
        return None
    sign = -1.0 if maximize else 1.0
    best = min(means, key=lambda lr: (sign * means[lr], lr))
    lrs = sorted(means)
    edge = ("single" if len(lrs) == 1 else "low" if best == lrs[0]
            else "high" if best == lrs[-1] else "")
    return dict(lr=best, mean=means[best], means=means, n_lrs=len(lrs), edge=edge)
