"""FNO model (models/fno.py) and glibc malloc tuning (utils/malloc_tuning.py)."""
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from models import fno as fno_mod
from models.fno import FNOConfigError, SpectralConv2d, count_parameters, fno, resolve_config
from utils import malloc_tuning

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def small_params(**overrides):
    cfg = dict(layers=[8, 8, 8], modes1=[3, 3], modes2=[4, 4], fc_dim=16, in_dim=4, out_dim=1,
               mode_cut=0, embed_cut=0, fc_cut=0)
    cfg.update(overrides)
    return SimpleNamespace(**cfg)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


# ----------------------------------------------------------------------------- shapes/config
@pytest.mark.parametrize("h,w", [(16, 16), (12, 20), (6, 7)])
def test_shapes(h, w):
    torch.manual_seed(0)
    model = fno(small_params())
    y = model(torch.randn(3, 4, h, w))
    assert y.shape == (3, 1, h, w)
    assert y.dtype == torch.float32 and torch.isfinite(y).all()


def test_same_weights_any_resolution():
    """One set of weights runs on several grids; a band-limited input gives the same field."""
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 2, 3, 3).double()

    def sample(n_h, n_w):
        # trig polynomial with frequencies inside the retained modes (|k1| < 3, k2 < 3)
        yy, xx = torch.meshgrid(torch.arange(n_h, dtype=torch.float64) / n_h,
                                torch.arange(n_w, dtype=torch.float64) / n_w, indexing="ij")
        rng = np.random.default_rng(1)
        x = torch.zeros(1, 3, n_h, n_w, dtype=torch.float64)
        for c in range(3):
            for k1 in range(-2, 3):
                for k2 in range(0, 3):
                    a, p = rng.normal(), rng.uniform(0, 2 * np.pi)
                    x[0, c] += a * torch.cos(2 * np.pi * (k1 * yy + k2 * xx) + p)
        return x

    y_coarse = layer(sample(8, 10))
    y_fine = layer(sample(16, 20))
    torch.testing.assert_close(y_fine[..., ::2, ::2], y_coarse, rtol=1e-10, atol=1e-10)
    model = fno(small_params()).double()
    for h, w in [(8, 8), (16, 24), (33, 17)]:
        assert model(torch.randn(2, 4, h, w, dtype=torch.float64)).shape == (2, 1, h, w)


def expected_count(in_dim, out_dim, widths, m1, m2, fc_dim):
    """Closed form, written out independently of the module: lift + L*(2 corners re/im + 1x1)
    + projection."""
    n = in_dim * widths[0] + widths[0]
    for i in range(len(widths) - 1):
        n += 2 * 2 * m1[i] * m2[i] * widths[i] * widths[i + 1]
        n += widths[i] * widths[i + 1] + widths[i + 1]
    return n + widths[-1] * fc_dim + fc_dim + fc_dim * out_dim + out_dim


@pytest.mark.parametrize("overrides,widths,m1,m2,fc_dim", [
    ({}, [8, 8, 8], [3, 3], [4, 4], 16),
    ({"layers": [4, 6, 5], "modes1": [2, 3], "modes2": [4, 1]}, [4, 6, 5], [2, 3], [4, 1], 16),
    ({"mode_cut": 2}, [8, 8, 8], [2, 2], [2, 2], 16),
    ({"embed_cut": 5}, [5, 5, 5], [3, 3], [4, 4], 16),
    ({"embed_cut": 5, "fc_cut": 3}, [5, 5, 5], [3, 3], [4, 4], 15),
    ({"fc_cut": 3}, [8, 8, 8], [3, 3], [4, 4], 16),  # as published: fc_cut needs embed_cut
    ({"mode_cut": 1, "embed_cut": 3, "fc_cut": 2, "in_dim": 7, "out_dim": 2},
     [3, 3, 3], [1, 1], [1, 1], 6),
    ({"layers": None, "width": 6, "modes1": 2, "modes2": 3}, [6] * 5, [2] * 4, [3] * 4, 16),
])
def test_parameter_count_formula(overrides, widths, m1, m2, fc_dim):
    params = small_params(**overrides)
    model = fno(params)
    want = expected_count(params.in_dim, params.out_dim, widths, m1, m2, fc_dim)
    assert n_params(model) == want
    assert count_parameters(resolve_config(params)) == want
    assert [c.modes1 for c in model.sp_convs] == m1 and model.fc1.out_features == fc_dim


def test_published_size_parameter_count():
    params = SimpleNamespace(layers=[64] * 5, modes1=[65] * 4, modes2=[65] * 4, fc_dim=128,
                             in_dim=4, out_dim=1, mode_cut=32, embed_cut=64, fc_cut=2)
    cfg = resolve_config(params)
    assert cfg["modes1"] == [32] * 4 and cfg["fc_dim"] == 128
    assert params.modes1 == [65] * 4  # the params object is not modified
    assert count_parameters(cfg) == 256 + 64 + 4 * (4 * 32 * 32 * 64 * 64 + 64 * 64 + 64) \
        + 64 * 128 + 128 + 128 + 1


@pytest.mark.parametrize("bad", [
    {"modes1": [3, 3, 3]},
    {"layers": [8]},
    {"layers": None},
    {"modes2": None},
    {"in_dim": 0},
])
def test_config_errors(bad):
    with pytest.raises(FNOConfigError):
        fno(small_params(**bad))


def test_modes_too_large_for_grid():
    layer = SpectralConv2d(2, 2, 4, 5)
    layer(torch.randn(1, 2, 8, 8))  # at the limit: 2*4 <= 8, 5 <= 8//2+1
    with pytest.raises(FNOConfigError, match="too small"):
        layer(torch.randn(1, 2, 7, 8))
    with pytest.raises(FNOConfigError, match="too small"):
        layer(torch.randn(1, 2, 8, 7))
    with pytest.raises(FNOConfigError, match="expects input"):
        fno(small_params())(torch.randn(1, 3, 16, 16))


# ------------------------------------------------------------------------ spectral numerics
def direct_spectral_conv(x, weight, m1, m2):
    """Spectral conv by explicit DFT sums in float64 numpy (no FFT).

    X[k1,k2] = sum_{h,w} x[h,w] exp(-2 pi i (k1 h/H + k2 w/W)) on the retained modes,
    Y[o] = sum_i X[i] W[i,o], y = real inverse DFT of the Hermitian-completed half spectrum:
    y[h,w] = 1/(H W) sum_{k1,k2} c_k2 Re(Y[k1,k2] exp(+2 pi i (k1 h/H + k2 w/W))),
    c = 1 for k2 = 0 and k2 = W/2, else 2 (the conjugate partner -k counted once more).
    """
    b, cin, h, w = x.shape
    wc = weight[..., 0] + 1j * weight[..., 1]              # (2m1*m2, Ci, Co)
    wc = wc.reshape(2 * m1, m2, cin, -1)
    rows = list(range(m1)) + list(range(h - m1, h))
    hh, ww = np.arange(h)[:, None], np.arange(w)[None, :]
    y = np.zeros((b, wc.shape[-1], h, w))
    for r, k1 in enumerate(rows):
        for k2 in range(m2):
            basis = np.exp(2j * np.pi * (k1 * hh / h + k2 * ww / w))     # (H, W)
            xk = (x * basis.conj()).sum(axis=(-2, -1))                      # (B, Ci)
            yk = xk @ wc[r, k2]                                             # (B, Co)
            c = 1.0 if (k2 == 0 or 2 * k2 == w) else 2.0
            y += c * np.real(yk[:, :, None, None] * basis) / (h * w)
    return y


@pytest.mark.parametrize("h,w,m1,m2", [(8, 8, 2, 3), (8, 6, 4, 4), (7, 9, 3, 5), (6, 8, 1, 1)])
def test_spectral_layer_equals_direct_dft(h, w, m1, m2):
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 2, m1, m2)
    with torch.no_grad():
        layer.weight.normal_()  # signed weights: the published init is all positive
    x = torch.randn(2, 3, h, w)
    want = direct_spectral_conv(x.double().numpy(), layer.weight.detach().double().numpy(),
                                m1, m2)
    got = layer(x)
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-4, atol=1e-5)
    got64 = layer.double()(x.double())
    np.testing.assert_allclose(got64.detach().numpy(), want, rtol=1e-11, atol=1e-12)


def reference_spectral_conv(x, layer):
    """Textbook implementation (full rfft2, two einsums, irfft2) with plain autograd."""
    m1, m2 = layer.modes1, layer.modes2
    wc = torch.view_as_complex(layer.weight).reshape(2 * m1, m2, layer.in_channels, -1)
    wc = wc.permute(2, 3, 0, 1)
    x_ft = torch.fft.rfft2(x)
    out = torch.zeros(x.shape[0], wc.shape[1], x.shape[-2], x.shape[-1] // 2 + 1,
                      dtype=x_ft.dtype)
    out[:, :, :m1, :m2] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, :m1, :m2], wc[:, :, :m1])
    out[:, :, -m1:, :m2] = torch.einsum("bixy,ioxy->boxy", x_ft[:, :, -m1:, :m2], wc[:, :, m1:])
    return torch.fft.irfft2(out, s=x.shape[-2:])


@pytest.mark.parametrize("h,w,m1,m2", [(8, 8, 2, 5), (9, 7, 3, 2)])
def test_spectral_layer_gradients(h, w, m1, m2):
    """Custom backward passes (pruned FFTs, mode contraction) against autograd of the
    textbook version, and a numerical gradcheck."""
    torch.manual_seed(0)
    layer = SpectralConv2d(3, 4, m1, m2).double()
    x = torch.randn(2, 3, h, w, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 4, h, w, dtype=torch.float64)
    grads = torch.autograd.grad((layer(x) * g).sum(), [x, layer.weight])
    grads_ref = torch.autograd.grad((reference_spectral_conv(x, layer) * g).sum(),
                                    [x, layer.weight])
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    small = SpectralConv2d(2, 2, 2, 3).double()
    xs = torch.randn(1, 2, 6, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(small, (xs,))


def test_model_gradients_match_reference_layer(monkeypatch):
    """A full training-step gradient equals the one with the textbook spectral layer."""
    torch.manual_seed(0)
    model = fno(small_params()).double()
    x = torch.randn(2, 4, 12, 10, dtype=torch.float64)
    loss = model(x).square().sum()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    monkeypatch.setattr(SpectralConv2d, "forward", lambda self, z: reference_spectral_conv(z, self))
    loss_ref = model(x).square().sum()
    grads_ref = torch.autograd.grad(loss_ref, list(model.parameters()))
    torch.testing.assert_close(loss, loss_ref, rtol=1e-12, atol=0)
    for a, b in zip(grads, grads_ref):
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)


# ------------------------------------------------------------------------------------ amp
def test_autocast_keeps_spectral_layer_float32():
    torch.manual_seed(0)
    layer = SpectralConv2d(4, 4, 3, 3)
    x = torch.randn(2, 4, 12, 12)
    torch.set_grad_enabled(False)
    y32 = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_auto = layer(x)                        # float32 input: bit-identical result
        y_bf16 = layer(x.bfloat16())             # bf16 input: computed in float32, cast back
    assert y_auto.dtype == torch.float32 and torch.equal(y_auto, y32)
    torch.set_grad_enabled(True)
    assert y_bf16.dtype == torch.bfloat16
    torch.testing.assert_close(y_bf16.float(), y32, rtol=2e-2, atol=2e-2 * float(y32.abs().max()))


def test_autocast_model_close_to_float32_and_float32_unchanged():
    torch.manual_seed(0)
    model = fno(small_params(amp=True))
    x = torch.randn(2, 4, 16, 16)
    y_ref = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y_amp = model(x)
    y_after = model(x)
    assert torch.equal(y_after, y_ref)          # autocast leaves no state behind
    rel = (y_amp.float() - y_ref).norm() / y_ref.norm()
    assert rel < 3e-2


# ------------------------------------------------------------------------------- malloc
FAULT_PROBE = r"""
import resource, sys
sys.path.insert(0, {root!r})
from utils.malloc_tuning import configure_malloc
applied = configure_malloc() if sys.argv[1] == "on" else False
import torch
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x = torch.randn(9 << 20)          # 36 MiB: above glibc's default (dynamic) mmap threshold cap
def step():                       # a few activation-sized temporaries, like a training step
    y = torch.nn.functional.gelu(x)
    return float((y * 2 + x).sum())
step(); step()                    # warm-up: the heap reaches its steady size
start = faults()
for _ in range(10):
    step()
print(int(applied), faults() - start)
"""


def run_fault_probe(mode, env_extra=None):
    env = {k: v for k, v in os.environ.items()
           if k not in ("GLIBC_TUNABLES", malloc_tuning.OPT_OUT_ENV)}
    env.update(env_extra or {})
    out = subprocess.run([sys.executable, "-c", FAULT_PROBE.format(root=REPO_ROOT), mode],
                         capture_output=True, text=True, env=env, check=True, timeout=120)
    applied, faults = out.stdout.split()
    return int(applied), int(faults)


@pytest.mark.skipif(not malloc_tuning._is_glibc_linux(), reason="glibc-only behaviour")
def test_malloc_tuning_stops_page_fault_churn():
    applied_off, faults_off = run_fault_probe("off")
    applied_on, faults_on = run_fault_probe("on")
    assert (applied_off, applied_on) == (0, 1)
    # 10 steps x 3 temporaries x 36 MiB re-faulted without the fix (>= 1 fault per 2 MiB
    # page even with transparent huge pages); reused from the heap with it.
    assert faults_off >= 10 * 3 * 18
    assert faults_on < faults_off / 10
    applied_opt_out, faults_opt_out = run_fault_probe(
        "on", {malloc_tuning.OPT_OUT_ENV: "1"})
    assert applied_opt_out == 0 and faults_opt_out >= 10 * 3 * 18


def test_malloc_tuning_opt_out_and_existing_tunables(monkeypatch):
    calls = []

    class FakeLibc:
        def __init__(self, *_):
            self.mallopt = self

        def __call__(self, *args):
            calls.append(args)
            return 1

    monkeypatch.setattr(malloc_tuning, "_applied", False)
    monkeypatch.setattr(malloc_tuning.ctypes, "CDLL", FakeLibc)
    monkeypatch.setattr(malloc_tuning, "_is_glibc_linux", lambda: True)
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)

    monkeypatch.setenv(malloc_tuning.OPT_OUT_ENV, "1")
    assert malloc_tuning.configure_malloc() is False
    monkeypatch.setenv(malloc_tuning.OPT_OUT_ENV, "0")   # "0" means: do tune
    monkeypatch.setenv("GLIBC_TUNABLES", "glibc.malloc.mmap_threshold=1000000")
    assert malloc_tuning.configure_malloc() is False
    assert calls == []
    monkeypatch.delenv("GLIBC_TUNABLES")
    assert malloc_tuning.configure_malloc() is True
    assert calls == [(malloc_tuning.M_TRIM_THRESHOLD, -1),
                     (malloc_tuning.M_MMAP_THRESHOLD, 2**31 - 1)]
    monkeypatch.setattr(malloc_tuning, "_applied", False)
    monkeypatch.setattr(malloc_tuning, "_is_glibc_linux", lambda: False)  # macOS, musl, ...
    assert malloc_tuning.configure_malloc() is False
    assert len(calls) == 2


def test_not_glibc_detection(monkeypatch):
    monkeypatch.setattr(malloc_tuning.sys, "platform", "darwin")
    assert malloc_tuning._is_glibc_linux() is False
