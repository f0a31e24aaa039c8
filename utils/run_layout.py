#!/usr/bin/env python
"""THE run-directory layout (DESIGN.md section 7): where a run's files live.

    {root_dir}/expts/{config}/{run_num}/      one training run (train.py --root_dir --config
        hyperparams.yaml                      --run_num); rank 0 writes everything
        metrics.jsonl
        train_summary.json                    written when training reaches max_epochs
        checkpoints/ckpt.tar                  latest state (resume)
        checkpoints/ckpt_best.tar             lowest validation loss (what eval.py reads)
        checkpoints/model_card.json           what ckpt_best.tar is (utils/checkpoint.py)
        eval/summary.json                     eval.py's default output folder
        eval/rel_l2_per_sample.npy, eval/examples.png
        wandb/
    {root_dir}/sweeps/{sweep}/                a sweep (utils/sweeps.py): its trials are runs
                                              of the layout above with root_dir = this folder

Python code uses `RunLayout`; the shell scripts ask this file for a path:

    python utils/run_layout.py ROOT_DIR CONFIG RUN_NUM [best_ckpt|ckpt|train_summary|...]
"""
import argparse
import os

# the outputs of one evaluation (eval.py / utils.inferencer.run_eval) inside its folder
EVAL_SUMMARY = "summary.json"
EVAL_PER_SAMPLE = "rel_l2_per_sample.npy"
EVAL_EXAMPLES = "examples.png"
# the model card beside a checkpoint (utils/checkpoint.py)
MODEL_CARD = "model_card.json"


class RunLayout:
    """Paths of one run directory (attributes; nothing is created)."""

    def __init__(self, run_dir):
        join = os.path.join
        self.run_dir = os.path.abspath(os.fspath(run_dir))
        self.ckpt_dir = join(self.run_dir, "checkpoints")
        self.ckpt = join(self.ckpt_dir, "ckpt.tar")
        self.best_ckpt = join(self.ckpt_dir, "ckpt_best.tar")
        self.model_card = join(self.ckpt_dir, MODEL_CARD)
        self.hyperparams = join(self.run_dir, "hyperparams.yaml")
        self.metrics = join(self.run_dir, "metrics.jsonl")
        self.train_summary = join(self.run_dir, "train_summary.json")
        self.wandb_dir = join(self.run_dir, "wandb")
        self.eval_dir = join(self.run_dir, "eval")
        self.eval_summary = join(self.eval_dir, EVAL_SUMMARY)

    @classmethod
    def of(cls, root_dir, config, run_num):
        """The run `{root_dir}/expts/{config}/{run_num}/` (relative root_dir: from the CWD)."""
        return cls(os.path.join(os.fspath(root_dir), "expts", str(config), str(run_num)))


def sweep_dir(root_dir, name):
    """Folder of the sweep `name`: {root_dir}/sweeps/{name}/ (W&B trials: name = sweep id)."""
    return os.path.join(os.fspath(root_dir), "sweeps", str(name))


NAMES = ("run_dir", "ckpt_dir", "ckpt", "best_ckpt", "model_card", "hyperparams", "metrics", "train_summary",
         "wandb_dir", "eval_dir", "eval_summary")


def main(argv=None):
    p = argparse.ArgumentParser(description="Print a path of the run directory layout.")
    p.add_argument("root_dir")
    p.add_argument("config")
    p.add_argument("run_num")
    p.add_argument("name", nargs="?", default="run_dir", choices=NAMES)
    args = p.parse_args(argv)
    print(getattr(RunLayout.of(args.root_dir, args.config, args.run_num), args.name))


if __name__ == "__main__":
    main()
