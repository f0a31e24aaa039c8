"""Checkpoints of the published code load and give the published model's outputs.

The oracle `published_forward` below is an independent, direct implementation of the
published FNO forward pass (lift channels-last, per layer rfft2 / two-corner einsum with
complex weights / irfft2 plus a Conv1d 1x1 on the flattened grid, GELU except after the last
layer, projection channels-last), written from the published description; it shares no code
with models/fno.py.
"""
import logging

import pytest
import torch
import torch.nn.functional as F

from models.fno import fno
from tests.helpers import tiny_config, write_poisson_set
from utils.errors import FinetuneError
from utils.checkpoint import load_weights
from utils.YParams import YParams

# Non-square widths, m1 != m2 and a non-square grid: a swapped axis or transposed weight
# cannot go unnoticed.
ARCH = dict(in_dim=4, out_dim=1, layers=[6, 5, 7], modes1=[3, 2], modes2=[2, 3], fc_dim=9)


def published_state(arch, seed=0, complex_weights=False):
    """Random state dict with the published names and shapes (Conv1d 1x1, weights1/2)."""
    g = torch.Generator().manual_seed(seed)
    layers = arch["layers"]
    s = {"fc0.weight": torch.randn(layers[0], arch["in_dim"], generator=g),
         "fc0.bias": torch.randn(layers[0], generator=g)}
    for i, (ci, co, m1, m2) in enumerate(zip(layers, layers[1:], arch["modes1"], arch["modes2"])):
        for c in (1, 2):  # O(1) values: both corners matter in the output
            w = torch.randn(ci, co, m1, m2, 2, generator=g) / ci
            s[f"sp_convs.{i}.weights{c}"] = torch.view_as_complex(w) if complex_weights else w
        s[f"ws.{i}.weight"] = torch.randn(co, ci, 1, generator=g) / ci ** 0.5
        s[f"ws.{i}.bias"] = torch.randn(co, generator=g)
    s["fc1.weight"] = torch.randn(arch["fc_dim"], layers[-1], generator=g) / layers[-1] ** 0.5
    s["fc1.bias"] = torch.randn(arch["fc_dim"], generator=g)
    s["fc2.weight"] = torch.randn(arch["out_dim"], arch["fc_dim"], generator=g)
    s["fc2.bias"] = torch.randn(arch["out_dim"], generator=g)
    return s


def published_forward(s, x):
    """The published FNO forward pass from its state dict `s`, in float64. x (B, C, H, W)."""
    s = {k: (v if v.is_complex() else torch.view_as_complex(v.double().contiguous()))
         if ".weights" in k else v.double() for k, v in s.items()}
    x = x.double()
    b, _, h, w = x.shape
    n_layers = len([k for k in s if k.endswith(".weights1")])
    x = x.permute(0, 2, 3, 1) @ s["fc0.weight"].T + s["fc0.bias"]       # lift, channels-last
    x = x.permute(0, 3, 1, 2)
    for i in range(n_layers):
        w1, w2 = s[f"sp_convs.{i}.weights1"].to(torch.complex128), s[f"sp_convs.{i}.weights2"].to(torch.complex128)
        cin, cout, m1, m2 = w1.shape
        x_ft = torch.fft.rfft2(x, dim=(-2, -1), norm="ortho")
        out_ft = torch.zeros(b, cout, h, w // 2 + 1, dtype=torch.complex128)
        out_ft[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m1, :m2], w1)
        out_ft[:, :, -m1:, :m2] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m1:, :m2], w2)
        x1 = torch.fft.irfft2(out_ft, s=(h, w), dim=(-2, -1), norm="ortho")
        x2 = F.conv1d(x.reshape(b, cin, -1), s[f"ws.{i}.weight"], s[f"ws.{i}.bias"])
        x = x1 + x2.view(b, cout, h, w)
        if i != n_layers - 1:
            x = F.gelu(x)
    x = x.permute(0, 2, 3, 1)
    x = F.gelu(x @ s["fc1.weight"].T + s["fc1.bias"]) @ s["fc2.weight"].T + s["fc2.bias"]
    return x.permute(0, 3, 1, 2)


def save_published(path, state):
    """As the published trainer saves: DDP-wrapped model, optimizer and scheduler states."""
    torch.save({"iters": 40, "epoch": 3, "model_state": {"module." + k: v for k, v in state.items()},
                "optimizer_state_dict": {"state": {}, "param_groups": []},
                "scheduler_state_dict": None}, path)
    return str(path)


@pytest.mark.parametrize("complex_weights", [False, True])
def test_published_checkpoint_gives_published_outputs(tmp_path, caplog, complex_weights):
    state = published_state(ARCH, complex_weights=complex_weights)
    path = save_published(tmp_path / "ckpt.tar", state)
    model = fno(ARCH)
    x = torch.randn(3, 4, 16, 12, generator=torch.Generator().manual_seed(1))
    ref = published_forward(state, x)
    with caplog.at_level(logging.INFO):
        info = load_weights(model, path)
    assert info["epoch"] == 3 and info["reinitialised"] == []
    assert info["n_tensors"] == len(model.state_dict()) == 12
    assert sum("published layout" in r.getMessage() for r in caplog.records) == 1
    with torch.no_grad():
        out = model(x)
    assert ref.abs().max() > 1  # a non-trivial output
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_published_checkpoint_non_strict_loads_everything(tmp_path):
    """pretrained_strict: false used to keep only lift/projection/biases of such a file."""
    state = published_state(ARCH)
    path = save_published(tmp_path / "ckpt.tar", state)
    model = fno(ARCH)
    info = load_weights(model, path, strict=False)
    assert info["reinitialised"] == [] and info["ignored"] == []
    assert info["n_tensors"] == len(model.state_dict())
    x = torch.randn(2, 4, 16, 12)
    with torch.no_grad():
        out = model(x)
    ref = published_forward(state, x)
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())


def test_unknown_layouts_are_rejected(tmp_path):
    model = fno(ARCH)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    torch.save({"model_state": {"encoder.weight": torch.zeros(3, 3)}}, tmp_path / "other.tar")
    with pytest.raises(FinetuneError, match="match neither this code's FNO layout"):
        load_weights(model, str(tmp_path / "other.tar"), strict=False)
    half = published_state(ARCH)
    del half["sp_convs.1.weights2"]
    torch.save(half, tmp_path / "half.pt")
    with pytest.raises(FinetuneError, match="sp_convs.1 needs both weights1 and weights2"):
        load_weights(model, str(tmp_path / "half.pt"))
    # other mode counts than the model: the usual shape-mismatch message, in our names
    small = published_state(dict(ARCH, modes1=[2, 2]))
    torch.save(small, tmp_path / "small.pt")
    with pytest.raises(FinetuneError, match=r"sp_convs.0.weight \(8, 6, 5, 2\) vs model \(12, 6, 5, 2\)"):
        load_weights(model, str(tmp_path / "small.pt"))
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # untouched


CALLS = []


def _side_effect():
    CALLS.append("ran")


class _Payload:
    """Pickles to a call of _side_effect: a full unpickler would run it."""

    def __reduce__(self):
        return (_side_effect, ())


def test_weights_are_loaded_without_unpickling_code(tmp_path):
    torch.save({"model_state": published_state(ARCH), "extra": _Payload()}, tmp_path / "evil.tar")
    with pytest.raises(FinetuneError, match="cannot read weights"):
        load_weights(fno(ARCH), str(tmp_path / "evil.tar"))
    assert CALLS == []


def test_eval_with_published_weights(tmp_path):
    """eval.py --weights (utils/inferencer.run_eval) on a published checkpoint: the test error
    is the published model's."""
    from utils.data_utils import PDEDataset
    from utils.inferencer import run_eval

    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(8, 4, 6))
    arch = dict(ARCH, mode_cut=0, embed_cut=0, fc_cut=0)
    params = YParams(tiny_config(tmp_path, data, **arch), "tiny")
    state = published_state(arch)
    path = save_published(tmp_path / "ckpt.tar", state)
    summary = run_eval(params, path, data["test_path"], str(tmp_path / "eval"), n_examples=0)
    x, y = PDEDataset(params, data["test_path"], train=False)[list(range(6))]
    pred = published_forward(state, x)
    rel = ((pred - y.double()).flatten(1).norm(dim=1) / y.double().flatten(1).norm(dim=1)).mean()
    assert summary["n_test"] == 6 and summary["weights_epoch"] == 3
    assert summary["test_rel_l2_mean"] == pytest.approx(rel.item(), rel=1e-4)
