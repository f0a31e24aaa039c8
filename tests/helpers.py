"""Tiny DESIGN-format datasets for the training/eval tests, written with h5py directly.

`write_poisson_set(dir, n, sizes)` solves -div(K grad u) = f spectrally on an n x n periodic
grid for random smooth sources and random anisotropic K (as the Poisson generator does, but
small and without the generator's options), writes `poisson_{split}_k1_5.h5` files and the
scales `.npy`, and returns a dict of paths.
"""
import os

import h5py
import numpy as np


def poisson_samples(n_samples, n, seed):
    """(fields (N, 2, n, n) float32 [f, u], tensor (N, 3) float32 [K11, K22, K12])."""
    rng = np.random.default_rng(seed)
    x = np.arange(n) / n
    xx, yy = np.meshgrid(x, x)  # a[..., i, j] at (x_j, y_i)
    n_bumps = 4
    cx = rng.uniform(0.2, 0.8, (n_samples, n_bumps, 1, 1))
    cy = rng.uniform(0.2, 0.8, (n_samples, n_bumps, 1, 1))
    amp = rng.uniform(1e-3, 1.0, (n_samples, n_bumps, 1, 1))
    sigma = 0.08
    f = (amp * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma ** 2))).sum(axis=1)
    f /= f.max(axis=(1, 2), keepdims=True)
    f -= f.mean(axis=(1, 2), keepdims=True)
    e = rng.uniform(1.0, 5.0, n_samples)
    th = rng.uniform(0, 2 * np.pi, n_samples)
    c, s = np.cos(th), np.sin(th)
    k11 = 0.01 * (c * c + e * s * s)
    k22 = 0.01 * (s * s + e * c * c)
    k12 = 0.01 * (1 - e) * c * s
    kx = 2 * np.pi * np.fft.fftfreq(n, 1.0 / n)
    KX, KY = np.meshgrid(kx, kx)
    symbol = (k11[:, None, None] * KX ** 2 + k22[:, None, None] * KY ** 2
              + 2 * k12[:, None, None] * KX * KY)
    symbol[:, 0, 0] = 1.0
    u_hat = np.fft.fft2(f) / symbol
    u_hat[:, 0, 0] = 0.0
    u = np.fft.ifft2(u_hat).real
    fields = np.stack([f, u], axis=1).astype(np.float32)
    tensor = np.stack([k11, k22, k12], axis=1).astype(np.float32)
    return fields, tensor


def compute_scales(fields, tensor, lx=1.0, ly=1.0):
    """DESIGN.md section 5 scales [source, tensor_0.., sol, Lx, Ly] (test-side formula)."""
    n = fields.shape[-1]
    src = np.median(np.linalg.norm(fields[:, 0].reshape(len(fields), -1), axis=1) * (lx / n) * (ly / n))
    ten = np.median(np.abs(tensor), axis=0)
    sol = np.median(np.abs(fields[:, 1]).max(axis=(1, 2)))
    return np.concatenate([[src], ten, [sol, lx, ly]])


def write_split(path, fields, tensor, split="train"):
    with h5py.File(path, "w") as f:
        f.create_dataset("fields", data=fields)
        f.create_dataset("tensor", data=tensor)
        f.attrs["pde"] = "poisson"
        f.attrs["split"] = split
        f.attrs["n"] = fields.shape[-1]


def write_poisson_set(root, n=16, sizes=(64, 16, 16), seed=0, tag="k1_5"):
    """Write train/val/test splits + scales under `root`; returns dict of paths."""
    os.makedirs(root, exist_ok=True)
    paths = {}
    for i, (split, count) in enumerate(zip(("train", "val", "test"), sizes)):
        fields, tensor = poisson_samples(count, n, seed + 1000 * i)
        path = os.path.join(root, f"poisson_{split}_{tag}.h5")
        write_split(path, fields, tensor, split)
        paths[f"{split}_path"] = path
        if split == "train":
            scales_path = os.path.join(root, f"poisson_train_{tag}_scales.npy")
            np.save(scales_path, compute_scales(fields, tensor))
            paths["scales_path"] = scales_path
    return paths


TINY_MODEL = dict(layers=[8, 8, 8], modes1=[4, 4], modes2=[4, 4], fc_dim=16, mode_cut=4,
                  embed_cut=8, fc_cut=2)


def tiny_config(tmp_path, paths, **extra):
    """Write a YAML file with one config 'tiny' (tiny FNO on the given data); returns its path."""
    import yaml

    cfg = dict(in_dim=4, out_dim=1, loss_style="sum", optimizer="adam", lr=3e-3,
               scheduler="cosine", max_epochs=2, batch_size=8, valid_batch_size=8,
               num_data_workers=0, seed=0, log_to_wandb=False, plot_figs=False,
               save_checkpoint=True, Lx=1.0, Ly=1.0, **TINY_MODEL)
    cfg.update(paths)
    cfg.update(extra)
    path = os.path.join(str(tmp_path), "tiny.yaml")
    with open(path, "w") as f:
        yaml.safe_dump({"base": {"lr": 1e-3}, "tiny": cfg}, f)
    return path


def child_pids(pid):
    """Live (not zombie) processes whose parent is `pid` (Linux /proc)."""
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid and fields[0] != "Z":
                out.append(int(d))
    return out


def train_tiny_poisson(tmp):
    """Train the tiny Poisson config for 2 epochs in `tmp` (n = 16, 32/8/11 samples).

    Returns (data paths, config path, path of the best checkpoint)."""
    from utils.trainer import Trainer
    from utils.YParams import YParams
    data = write_poisson_set(str(tmp / "data"), n=16, sizes=(32, 8, 11))
    cfg = tiny_config(tmp, data, max_epochs=2)
    Trainer(YParams(cfg, "tiny"), str(tmp / "res/expts/tiny/0")).fit()
    return data, cfg, str(tmp / "res/expts/tiny/0/checkpoints/ckpt_best.tar")


STUDY_CODE = ("run_study.sh", "run_gen_data.sh", "train.py", "eval.py", "configs", "utils",
              "models")


def copy_study_code(dst):
    """The code run_study.sh needs, copied into `dst` (its data and results stay there)."""
    import shutil

    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    for name in STUDY_CODE:
        src = os.path.join(repo, name)
        if os.path.isdir(src):
            shutil.copytree(src, os.path.join(dst, name),
                            ignore=shutil.ignore_patterns("__pycache__", "*.ipynb"))
        else:
            shutil.copy2(src, dst)
