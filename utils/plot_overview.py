#!/usr/bin/env python
"""Overview figure: source and solution of a few samples of each PDE, from generated data.

    python utils/plot_overview.py --datapath data/demo --out assets/overview.png

Reads the test splits of the demo ranges of the PDEs run_gen_data.sh makes by default (the
registry utils/pdes.py: Poisson k1_5, AD adr0p2_1, Helmholtz o1_10); run ./run_gen_data.sh first.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from utils import pdes  # noqa: E402
from utils.cli import cli  # noqa: E402
from utils.errors import DataError  # noqa: E402
from utils.fileio import savefig_atomic  # noqa: E402
from utils.h5io import SplitFile, dataset_path  # noqa: E402


def plot_overview(datapath, out, per_pde=2, split="test"):
    rows = [pdes.get(name) for name in pdes.names(default_only=True)]
    fig, axes = plt.subplots(len(rows), 2 * per_pde, squeeze=False, constrained_layout=True,
                             figsize=(3.0 * 2 * per_pde, 2.8 * len(rows)))
    for row, spec in enumerate(rows):
        pde = spec.name
        lo, hi = map(float, spec.demo_ranges[0].split(","))
        path = dataset_path(datapath, pde, split, lo, hi)
        if not os.path.exists(path):
            raise DataError(f"{path} missing (run ./run_gen_data.sh first)")
        with SplitFile(path, f"{pde} {split} file", need_tensor=True) as sf:
            fields, tensor, other = sf.read(slice(0, per_pde), other=True)
        if other is None:
            other = [None] * per_pde
        for s in range(per_pde):
            for c, name in enumerate(("source f", "solution u")):
                ax = axes[row, 2 * s + c]
                vmax = np.abs(fields[s, c]).max()
                im = ax.imshow(fields[s, c], origin="lower", extent=(0, 1, 0, 1),
                               **(dict(cmap="viridis") if c == 0 else
                                  dict(cmap="RdBu_r", vmin=-vmax, vmax=vmax)))
                fig.colorbar(im, ax=ax, shrink=0.8)
                label = spec.label(tensor[s], None if other[s] is None else other[s][0])
                ax.set_title(f"{spec.title}: {name}\n{label}", fontsize=9)
                ax.set_xticks([0, 1])
                ax.set_yticks([0, 1])
    savefig_atomic(fig, out, dpi=90)
    plt.close(fig)


@cli()
def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[1])
    p.add_argument("--datapath", default="data/demo")
    p.add_argument("--out", default="assets/overview.png")
    p.add_argument("--per_pde", type=int, default=2, help="samples per PDE")
    args = p.parse_args(argv)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    plot_overview(args.datapath, args.out, args.per_pde)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
