"""Train an FNO from a YAML config (one process, torchrun, or srun + export_DDP_vars.sh).

    python train.py --yaml_config configs/operators_poisson.yaml --config poisson-demo \
        --run_num 0 --root_dir results [--set key=value ...]
    torchrun --standalone --nproc_per_node=4 train.py ...   (same arguments)

Writes {root_dir}/expts/{config}/{run_num}/ (see utils/trainer.py); an existing checkpoint of
the run is resumed. `--eval_test` then evaluates the best checkpoint on the config's test split
in the same process, as `eval.py --weights .../ckpt_best.tar` would (writes {run_dir}/eval/).
Sweep trials run `train_and_evaluate` in long-lived worker processes (utils/sweep_workers.py),
or one train.py process each (utils/sweeps.py --trial_mode process). Exit status: 0 done or
stopped by SIGTERM/SIGUSR1/SIGINT with a checkpoint, 1 diverged training (NaN/inf loss), 2 user
error (one line on stderr), 3 a write failed (full disk, quota, I/O error; the previous files
are intact).
"""
import argparse
import logging
import os
import sys

from utils.cli import cli
from utils.malloc_tuning import configure_malloc
from utils.run_guard import record_stop_signals
from utils.run_layout import RunLayout


def _count(text):
    """argparse type: a whole number >= 0."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 0, got '{text}'")
    return value


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--yaml_config", required=True, help="YAML file with named configs")
    p.add_argument("--config", required=True, help="config name in the YAML file")
    p.add_argument("--run_num", default="0", help="run name below expts/{config}/")
    p.add_argument("--root_dir", default="results", help="root of the run directories")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (value parsed as YAML); repeatable")
    p.add_argument("--sweep_id", default=None, help="W&B sweep id (one agent trial)")
    p.add_argument("--eval_test", action="store_true",
                   help="after training, evaluate ckpt_best.tar on the test split (rank 0)")
    p.add_argument("--eval_examples", type=_count, default=4, metavar="N",
                   help="samples drawn in the --eval_test figure eval/examples.png (0: no "
                        "figure; sweeps pass 0, the figure costs more than a small trial's "
                        "evaluation)")
    return p


def load_params(args):
    """Config named by the arguments, with the --set overrides applied."""
    from utils.YParams import YParams, apply_overrides

    params = YParams(args.yaml_config, args.config)
    apply_overrides(params, args.overrides)
    return params


def run_dir_of(args):
    """{root_dir}/expts/{config}/{run_num}; config and run_num must be plain names."""
    from utils.run_guard import check_plain_name

    return RunLayout.of(args.root_dir, check_plain_name(args.config, "--config"),
                        check_plain_name(args.run_num, "--run_num")).run_dir


def run_training(params, args, run_dir=None):
    """Train `params` into run_dir (default {root_dir}/expts/{config}/{run_num}); returns the
    summary dict of Trainer.fit."""
    from utils.trainer import Trainer

    run_dir = run_dir or run_dir_of(args)
    trainer = Trainer(params, run_dir, run_name=f"{args.config}_{args.run_num}")
    try:
        return trainer.fit()
    finally:
        trainer.close()   # fit() releases the run directory; also if it never started


def run_sweep_trial(params, args):
    """`--sweep_id ID`: one W&B sweep trial on every rank (utils/sweep_files.run_wandb_trial).

    Rank 0 runs the W&B agent (count=1) and reads the trial's settings from wandb.config;
    torch.distributed broadcasts them to all ranks; each rank trains with the settings into
    {root_dir}/sweeps/ID/{trial name}/. Returns that run directory (None: no trial left).
    """
    from utils.sweep_files import apply_settings, record_trial_summary, run_wandb_trial
    from utils.distributed import setup_distributed

    _, rank, _, _ = setup_distributed()   # the broadcast needs the process group now
    params["log_to_wandb"] = True          # the trainer logs into the agent's open trial run

    def train_fn(settings, run_dir):
        apply_settings(params, settings)
        summary = run_training(params, args, run_dir=run_dir)
        if rank == 0:
            record_trial_summary(summary)

    return run_wandb_trial(args.sweep_id, args.root_dir, train_fn, rank=rank,
                           entity=params.get("entity"), project=params.get("project"))


def eval_test_path(params, args):
    """The test split of --eval_test; ConfigError when the config has none (checked before
    training, so the missing key is not found only after it)."""
    from utils.errors import ConfigError

    if not params.get("test_path"):
        raise ConfigError(f"config '{args.config}' has no test_path: --eval_test has nothing "
                          f"to evaluate on")
    return params.get("test_path")


def evaluate_best(args):
    """eval.py on the run's best checkpoint and the config's test split, in this process: the
    config is read again (as eval.py reads it), not taken from the trainer, which fills in
    keys while it trains."""
    from utils.inferencer import run_eval

    params = load_params(args)
    layout = RunLayout.of(args.root_dir, args.config, args.run_num)
    return run_eval(params, layout.best_ckpt, eval_test_path(params, args), layout.eval_dir,
                    n_examples=args.eval_examples)


def train_and_evaluate(args, after_training=None):
    """What `python train.py ARGS` does with parsed `args`, in this process: train (or run one
    W&B agent trial with --sweep_id), then the --eval_test evaluation on rank 0. Returns the
    summary dict of Trainer.fit (None for a --sweep_id trial). Errors raise (utils/errors.py);
    the caller reports them. The sweep workers (utils/sweep_workers.py) call it per trial.
    `after_training()`, if given, runs between training and the evaluation."""
    import torch.distributed as dist

    run_dir_of(args)   # plain names, before anything is read or written
    if args.sweep_id:
        from utils.run_guard import check_plain_name
        check_plain_name(args.sweep_id, "--sweep_id")
    params = load_params(args)
    if args.eval_test:
        eval_test_path(params, args)
    if args.sweep_id:
        run_sweep_trial(params, args)
        return None
    summary = run_training(params, args)
    if after_training is not None:
        after_training()
    if args.eval_test and not summary.get("stopped") and (
            not dist.is_initialized() or dist.get_rank() == 0):
        evaluate_best(args)
    return summary


@cli()
def main(argv=None):
    configure_malloc()
    args = build_parser().parse_args(argv)
    # before anything slow: SIGTERM/SIGUSR1 during start-up (imports, data, model, resume)
    # stop the run cleanly before its first step (exit 0), as they do during training; the
    # evaluation after it ends on a signal again, as eval.py does
    restore_signals = record_stop_signals()
    try:
        import torch.distributed as dist

        try:
            train_and_evaluate(args, after_training=restore_signals)
            if dist.is_initialized():
                # every rank is done before the group is torn down: a rank that destroys it
                # while another is still in a gloo call can abort the process at exit
                dist.barrier()
        finally:
            if dist.is_initialized():
                dist.destroy_process_group()
    finally:
        restore_signals()
    logging.shutdown()


def exit_launched_rank():
    """End a finished rank of a launched job (torchrun, srun) without the C++ exit handlers.

    Everything is written and closed by now (atomic checkpoints, metrics, logs, W&B torn down
    below) and the process group is destroyed. A normal exit would still run the C++ static
    destructors, where gloo's background threads can abort a finished rank ("terminate called
    without an active exception", rare, seen on loaded CPU machines); torchrun then reports the
    whole job as failed although its work is complete. os._exit skips them.
    """
    if "wandb" in sys.modules:   # its service process is stopped by an exit handler we skip
        sys.modules["wandb"].teardown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == "__main__":
    main()   # user errors and signals leave through sys.exit with their own status
    if "TORCHELASTIC_RUN_ID" in os.environ or os.environ.get("WORLD_SIZE", "1") != "1":
        exit_launched_rank()
