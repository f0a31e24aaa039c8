"""Evaluate a checkpoint on a test split: relative L2 error of every sample and the loss.

    python eval.py --yaml_config configs/operators_poisson.yaml --config poisson-demo \
        --run_num 0 --root_dir results --weights results/expts/poisson-demo/0/checkpoints/ckpt_best.tar \
        [--test_path P] [--out_dir D] [--set key=value ...]

Writes {out_dir}/summary.json, rel_l2_per_sample.npy and examples.png (default out_dir:
{root_dir}/expts/{config}/{run_num}/eval/) and prints the mean test error. The test file may
have another resolution than the training data (the FNO is resolution-agnostic).
"""
import argparse
import os

from utils.cli import cli
from utils.malloc_tuning import configure_malloc
from utils.run_layout import EVAL_SUMMARY, RunLayout


def build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--yaml_config", required=True)
    p.add_argument("--config", required=True)
    p.add_argument("--run_num", default="0")
    p.add_argument("--root_dir", default="results")
    p.add_argument("--weights", required=True, help="checkpoint (ckpt.tar / ckpt_best.tar) or state dict")
    p.add_argument("--test_path", default=None, help="test split (default: the config's test_path)")
    p.add_argument("--out_dir", default=None, help="output folder (default: {run_dir}/eval)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    return p


@cli()
def main(argv=None):
    configure_malloc()
    args = build_parser().parse_args(argv)
    from utils.errors import ConfigError
    from utils.YParams import YParams, apply_overrides
    from utils.inferencer import run_eval

    from models.fno import resolve_config

    params = YParams(args.yaml_config, args.config)
    apply_overrides(params, args.overrides)
    resolve_config(params)   # model sizes (and that the weights fit in memory) before any work
    test_path = os.path.abspath(args.test_path) if args.test_path else params.get("test_path")
    if not test_path:
        raise ConfigError(f"config '{args.config}' has no test_path; pass --test_path")
    if not args.out_dir:   # the default lies below the results root: plain names only
        from utils.run_guard import check_plain_name
        check_plain_name(args.config, "--config")
        check_plain_name(args.run_num, "--run_num")
    out_dir = args.out_dir or RunLayout.of(args.root_dir, args.config, args.run_num).eval_dir
    summary = run_eval(params, args.weights, test_path, out_dir)
    print(f"test relative L2 error: mean {summary['test_rel_l2_mean']:.4f}, median "
          f"{summary['test_rel_l2_median']:.4f} over {summary['n_test']} samples "
          f"({os.path.join(out_dir, EVAL_SUMMARY)})")


if __name__ == "__main__":
    main()
