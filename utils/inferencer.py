"""Batched inference and the evaluation of a checkpoint (eval.py).

The training loss and the relative L2 error live in utils/loss_utils.py.
"""
import logging
import os

import numpy as np
import torch

from utils.config_schema import param
from utils.errors import EvalError
from utils.fileio import save_npy_atomic, savefig_atomic, write_json_atomic
from utils.h5io import check_finite
from utils.loss_utils import TrainingLoss, rel_l2
from utils.run_layout import EVAL_EXAMPLES, EVAL_PER_SAMPLE, EVAL_SUMMARY


def autocast_context(device, amp):
    """bf16 autocast on CUDA when `amp`; a no-op context otherwise."""
    enabled = bool(amp) and torch.device(device).type == "cuda"
    return torch.autocast(device_type="cuda" if enabled else "cpu", dtype=torch.bfloat16,
                          enabled=enabled)


@torch.no_grad()
def evaluate(model, loader, device, loss, amp=False, keep_per_sample=False, n_examples=0,
             check_data=None):
    """Run `model` over every batch of `loader`; `loss` a utils.loss_utils.TrainingLoss.

    Returns dict: loss_sum, rel_l2_sum (sums over samples, float64), count; with
    keep_per_sample the arrays rel_l2 and loss (N,) in loader order; with n_examples > 0
    `examples` = (source, target, prediction) arrays (n, H, W) of the first samples.
    check_data: a name of the data (e.g. its path): a batch holding NaN or inf is then a
    DataError naming the sample (loader order), before the model sees it.
    """
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    rel_sum = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    rels, losses, examples = [], [], []
    n_ex = 0
    for inputs, targets in loader:
        if check_data is not None:
            check_finite(check_data, count, inputs, targets)
        inputs = inputs.to(device, non_blocking=True)
        targets = targets.to(device, non_blocking=True)
        with autocast_context(device, amp):
            pred = model(inputs)
        pred = pred.float()
        r = rel_l2(pred, targets)
        l = loss.per_sample(pred, targets)
        loss_sum += l.double().sum()
        rel_sum += r.double().sum()
        count += targets.shape[0]
        if keep_per_sample:
            rels.append(r.cpu())
            losses.append(l.cpu())
        if n_ex < n_examples:
            take = min(n_examples - n_ex, targets.shape[0])
            examples.append((inputs[:take, 0].cpu(), targets[:take, 0].cpu(), pred[:take, 0].cpu()))
            n_ex += take
    model.train(was_training)
    out = dict(loss_sum=loss_sum, rel_l2_sum=rel_sum, count=count)
    if keep_per_sample:
        out["rel_l2"] = torch.cat(rels).numpy() if rels else np.zeros(0, np.float32)
        out["loss"] = torch.cat(losses).numpy() if losses else np.zeros(0, np.float32)
    if examples:
        out["examples"] = tuple(torch.cat(parts).numpy() for parts in zip(*examples))
    return out


def plot_examples(source, target, pred, path=None):
    """Figure with one row per sample: source (normalised input), target, prediction, |error|.

    Arrays (n, H, W). Saves a PNG atomically to `path` when given; returns the figure.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = source.shape[0]
    fig, axes = plt.subplots(n, 4, figsize=(13, 3 * n), squeeze=False)
    titles = ["source (input)", "target u", "prediction", "|error|"]
    for i in range(n):
        err = np.abs(pred[i] - target[i])
        vmin, vmax = float(target[i].min()), float(target[i].max())
        for j, (img, title) in enumerate(zip([source[i], target[i], pred[i], err], titles)):
            ax = axes[i, j]
            kw = dict(vmin=vmin, vmax=vmax) if j in (1, 2) else {}
            h = ax.imshow(img, origin="lower", cmap="RdBu_r" if j < 3 else "magma", **kw)
            fig.colorbar(h, ax=ax, fraction=0.046, pad=0.04)
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title(title)
        rel = np.linalg.norm(pred[i] - target[i]) / max(np.linalg.norm(target[i]), 1e-30)
        axes[i, 3].set_ylabel(f"rel L2 {rel:.3g}")
    fig.tight_layout()
    if path is not None:
        savefig_atomic(fig, path, dpi=80)
    return fig


def run_eval(params, weights, test_path, out_dir, device=None, n_examples=4):
    """Evaluate checkpoint `weights` on every sample of `test_path`; write results to out_dir.

    Writes summary.json (test_rel_l2_mean, test_rel_l2_median, test_loss, n_test, weights,
    test_path, ...), rel_l2_per_sample.npy (N,) in file order and examples.png, and records
    the result in the model card beside `weights` when it is the card of the run evaluated on
    its own test split or distribution (`utils.model_card.record_test_result`; never a
    shipped model's card).
    A config without scales_path uses the scales the weights carry (model_info).
    Returns the summary dict.
    """
    from models.fno import fno
    from utils.data_utils import get_data_loader
    from utils.checkpoint import load_weights, scales_from_weights
    from utils.model_card import record_test_result

    from utils.fileio import describe_os_error

    if not os.path.isfile(weights):
        raise EvalError(f"weights file not found: {weights}")
    from utils.run_guard import refuse_symlinks

    refuse_symlinks([os.path.join(out_dir, name) for name in
                     (EVAL_SUMMARY, EVAL_PER_SAMPLE, EVAL_EXAMPLES)], "output folder")
    try:   # before the evaluation: an unwritable output folder is found at once
        os.makedirs(out_dir, exist_ok=True)
        probe = os.path.join(out_dir, f".write_test{os.getpid()}")
        open(probe, "w").close()
        os.remove(probe)
    except OSError as e:
        raise EvalError(f"cannot write to the output folder {out_dir}: "
                        f"{describe_os_error(e)}") from None
    scales_from_weights(params, weights)
    if device is None:
        device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    loss = TrainingLoss.from_params(params)
    loader, dataset, _ = get_data_loader(params, test_path, distributed=False, train=False)
    model = fno(params).to(device)
    info = load_weights(model, weights)
    res = evaluate(model, loader, device, loss, param(params, "amp"), keep_per_sample=True,
                   n_examples=n_examples, check_data=str(test_path))
    rel = res["rel_l2"]
    bad = np.flatnonzero(~(np.isfinite(rel) & np.isfinite(res["loss"])))
    if bad.size:   # finite data (checked above): the weights are broken; nothing is written
        raise EvalError(f"{weights} predicts NaN or inf on {bad.size} of {rel.size} samples of "
                        f"{test_path} (first: sample {int(bad[0])}); no result written")
    summary = dict(
        test_rel_l2_mean=float(res["rel_l2_sum"]) / res["count"],
        test_rel_l2_median=float(np.median(rel)),
        test_loss=float(res["loss_sum"]) / res["count"],
        loss_func=loss.loss_func,
        loss_style=loss.loss_style,
        n_test=int(res["count"]),
        grid=list(dataset.img_shape),
        weights=os.path.abspath(weights),
        weights_epoch=info.get("epoch"),
        test_path=os.path.abspath(test_path),
        config=params.config_name,
    )
    os.makedirs(out_dir, exist_ok=True)
    save_npy_atomic(os.path.join(out_dir, EVAL_PER_SAMPLE), rel.astype(np.float32))
    if "examples" in res:
        import matplotlib.pyplot as plt
        fig = plot_examples(*res["examples"], path=os.path.join(out_dir, EVAL_EXAMPLES))
        plt.close(fig)
    write_json_atomic(os.path.join(out_dir, EVAL_SUMMARY), summary)
    record_test_result(weights, summary, rel, run_config=info.get("config"))
    logging.info("test %s: rel L2 mean %.4g median %.4g, loss %.4g over %d samples",
                 test_path, summary["test_rel_l2_mean"], summary["test_rel_l2_median"],
                 summary["test_loss"], summary["n_test"])
    return summary
