"""Fourier Neural Operator (Li et al. 2021) as used by the scaling / transfer-learning study.

Architecture (DESIGN.md section 6), all tensors channels-first (B, C, H, W):

    x (B, in_dim, H, W)
      -> pointwise lift   Linear(in_dim -> layers[0])
      -> L Fourier layers: SpectralConv2d(layers[i] -> layers[i+1]) + 1x1 conv, GELU except last
      -> pointwise Linear(layers[-1] -> fc_dim), GELU, Linear(fc_dim -> out_dim)
      -> y (B, out_dim, H, W)

Config keys (as published): ``layers`` (list of L+1 widths), ``modes1``/``modes2`` (int or list
of L), ``fc_dim``, ``in_dim``, ``out_dim`` and the overrides ``mode_cut`` (all modes),
``embed_cut`` (all widths) and ``fc_cut`` (fc_dim = embed_cut * fc_cut, only with embed_cut).

Speed notes (CPU and GPU):
- the two retained low-frequency corners (rows [:m1] and [-m1:], columns [:m2] of rfft2) are
  contracted with ONE batched complex matmul, the weights being stored mode-major so no weight
  permute/copy happens per step;
- the FFTs are pruned: rfft along W keeps only m2 columns before the FFT along H, and the
  inverse only transforms the m2 non-zero columns along H (irfft pads the rest); the real
  transforms have hand-written adjoints (autograd's would run full-size complex FFTs);
- complex bmm falls back to a slow per-matrix loop on CPU for strided operands: the
  contraction's operands and gradients are made contiguous (mode-major) first;
- pointwise layers are (b)addbmm on the (B, C, H*W) view: no permutes of activations;
- under bf16 autocast (params.amp, CUDA) the FFTs and the spectral contraction run in float32;
- torch.compile (params.compile, applied by the trainer) works; inductor leaves the complex
  ops to eager kernels.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

# a key of a params object (YParams, dict or namespace), or its default (utils/config_schema.py)
from utils.config_schema import param as _param
from utils.errors import FNOConfigError  # a ConfigError and a ValueError


def _positive(value):
    """Published overrides are active when > 0; None / missing means off."""
    return value is not None and value > 0


def resolve_config(params):
    """Effective architecture after the published overrides, as a plain dict.

    Returns dict(in_dim, out_dim, layers (list of L+1 widths), modes1, modes2 (lists of L),
    fc_dim, dropout). ``params`` is not modified.
    """
    layers = _param(params, "layers")
    modes1 = _param(params, "modes1")
    modes2 = _param(params, "modes2")
    if layers is None:
        width = _param(params, "width")
        if width is None:
            raise FNOConfigError("FNO config needs 'layers' (list of widths) or 'width'")
        if isinstance(modes1, (list, tuple)):
            n_layers = len(modes1)
        else:
            n_layers = int(_param(params, "n_layers"))
        layers = [width] * (n_layers + 1)
    layers = [int(w) for w in layers]
    n_layers = len(layers) - 1
    if n_layers < 1:
        raise FNOConfigError(f"'layers' must list at least 2 widths, got {layers}")

    def as_list(name, value):
        if value is None:
            raise FNOConfigError(f"FNO config needs '{name}'")
        if isinstance(value, (list, tuple)):
            value = [int(m) for m in value]
        else:
            value = [int(value)] * n_layers
        if len(value) != n_layers:
            raise FNOConfigError(f"'{name}' has {len(value)} entries but 'layers' {layers} "
                                 f"defines {n_layers} Fourier layers")
        return value

    modes1 = as_list("modes1", modes1)
    modes2 = as_list("modes2", modes2)
    fc_dim = _param(params, "fc_dim")

    mode_cut = _param(params, "mode_cut")
    embed_cut = _param(params, "embed_cut")
    fc_cut = _param(params, "fc_cut")
    if _positive(mode_cut):
        modes1 = [int(mode_cut)] * n_layers
        modes2 = [int(mode_cut)] * n_layers
    if _positive(embed_cut):
        layers = [int(embed_cut)] * (n_layers + 1)
        if _positive(fc_cut):
            fc_dim = int(embed_cut * fc_cut)

    for name in ("in_dim", "out_dim", "fc_dim"):
        if _param(params, name) is None:
            raise FNOConfigError(f"FNO config needs '{name}'")
    cfg = dict(in_dim=int(_param(params, "in_dim")), out_dim=int(_param(params, "out_dim")),
               layers=layers, modes1=modes1, modes2=modes2, fc_dim=int(fc_dim),
               dropout=float(_param(params, "dropout") or 0.0))
    bad = {k: v for k, v in cfg.items() if k in ("in_dim", "out_dim", "fc_dim") and v < 1}
    if bad or min(layers) < 1 or min(modes1 + modes2) < 1:
        raise FNOConfigError(f"FNO sizes must be positive, got {cfg}")
    check_fits_in_memory(cfg)
    return cfg


def check_fits_in_memory(cfg):
    """FNOConfigError when the float32 weights of FNO(**cfg) alone exceed the memory available
    (a typo such as fc_dim: 1e15 would otherwise end in an allocator error, or in swap)."""
    from utils.malloc_tuning import memory_available

    n = count_parameters(cfg)
    avail = memory_available()
    if avail is not None and 4 * n > avail:
        sizes = {k: cfg[k] for k in ("layers", "modes1", "modes2", "fc_dim")}
        raise FNOConfigError(f"the FNO {sizes} has {n:.3g} parameters: {4 * n / 1e9:.3g} GB of "
                             f"float32 weights alone, more than the {avail / 1e9:.3g} GB of "
                             f"memory available")


def count_parameters(cfg):
    """Closed-form number of real parameters of ``FNO(**cfg)`` (complex weights count twice)."""
    layers, fc_dim = cfg["layers"], cfg["fc_dim"]
    n = cfg["in_dim"] * layers[0] + layers[0]                       # lift
    for cin, cout, m1, m2 in zip(layers, layers[1:], cfg["modes1"], cfg["modes2"]):
        n += 2 * (2 * m1) * m2 * cin * cout                          # two corners, re+im
        n += cin * cout + cout                                       # 1x1 conv
    n += layers[-1] * fc_dim + fc_dim + fc_dim * cfg["out_dim"] + cfg["out_dim"]
    return n


def pointwise(x, weight, bias, residual=None):
    """1x1 convolution on channels-first data, as batched matmuls on the (B, C, H*W) view.

    x (B, Cin, H, W), weight (Cout, Cin), bias (Cout,), residual None or (B, Cout, H, W)
    -> (B, Cout, H, W) = weight @ x + bias [+ residual].
    Explicit (b)addbmm with an expanded weight: torch.matmul(2-D, 3-D) would fold the batch
    into one GEMM and copy transposed activations in the backward.
    """
    b, cin, h, w = x.shape
    x3 = x.reshape(b, cin, h * w)
    weight = weight.expand(b, -1, -1)
    if residual is None:
        out = torch.baddbmm(bias[:, None], weight, x3)
    else:
        out = torch.baddbmm(residual.reshape(b, -1, h * w), weight, x3)
        out = out + bias.to(out.dtype)[:, None]  # keep bf16 under autocast (no promotion)
    return out.view(b, -1, h, w)


def _edge_mask(m, n, inner, edge, like):
    """(m,) real vector: `edge` at frequency 0 and at the Nyquist frequency n/2, else `inner`."""
    w = torch.full((m,), inner, dtype=like.dtype, device=like.device)
    w[0] = edge
    if n % 2 == 0 and m == n // 2 + 1:
        w[-1] = edge
    return w


class _RFFTLast(torch.autograd.Function):
    """X = rfft(x, dim=-1)[..., :m]: x (..., n) real -> X (..., m) complex.

    Own backward because autograd's rfft backward zero-pads the gradient to n columns and runs
    a full complex FFT; the adjoint is one c2r transform of the m retained columns:
    grad_x = Re(sum_k e^{+2 pi i k j / n} g_k) = irfft(g * w, n, norm="forward") with
    w = 1/2 except 1 at frequency 0 and n/2 (irfft counts the other bins twice).
    """

    @staticmethod
    def forward(ctx, x, m):
        ctx.n, ctx.m = x.shape[-1], m
        return torch.fft.rfft(x, dim=-1)[..., :m]

    @staticmethod
    def backward(ctx, grad):
        w = _edge_mask(ctx.m, ctx.n, 0.5, 1.0, grad.real)
        return torch.fft.irfft(grad * w, n=ctx.n, dim=-1, norm="forward"), None


class _IRFFTLast(torch.autograd.Function):
    """y = irfft(Y, n, dim=-1): Y (..., m) complex, m <= n//2 + 1 (zero-padded) -> y (..., n).

    Own backward because autograd's c2r backward scales all n//2 + 1 bins before slicing:
    grad_Y = rfft(g)[..., :m] * c / n with c = 2 except 1 at frequency 0 and n/2.
    """

    @staticmethod
    def forward(ctx, spec, n):
        ctx.n, ctx.m = n, spec.shape[-1]
        return torch.fft.irfft(spec, n=n, dim=-1)

    @staticmethod
    def backward(ctx, grad):
        c = _edge_mask(ctx.m, ctx.n, 2.0 / ctx.n, 1.0 / ctx.n, grad)
        return torch.fft.rfft(grad, dim=-1)[..., :ctx.m] * c, None


class _ModeContraction(torch.autograd.Function):
    """out = x @ w per mode: x (M, B, Ci), w (M, Ci, Co) complex -> (M, B, Co).

    Same maths as torch.bmm; the backward makes the incoming gradient contiguous first,
    because complex bmm on CPU falls back to a per-matrix loop (10-30x slower) when an
    operand is strided, which autograd's gradient of the later scatter would be.
    """

    @staticmethod
    def forward(ctx, x, w):
        ctx.save_for_backward(x, w)
        return torch.bmm(x, w)

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            # grad @ w^H computed as conj(conj(grad) @ w^T): a plain transposed operand is
            # a fast MKL case, a lazily conjugated transposed one is not.
            grad_x = torch.bmm(grad.conj().resolve_conj(), w.transpose(1, 2)).conj()
            grad_x = grad_x.resolve_conj()
        if ctx.needs_input_grad[1]:
            grad_w = torch.bmm(x.transpose(1, 2).conj(), grad)
        return grad_x, grad_w


class SpectralConv2d(nn.Module):
    """Fourier layer: rfft2, multiply the retained modes by complex weights, irfft2.

    Keeps rows [:modes1] and [-modes1:] (both signs of the H frequency) and columns
    [:modes2] of the real FFT along W. Input (B, Cin, H, W) -> output (B, Cout, H, W);
    needs 2 * modes1 <= H and modes2 <= W // 2 + 1.

    ``weight``: real (2*modes1*modes2, Cin, Cout, 2) = complex weights stored mode-major
    (row index of the mode first: the [:m1] corner, then the [-m1:] corner), so that the
    contraction is one batched matmul (modes, B, Cin) @ (modes, Cin, Cout).

    Optional LoRA adapter (``add_lora(r)``, for fine-tuning with frozen base weights): the
    weight of each mode k becomes W_k + A_k B_k with A (modes, Cin, r) and B (modes, r, Cout)
    complex, stored like ``weight`` as real (..., 2) tensors ``lora_a`` / ``lora_b``. That is
    2*modes*r*(Cin + Cout) real parameters against 2*modes*Cin*Cout for ``weight`` (a
    fraction r*(Cin + Cout)/(Cin*Cout): r/12 at width 24, r/32 at width 64). B starts at zero,
    so the adapted layer starts exactly at the pre-trained one. Without an adapter the
    forward pass is unchanged.
    """

    def __init__(self, in_channels, out_channels, modes1, modes2):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.modes1, self.modes2 = modes1, modes2
        # Published init: real and imaginary parts ~ U[0, 1/(Cin*Cout)).
        scale = 1.0 / (in_channels * out_channels)
        self.weight = nn.Parameter(
            scale * torch.rand(2 * modes1 * modes2, in_channels, out_channels, 2))
        self.register_parameter("lora_a", None)  # (modes, Cin, r, 2) after add_lora
        self.register_parameter("lora_b", None)  # (modes, r, Cout, 2)

    def extra_repr(self):
        lora = f", lora_rank={self.lora_a.shape[2]}" if self.lora_a is not None else ""
        return (f"{self.in_channels}, {self.out_channels}, modes1={self.modes1}, "
                f"modes2={self.modes2}{lora}")

    def add_lora(self, rank):
        """Add a trainable rank-`rank` update A_k B_k of every mode's (Cin, Cout) weight.

        A ~ complex normal with variance 1/rank (so an optimizer step of B moves A B by about
        as much as a step of W would move W), B = 0 (the layer's output is unchanged).
        """
        if self.lora_a is not None:
            raise FNOConfigError("this spectral layer has a LoRA adapter already")
        modes = self.weight.shape[0]
        like = dict(dtype=self.weight.dtype, device=self.weight.device)
        self.lora_a = nn.Parameter(
            torch.randn(modes, self.in_channels, rank, 2, **like) * (0.5 / rank) ** 0.5)
        self.lora_b = nn.Parameter(torch.zeros(modes, rank, self.out_channels, 2, **like))

    def complex_weight(self):
        """(modes, Cin, Cout) complex weight of the forward pass: W, or W + A B with LoRA."""
        weight = torch.view_as_complex(self.weight)
        if self.lora_a is not None:
            weight = weight + torch.bmm(torch.view_as_complex(self.lora_a),
                                        torch.view_as_complex(self.lora_b))
        return weight

    def merged_weight(self):
        """``weight`` with the adapter folded in: (modes, Cin, Cout, 2) real."""
        return torch.view_as_real(self.complex_weight())

    def merge_lora(self):
        """Fold the adapter into ``weight`` in place and remove it (no-op without adapter)."""
        if self.lora_a is None:
            return
        with torch.no_grad():
            self.weight.copy_(self.merged_weight())
        self.lora_a = self.lora_b = None

    def check_size(self, h, w):
        if 2 * self.modes1 > h or self.modes2 > w // 2 + 1:
            raise FNOConfigError(
                f"grid {h}x{w} too small for modes ({self.modes1}, {self.modes2}): need "
                f"H >= 2*modes1 = {2 * self.modes1} and W//2+1 >= modes2 = {self.modes2}")

    def forward(self, x):
        b, _, h, w = x.shape
        m1, m2 = self.modes1, self.modes2
        self.check_size(h, w)
        dtype = x.dtype
        # FFT and contraction in (at least) float32 even under bf16/fp16 autocast.
        with torch.autocast(device_type=x.device.type, enabled=False):
            x = x.to(self.weight.dtype) if x.dtype in (torch.float16, torch.bfloat16) else x
            # Pruned rfft2: only m2 columns go through the FFT along H.
            x_ft = _RFFTLast.apply(x, m2)
            x_ft = torch.fft.fft(x_ft, dim=-2)
            # Both corners gathered mode-major in one copy: (2m1, m2, B, Ci), contiguous.
            x_ft = torch.cat([x_ft[:, :, :m1].permute(2, 3, 0, 1),
                              x_ft[:, :, h - m1:].permute(2, 3, 0, 1)], dim=0)
            # One contraction over both corners: (modes, B, Ci) @ (modes, Ci, Co).
            x_ft = x_ft.view(2 * m1 * m2, b, self.in_channels)
            out = _ModeContraction.apply(x_ft, self.complex_weight())                  # (modes, B, Co)
            out = out.view(2 * m1, m2, b, self.out_channels).permute(2, 3, 0, 1)
            # Zero-filled spectrum with only the m2 retained columns; irfft pads to W//2+1.
            out_ft = out.new_zeros(b, self.out_channels, h, m2)
            out_ft[:, :, :m1] = out[:, :, :m1]
            out_ft[:, :, h - m1:] = out[:, :, m1:]
            out_ft = torch.fft.ifft(out_ft, dim=-2)
            y = _IRFFTLast.apply(out_ft, w)
        return y.to(dtype)


class FNO2d(nn.Module):
    """FNO of DESIGN.md section 6. forward: (B, in_dim, H, W) -> (B, out_dim, H, W)."""

    def __init__(self, in_dim, out_dim, layers, modes1, modes2, fc_dim, dropout=0.0):
        super().__init__()
        self.layers = list(layers)
        self.fc0 = nn.Linear(in_dim, layers[0])
        self.sp_convs = nn.ModuleList(
            SpectralConv2d(ci, co, m1, m2)
            for ci, co, m1, m2 in zip(layers, layers[1:], modes1, modes2))
        # 1x1 convs stored as Linear (Cout, Cin) weights and applied channels-first.
        self.ws = nn.ModuleList(nn.Linear(ci, co) for ci, co in zip(layers, layers[1:]))
        self.fc1 = nn.Linear(layers[-1], fc_dim)
        self.fc2 = nn.Linear(fc_dim, out_dim)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x):
        if x.dim() != 4 or x.shape[1] != self.fc0.in_features:
            raise FNOConfigError(f"FNO expects input (B, {self.fc0.in_features}, H, W), "
                                 f"got {tuple(x.shape)}")
        x = pointwise(x, self.fc0.weight, self.fc0.bias)
        last = len(self.ws) - 1
        for i, (spconv, w) in enumerate(zip(self.sp_convs, self.ws)):
            x = pointwise(x, w.weight, w.bias, residual=spconv(x))
            if i != last:
                x = F.gelu(x)
            x = self.dropout(x)
        x = self.dropout(F.gelu(pointwise(x, self.fc1.weight, self.fc1.bias)))
        return self.dropout(pointwise(x, self.fc2.weight, self.fc2.bias))


def fno(params):
    """Build the FNO from a params object (YParams, namespace or dict); see resolve_config."""
    cfg = resolve_config(params)
    return FNO2d(**cfg)
