"""The trainer's optimizer: fused Adam/AdamW for real weights, the plain kernel otherwise."""
import torch

from utils.optim import build_optimizer


def test_fused_adam_for_real_weights_and_fallback_for_complex():
    real = torch.nn.Linear(4, 3)
    for name in ("adam", "adamw"):
        opt = build_optimizer({"optimizer": name, "lr": 1e-3}, real)
        assert opt.defaults["fused"] is True, name
    complex_model = torch.nn.Module()
    complex_model.w = torch.nn.Parameter(torch.randn(3, dtype=torch.cfloat))
    assert not build_optimizer({"optimizer": "adam", "lr": 1e-3}, complex_model).defaults["fused"]


def test_fused_adam_matches_plain_adam():
    torch.manual_seed(0)
    a, b = torch.nn.Linear(8, 8), torch.nn.Linear(8, 8)
    b.load_state_dict(a.state_dict())
    opt_a = build_optimizer({"optimizer": "adam", "lr": 1e-2}, a)
    opt_b = torch.optim.Adam(b.parameters(), lr=1e-2)
    x = torch.randn(16, 8)
    for _ in range(5):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            m(x).square().sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        torch.testing.assert_close(pa, pb, rtol=1e-5, atol=1e-6)
