"""Weights & Biases logging of a training run (rank 0, `log_to_wandb: true`).

W&B never stops training: `wandb.init` waits at most `WANDB_INIT_TIMEOUT` seconds (default 10)
for its server, then the run logs offline (`wandb sync` uploads later), and if even that fails
it trains without W&B (metrics.jsonl has every check). `WANDB_MODE` is respected.
"""
import logging
import math
import os

WANDB_INIT_TIMEOUT_S = 10   # seconds W&B may take to reach its server before going offline


def wandb_init_timeout():
    """Seconds W&B may take to start: WANDB_INIT_TIMEOUT, or WANDB_INIT_TIMEOUT_S (with a
    warning) when it is not a positive number: W&B never stops training."""
    raw = os.environ.get("WANDB_INIT_TIMEOUT")
    if raw is None:
        return WANDB_INIT_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        logging.warning("WANDB_INIT_TIMEOUT=%r is not a positive number of seconds: using %g",
                        raw, WANDB_INIT_TIMEOUT_S)
        return WANDB_INIT_TIMEOUT_S
    return value


def init_run(params, run_dir, run_name, wandb_dir):
    """The W&B run to log into -> (run or None, True when this call started it).

    Inside a W&B sweep trial (`wandb.run` set by the agent) that trial's run, which its
    owner finishes; otherwise a new run in `run_dir` (files under `wandb_dir`)."""
    import wandb

    if wandb.run is not None:  # inside a W&B sweep trial: log into the trial's run
        return wandb.run, False
    os.makedirs(wandb_dir, exist_ok=True)
    kw = dict(dir=run_dir, config=params.to_dict(), name=run_name,
              group=f"op_{params.config_name}", project=params.project,
              entity=params.entity, resume="allow")
    # W&B waits 90 s for its server by default (and needs a key): a training run must
    # not hang on it, nor die. Wait briefly, then log offline (`wandb sync` uploads later).
    timeout = wandb_init_timeout()
    try:
        return wandb.init(settings=wandb.Settings(init_timeout=timeout), **kw), True
    except Exception as e:
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
    try:
        run = wandb.init(mode="offline", **kw)
        logging.warning("W&B not reachable (%s): logging offline to %s", reason, wandb_dir)
        return run, True
    except Exception as e:
        logging.warning("W&B not reachable (%s) and offline logging failed (%s): training "
                        "without W&B (metrics.jsonl has every epoch)", reason,
                        (str(e).strip().splitlines() or [type(e).__name__])[0])
        return None, False


def log_check(run, row, examples):
    """Log one validation check's metrics `row` (a metrics.jsonl row) at its epoch, with the
    example figure of `examples` (inputs, targets, predictions) when given."""
    logs = dict(row)
    if examples is not None:
        import matplotlib.pyplot as plt
        import wandb

        from utils.inferencer import plot_examples

        fig = plot_examples(*examples)
        logs["vis"] = wandb.Image(fig)
        plt.close(fig)
    run.log(logs, step=row["epoch"])
