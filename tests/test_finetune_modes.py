"""Fine-tuning modes (finetune_mode: full / head / frozen_fourier / lora) and LoRA adapters."""
import logging

import pytest
import torch

from models.fno import fno
from tests.test_finetune import pretrained  # noqa: F401  (the tiny pre-trained model fixture)
from utils.errors import FinetuneError
from utils.checkpoint import load_weights
from utils.finetune import apply_finetune_mode, export_state_dict, merge_adapters
from utils.trainer import Trainer
from utils.YParams import YParams

ARCH = dict(in_dim=4, out_dim=1, layers=[6, 5, 7], modes1=[3, 2], modes2=[2, 3], fc_dim=9)
TRAINS = {  # parameter-name prefixes that train in each mode
    "full": ("fc0.", "sp_convs.", "ws.", "fc1.", "fc2."),
    "head": ("fc0.", "fc1.", "fc2."),
    "frozen_fourier": ("fc0.", "ws.", "fc1.", "fc2."),
    "lora": ("fc0.", "ws.", "fc1.", "fc2.", "sp_convs.0.lora_", "sp_convs.1.lora_"),
}


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


@pytest.mark.parametrize("mode", list(TRAINS))
def test_modes_choose_what_trains(mode, caplog):
    model = fno(ARCH)
    with caplog.at_level(logging.INFO):
        apply_finetune_mode(model, dict(finetune_mode=mode, lora_rank=2 if mode == "lora" else None))
    names = [n for n, _ in model.named_parameters()]
    assert _trainable(model) == [n for n in names if n.startswith(TRAINS[mode])]
    if mode == "lora":
        # 2 * modes * r * (Cin + Cout) real adapter parameters per layer
        n_adapters = 2 * (3 * 2 * 2) * 2 * (6 + 5) + 2 * (2 * 2 * 3) * 2 * (5 + 7)
        n_rest = sum(p.numel() for n, p in model.named_parameters() if n.startswith(("fc", "ws")))
        assert sum(p.numel() for p in model.parameters() if p.requires_grad) == n_adapters + n_rest
        assert f"mode lora (rank 2): {n_adapters + n_rest} trainable" in caplog.text


def test_mode_config_errors():
    bad = [dict(finetune_mode="partial"), dict(finetune_mode=3),
           dict(finetune_mode="head", freeze="spectral"),
           dict(finetune_mode="head", lora_rank=2),
           dict(finetune_mode="lora", lora_rank=0), dict(finetune_mode="lora", lora_rank=1.5),
           dict(finetune_mode="lora", lora_rank=True), dict(finetune_mode="lora", lora_rank=6)]
    for cfg in bad:
        with pytest.raises(FinetuneError):
            apply_finetune_mode(fno(ARCH), cfg)
    # `freeze` keeps working on its own (mode full)
    model = fno(ARCH)
    apply_finetune_mode(model, dict(freeze="fourier"))
    assert _trainable(model) == [n for n, _ in model.named_parameters()
                                 if n.startswith(TRAINS["head"])]


def test_lora_starts_exactly_at_the_base_and_merges():
    torch.manual_seed(0)
    model = fno(ARCH)
    x = torch.randn(3, 4, 16, 12)
    with torch.no_grad():
        base_out = model(x)
    apply_finetune_mode(model, dict(finetune_mode="lora", lora_rank=3))
    with torch.no_grad():
        assert torch.equal(model(x), base_out)        # B = 0: the pre-trained model exactly
        for layer in model.sp_convs:                  # a trained adapter
            layer.lora_b.normal_()
        adapted = model(x)
    assert (adapted - base_out).abs().max() > 1e-2
    state = export_state_dict(model)
    plain = fno(ARCH)
    assert state.keys() == plain.state_dict().keys()
    plain.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), adapted, rtol=1e-5, atol=1e-6)
        # the merged weight is W + A B per mode (the adapter form's maths, spelled out)
        layer = model.sp_convs[0]
        delta = torch.einsum("kir,kro->kio", torch.view_as_complex(layer.lora_a),
                             torch.view_as_complex(layer.lora_b))
        torch.testing.assert_close(torch.view_as_complex(state["sp_convs.0.weight"]),
                                   torch.view_as_complex(layer.weight) + delta)
    merge_adapters(model)
    assert model.state_dict().keys() == plain.state_dict().keys()
    with torch.no_grad():
        torch.testing.assert_close(model(x), adapted, rtol=1e-5, atol=1e-6)


def _params(pretrained, **over):
    _, _, down, cfg, weights = pretrained
    p = YParams(cfg, "tiny")
    p.update(dict(down, pretrained=weights, lr=1e-2, **over))
    return p


def _load(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("mode", ["head", "frozen_fourier", "lora"])
def test_mode_training_keeps_frozen_tensors(pretrained, tmp_path, mode):
    base = _load(pretrained[-1])["model_state"]
    t = Trainer(_params(pretrained, finetune_mode=mode, max_epochs=1), str(tmp_path / mode))
    assert t.n_params == sum(p.numel() for p in t.raw_model.parameters() if p.requires_grad)
    t.fit()
    after = dict(t.raw_model.state_dict())
    saved = _load(str(tmp_path / mode / "checkpoints/ckpt.tar"))
    for k, v in base.items():
        trains = k.startswith(TRAINS[mode])
        assert torch.equal(after[k], v) != trains, k   # frozen: bit-identical; trained: moved
    if mode == "lora":
        # the checkpoint's model_state is plain and merged; lora_state holds base + adapters
        assert saved["model_state"].keys() == base.keys()
        assert not torch.equal(saved["model_state"]["sp_convs.0.weight"], base["sp_convs.0.weight"])
        assert torch.equal(saved["lora_state"]["sp_convs.0.weight"], base["sp_convs.0.weight"])
        # eval / pretrained load the plain weights into a plain model: same outputs
        plain = fno(t.params)
        load_weights(plain, str(tmp_path / mode / "checkpoints/ckpt.tar"))
        x = torch.randn(2, 4, 16, 16)
        with torch.no_grad():
            torch.testing.assert_close(plain(x), t.raw_model(x), rtol=1e-5, atol=1e-6)
    else:
        assert saved["lora_state"] is None


def test_lora_resume_is_exact(pretrained, tmp_path):
    straight = Trainer(_params(pretrained, finetune_mode="lora", lora_rank=2, max_epochs=2),
                       str(tmp_path / "a"))
    straight.fit()
    Trainer(_params(pretrained, finetune_mode="lora", lora_rank=2, max_epochs=1,
                    max_cosine_lr_epochs=2), str(tmp_path / "b")).fit()
    resumed = Trainer(_params(pretrained, finetune_mode="lora", lora_rank=2, max_epochs=2,
                              max_cosine_lr_epochs=2), str(tmp_path / "b"))
    assert resumed.resumed and resumed.epoch == 1
    assert not any(p.requires_grad for n, p in resumed.raw_model.named_parameters()
                   if n.endswith(".weight") and n.startswith("sp_convs."))
    resumed.fit()
    a, b = (_load(str(tmp_path / r / "checkpoints/ckpt.tar")) for r in ("a", "b"))
    for key in ("model_state", "lora_state"):
        assert a[key].keys() == b[key].keys()
        for k in a[key]:
            assert torch.equal(a[key][k], b[key][k]), (key, k)
