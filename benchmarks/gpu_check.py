"""GPU readiness check of the CUDA code paths, on one GPU in at most ~5 minutes.

    python benchmarks/gpu_check.py --out results/gpu_check           # on a CUDA machine
    python benchmarks/gpu_check.py --dry --out /tmp/gpu_check_dry    # CPU, tiny sizes, seconds

Prints one table (section | check | value | target | status) and writes it, with every
number behind it, to {out}/gpu_check.json (rewritten atomically after each section, so a
failing or timed-out section never loses the others). Sections:

1. correctness: our FNO on the device vs the same weights on the CPU in float32 (and vs a
   float64 CPU reference), forward output and every parameter gradient; the bf16-autocast
   forward vs float32; the torch.compile'd model vs eager (forward and gradients);
   SpectralConv2d (custom autograd FFTs) vs a direct DFT in float64 on the device, forward
   and gradients; train.py's fused Adam step on the device vs plain Adam.
2. speed at the published size (width 64, modes 32, 4 layers, fc 128, 128x128): training-step
   samples/s for batch 8, 32, 128 in float32, bf16 autocast and torch.compile (with train.py's
   optimizer), peak memory, neuraloperator's FNO of the same size when installed (see
   benchmarks/bench_train.py: the steps timed here are its make_train_step), and the ratio of
   each step to a memory-bandwidth bound (see `step_traffic`).
3. run: 2048/256/256 Poisson samples at 128x128 from utils/gen_data_poisson.py, the published
   config poisson-scale-k1_5 for ~200 steps through train.py under torchrun (a process group
   of one rank: nccl on CUDA), eval.py on the test split; samples/s of the training loop
   against the bare step, and the data loader's headroom.

--dry runs the same functions on the CPU at tiny sizes (the tests run it; the real-run section
uses torchrun with gloo). Only what needs CUDA is skipped, and the table says so.
Exit status: 0 all sections ran and every correctness check passed (performance targets
may still be missed: see the table), 1 a check failed or a section errored / timed out,
2 user error.
"""
import argparse
import collections
import contextlib
import copy
import datetime
import gc
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(HERE)
for _p in (REPO_ROOT, HERE):
    if _p not in sys.path:
        sys.path.insert(0, _p)

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402
from torch.utils._pytree import tree_leaves  # noqa: E402

import bench_train  # noqa: E402  (benchmarks/bench_train.py: model builders, timed step)
from utils.cli import run_cli  # noqa: E402
from utils.errors import UserError  # noqa: E402
from utils.fileio import write_json_atomic  # noqa: E402
from utils.metrics_log import read_metrics  # noqa: E402
from utils.run_layout import RunLayout  # noqa: E402

# Sizes. "full" is the published model and data size; "dry" keeps every code path at toy size.
SIZES = {
    "full": dict(res=128, width=64, modes=32, n_layers=4, fc_dim=128, in_dim=4,
                 batches=(8, 32, 128), check_batch=2, warmup=3, steps=10, copy_mib=1024,
                 dft=dict(batch=2, cin=8, cout=6, n=64, modes=((12, 10), (32, 33))),
                 n_train=2048, n_val=256, n_test=256, run_batch=128, run_steps=200,
                 compile_backend="inductor", compile_batches=(8, 32, 128),
                 compile_reserve_s=60, run_overrides=[]),
    "dry": dict(res=32, width=8, modes=4, n_layers=4, fc_dim=16, in_dim=4,
                batches=(2, 8), check_batch=2, warmup=1, steps=3, copy_mib=16,
                dft=dict(batch=2, cin=3, cout=2, n=16, modes=((3, 4), (8, 9))),
                n_train=64, n_val=16, n_test=16, run_batch=8, run_steps=16,
                compile_backend="aot_eager", compile_batches=(8,), compile_reserve_s=0,
                run_overrides=["mode_cut=4", "embed_cut=8", "fc_cut=2", "nx=32", "ny=32",
                               "batch_size=8", "valid_batch_size=8"]),
}
RUN_CONFIG_FILE = "configs/operators_poisson.yaml"
RUN_CONFIG = "poisson-scale-k1_5"        # the published pre-training config
# Share of the time budget of each section (what a section leaves unused goes to the next).
# The run goes before the speed section: it is the end-to-end check, and the speed section
# degrades gracefully (largest batch first, compile skipped when time is short).
SECTION_SHARES = {"correctness": 0.15, "run": 0.45, "speed": 0.4}
SECTION_ORDER = ("correctness", "speed", "run")     # order of the table
TOL = dict(fno_f32=1e-4, fno_f64=1e-4, adam=1e-5, spectral=1e-5, bf16=1e-2)
TARGETS = dict(bf16_speedup=1.5, vs_neuralop=2.0, loop_vs_step=0.85, bound_ratio=2.0,
               loader_headroom=1.0)


class SectionTimeout(Exception):
    """The section ran past its share of the time budget."""


# --------------------------------------------------------------------------------------------
# small helpers
# --------------------------------------------------------------------------------------------
def rel_err(a, b):
    """||a - b|| / ||b|| in float64 on the CPU (0 when both are zero)."""
    a = a.detach().to("cpu", torch.float64)
    b = b.detach().to("cpu", torch.float64)
    den = b.norm().item()
    num = (a - b).norm().item()
    return num / den if den > 0 else num


def max_rel_err(xs, ys):
    return max(rel_err(x, y) for x, y in zip(xs, ys))


def model_spec(sz, batch, impl="ours", **extra):
    """bench_train spec of the model size in ``sz``."""
    spec = dict(impl=impl, width=sz["width"], n_layers=sz["n_layers"], modes=sz["modes"],
                fc_dim=sz["fc_dim"], in_dim=sz["in_dim"], batch=batch, res=sz["res"],
                amp=False)
    spec.update(extra)
    return spec


def free_device_memory(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def hard_deadline(seconds):
    """Raise SectionTimeout in this (main) thread after ``seconds`` (SIGALRM)."""
    if seconds <= 0:
        raise SectionTimeout("no time left in the budget")

    def on_alarm(signum, frame):
        raise SectionTimeout(f"ran past its {seconds:.0f} s share of the budget")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------------------------
# 1. correctness
# --------------------------------------------------------------------------------------------
def forward_and_grads(model, x, y):
    """(output, [grad of every parameter]) of the summed squared error against y."""
    model.zero_grad(set_to_none=True)
    pred = model(x)
    (pred - y).square().sum().backward()
    return pred.detach(), [p.grad.detach().clone() for p in model.parameters()]


def check_fno(sz, device):
    """FNO forward + gradients on ``device`` vs the CPU (float32 and float64, same weights);
    bf16-autocast forward vs float32 on the device."""
    torch.manual_seed(0)
    b, n = sz["check_batch"], sz["res"]
    model_cpu, _ = bench_train.build_model(model_spec(sz, b))
    x = torch.randn(b, sz["in_dim"], n, n)
    y = torch.randn(b, 1, n, n)
    out_cpu, g_cpu = forward_and_grads(model_cpu, x, y)
    model64 = copy.deepcopy(model_cpu).double()
    out64, g64 = forward_and_grads(model64, x.double(), y.double())
    model_dev = copy.deepcopy(model_cpu).to(device)
    xd, yd = x.to(device), y.to(device)
    out_dev, g_dev = forward_and_grads(model_dev, xd, yd)
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
        out_bf16 = model_dev(xd)
    # train.py's compile=true path: the compiled model must compute what the eager one does
    # (fused kernels reorder sums: rounding-level differences only)
    try:
        compiled = torch.compile(model_dev, backend=sz["compile_backend"])
        out_comp, g_comp = forward_and_grads(compiled, xd, yd)
        comp = dict(compile_forward_vs_eager=rel_err(out_comp, out_dev),
                    compile_grad_vs_eager=max_rel_err(g_comp, g_dev))
    except Exception as e:  # a missing compiler toolchain must not hide the other checks
        comp = dict(compile_error=f"{type(e).__name__}: {' '.join(str(e).split())[:200]}")
    finally:
        torch._dynamo.reset()
    return dict(**comp, compile_backend=sz["compile_backend"],
                forward_dev_vs_cpu=rel_err(out_dev, out_cpu),
                grad_dev_vs_cpu=max_rel_err(g_dev, g_cpu),
                forward_dev_vs_f64=rel_err(out_dev, out64),
                grad_dev_vs_f64=max_rel_err(g_dev, g64),
                bf16_forward_vs_f32=rel_err(out_bf16.float(), out_dev),
                bf16_output_dtype=str(out_bf16.dtype).replace("torch.", ""),
                batch=b, n_params=sum(p.numel() for p in model_cpu.parameters()))


def check_fused_adam(sz, device):
    """One step of train.py's optimizer (fused Adam) on the device vs plain single-tensor Adam
    on the CPU, from the same weights and gradients: relative error of the update."""
    from utils.optim import build_optimizer
    torch.manual_seed(1)
    model_cpu, _ = bench_train.build_model(model_spec(sz, 1))
    model_dev = copy.deepcopy(model_cpu).to(device)
    for p, q in zip(model_cpu.parameters(), model_dev.parameters()):
        p.grad = torch.randn_like(p)
        q.grad = p.grad.to(device)
    before = [p.detach().clone() for p in model_cpu.parameters()]
    opt_dev = build_optimizer({"optimizer": "adam", "lr": 1e-3}, model_dev)
    opt_ref = torch.optim.Adam(model_cpu.parameters(), lr=1e-3, foreach=False, fused=False)
    for _ in range(2):                  # the second step uses the moment estimates
        opt_dev.step()
        opt_ref.step()
    upd_dev = [q.detach().cpu() - p0 for q, p0 in zip(model_dev.parameters(), before)]
    upd_ref = [p.detach() - p0 for p, p0 in zip(model_cpu.parameters(), before)]
    return dict(update_dev_vs_ref=max_rel_err(upd_dev, upd_ref),
                fused=bool(opt_dev.defaults.get("fused")))


def spectral_reference(x, weight, m1, m2):
    """SpectralConv2d's map by direct DFT sums (float64 / complex128, no FFT).

    x (B, Ci, H, W) real; weight (2*m1*m2, Ci, Co, 2) real (the layer's storage: row-corner
    major, rows [:m1] then [H-m1:], columns [:m2]) -> (B, Co, H, W):
    y[j, l] = 1/(HW) Re sum_{k in rows, q < m2} c_q (W X)[k, q] e^{+2 pi i (k j / H + q l / W)},
    X the 2-D DFT of x, c_q = 1 for q = 0 and q = W/2 (self-conjugate columns), else 2.
    """
    b, ci, h, w = x.shape
    co = weight.shape[2]
    dev = x.device
    rows = torch.cat([torch.arange(m1), torch.arange(h - m1, h)]).to(dev, torch.float64)
    cols = torch.arange(m2, device=dev, dtype=torch.float64)
    eh = torch.exp(-2j * math.pi * rows[:, None] * torch.arange(h, device=dev) / h)  # (2m1, H)
    ew = torch.exp(-2j * math.pi * cols[:, None] * torch.arange(w, device=dev) / w)  # (m2, W)
    spec = torch.einsum("kh,bchw,qw->bckq", eh, x.to(torch.complex128), ew)
    wc = torch.view_as_complex(weight.contiguous()).reshape(2 * m1, m2, ci, co)
    out = torch.einsum("bckq,kqco->bokq", spec, wc)
    c = torch.full((m2,), 2.0, dtype=torch.float64, device=dev)
    c[0] = 1.0
    if w % 2 == 0 and m2 == w // 2 + 1:
        c[-1] = 1.0
    return torch.einsum("kh,bokq,qw->bohw", eh.conj(), out * c, ew.conj()).real / (h * w)


def check_spectral(sz, device):
    """SpectralConv2d on the device (float32) vs spectral_reference (float64, same device):
    forward and the gradients of x and of the weight, for each (modes1, modes2) in sz."""
    from models.fno import SpectralConv2d
    d = sz["dft"]
    res = {}
    for m1, m2 in d["modes"]:
        torch.manual_seed(2)
        layer = SpectralConv2d(d["cin"], d["cout"], m1, m2).to(device)
        layer.weight.data.normal_()          # O(1) weights: all modes matter equally
        x = torch.randn(d["batch"], d["cin"], d["n"], d["n"], device=device, requires_grad=True)
        g = torch.randn(d["batch"], d["cout"], d["n"], d["n"], device=device)
        y = layer(x)
        gx, gw = torch.autograd.grad((y * g).sum(), (x, layer.weight))
        x64 = x.detach().double().requires_grad_()
        w64 = layer.weight.detach().double().requires_grad_()
        y64 = spectral_reference(x64, w64, m1, m2)
        gx64, gw64 = torch.autograd.grad((y64 * g.double()).sum(), (x64, w64))
        res[f"modes ({m1},{m2}) at {d['n']}x{d['n']}"] = dict(
            forward=rel_err(y, y64), grad_x=rel_err(gx, gx64), grad_w=rel_err(gw, gw64))
    return res


def section_correctness(ctx):
    sz, device = ctx.sz, ctx.device
    out = {}
    out["fno"] = check_fno(sz, device)
    out["adam"] = check_fused_adam(sz, device)
    out["spectral"] = check_spectral(sz, device)
    f, a = out["fno"], out["adam"]
    on = "cpu (dry: same device)" if device.type == "cpu" else str(device)
    ctx.row("correctness", f"FNO forward, {on} f32 vs cpu f32 (rel)",
            f["forward_dev_vs_cpu"], f"< {TOL['fno_f32']:g}",
            f["forward_dev_vs_cpu"] < TOL["fno_f32"])
    ctx.row("correctness", "FNO gradients, max over params (rel)", f["grad_dev_vs_cpu"],
            f"< {TOL['fno_f32']:g}", f["grad_dev_vs_cpu"] < TOL["fno_f32"])
    ctx.row("correctness", "FNO forward, f32 vs cpu float64 (rel)", f["forward_dev_vs_f64"],
            f"< {TOL['fno_f64']:g}", f["forward_dev_vs_f64"] < TOL["fno_f64"])
    ctx.row("correctness", "FNO gradients vs cpu float64 (rel)", f["grad_dev_vs_f64"],
            f"< {TOL['fno_f64']:g}", f["grad_dev_vs_f64"] < TOL["fno_f64"])
    ctx.row("correctness", "bf16 autocast forward vs f32 (rel)", f["bf16_forward_vs_f32"],
            f"< {TOL['bf16']:g}", f["bf16_forward_vs_f32"] < TOL["bf16"])
    compiled = f"torch.compile ({f['compile_backend']})"
    if "compile_error" in f:
        ctx.row("correctness", f"{compiled} vs eager", f["compile_error"], "runs", False)
    else:
        worst = max(f["compile_forward_vs_eager"], f["compile_grad_vs_eager"])
        ctx.row("correctness", f"{compiled} vs eager, forward/grads max (rel)", worst,
                f"< {TOL['fno_f32']:g}", worst < TOL["fno_f32"])
    ctx.row("correctness", f"train.py Adam (fused={a['fused']}) update vs plain Adam (rel)",
            a["update_dev_vs_ref"], f"< {TOL['adam']:g}", a["update_dev_vs_ref"] < TOL["adam"])
    for name, r in out["spectral"].items():
        worst = max(r.values())
        ctx.row("correctness", f"spectral layer vs direct DFT, {name}: fwd/dx/dw max (rel)",
                worst, f"< {TOL['spectral']:g}", worst < TOL["spectral"])
    return out


# --------------------------------------------------------------------------------------------
# 2. speed, peak memory, bandwidth bound
# --------------------------------------------------------------------------------------------
_NO_TRAFFIC = {"_unsafe_view", "_reshape_alias", "alias", "lift_fresh", "detach"}
_OVERWRITES = {"copy_", "fill_", "zero_"}     # write `self` without reading it


def _touched_bytes(t):
    """Bytes of the distinct elements a tensor addresses (broadcast dims counted once)."""
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided:
        return 0
    n = 1
    for size, stride in zip(t.shape, t.stride()):
        if stride != 0:
            n *= size
    return n * t.element_size()


def op_traffic(func, args, kwargs, out):
    """Bytes one aten op moves if it reads each tensor input once and writes each output (and
    each input its schema marks as mutated) once; views move nothing."""
    name = func.overloadpacket.__name__
    if func.is_view or name in _NO_TRAFFIC:
        return 0
    schema = func._schema
    moved = sum(_touched_bytes(t) for t in tree_leaves((args, kwargs)))
    if name in _OVERWRITES and args:
        moved -= _touched_bytes(args[0])
    named = dict(zip((a.name for a in schema.arguments), args))
    named.update(kwargs)
    for a in schema.arguments:
        if a.alias_info is not None and a.alias_info.is_write and a.name in named:
            moved += sum(_touched_bytes(t) for t in tree_leaves(named[a.name]))
    outs = (out,) if len(schema.returns) == 1 else tuple(out or ())
    for r, o in zip(schema.returns, outs):
        if r.alias_info is None:                       # a fresh tensor: written once
            moved += sum(_touched_bytes(t) for t in tree_leaves(o))
    return moved


class TrafficCounter(TorchDispatchMode):
    """Sums op_traffic over every aten op run inside it (forward, autograd backward, optimizer)."""

    def __init__(self):
        super().__init__()
        self.bytes = 0
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        self.bytes += op_traffic(func, args, kwargs, out)
        self.ops += 1
        return out


def step_traffic(step, forward):
    """(bytes of one training step, bytes of its forward alone), counted op by op in eager
    mode: the memory traffic the step needs if every kernel streams its operands once."""
    with TrafficCounter() as c_step:
        step()
    with torch.no_grad(), TrafficCounter() as c_fwd:
        forward()
    return c_step.bytes, c_fwd.bytes


def copy_bandwidth(device, mib):
    """Measured device-memory bandwidth (bytes/s) of a large tensor copy: read + write."""
    n = mib * 2 ** 20 // 4
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)
    bench_train.device_sync(device)
    reps, t0 = 0, time.perf_counter()
    while reps < 5 or time.perf_counter() - t0 < 0.2:
        dst.copy_(src)
        reps += 1
    bench_train.device_sync(device)
    bw = 2 * n * 4 * reps / (time.perf_counter() - t0)
    del src, dst
    free_device_memory(device)
    return bw


def spec_bandwidth(device):
    """Peak DRAM bandwidth from the device properties (bytes/s), None when not reported."""
    if device.type != "cuda":
        return None
    props = torch.cuda.get_device_properties(device)
    clock_khz = getattr(props, "memory_clock_rate", None)
    bus_bits = getattr(props, "memory_bus_width", None)
    if not clock_khz or not bus_bits:
        return None
    return 2.0 * clock_khz * 1e3 * bus_bits / 8          # double data rate


def measure_variant(ctx, spec, count_traffic):
    """Warm up and time the step of ``spec``; returns a result dict."""
    device, sz = ctx.device, ctx.sz
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(0)
    step, model, n_params = bench_train.make_train_step(spec, device)
    t0 = time.perf_counter()
    step()
    bench_train.device_sync(device)
    first_s = time.perf_counter() - t0              # includes torch.compile's compilation
    for _ in range(sz["warmup"] - 1):
        step()
    times = bench_train.timed_steps(step, sz["steps"], device)
    med = statistics.median(times)
    r = dict(step_s=med, step_s_min=min(times), samples_per_s=spec["batch"] / med,
             first_step_s=first_s, n_params=n_params, steps=len(times))
    r["peak_mem_gib"] = (torch.cuda.max_memory_allocated(device) / 2 ** 30
                         if device.type == "cuda" else None)
    if count_traffic:
        x = torch.randn(spec["batch"], sz["in_dim"], sz["res"], sz["res"], device=device)

        def forward():
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=spec["amp"]):
                model(x)

        r["step_bytes"], r["forward_bytes"] = step_traffic(step, forward)
        # the backward moves about twice the forward's bytes; much less means the counter
        # missed the autograd engine's thread: no bound then
        r["traffic_complete"] = r["step_bytes"] >= 2 * r["forward_bytes"]
    del step, model
    if spec.get("compile"):
        torch._dynamo.reset()
    free_device_memory(device)
    return r


def section_speed(ctx):
    sz, device = ctx.sz, ctx.device
    out = dict(copy_bandwidth=copy_bandwidth(device, sz["copy_mib"]),
               spec_bandwidth=spec_bandwidth(device), variants={})
    bw = out["copy_bandwidth"]
    neuralop = bench_train.have_neuralop()
    variants = {"f32": dict(), "bf16": dict(amp=True),
                "compile": dict(compile=sz["compile_backend"])}
    for batch in sorted(sz["batches"], reverse=True):    # the target size first
        for name, extra in list(variants.items()) + [("neuralop f32", None)]:
            key = f"b{batch} {name}"
            if name.startswith("neuralop") and not neuralop:
                out["variants"][key] = dict(skipped="neuraloperator not installed")
                continue
            if name == "compile" and batch not in sz["compile_batches"]:
                out["variants"][key] = dict(skipped="dry mode compiles one batch size")
                continue
            if name == "compile" and ctx.left() < sz["compile_reserve_s"]:
                out["variants"][key] = dict(skipped="time budget")
                continue
            if ctx.left() <= 0:
                out["variants"][key] = dict(skipped="time budget")
                continue
            if name.startswith("neuralop"):
                spec = model_spec(ctx.sz, batch, impl="neuralop")       # plain Adam: its
            else:                                                       # weights are complex
                spec = model_spec(ctx.sz, batch, trainer_optimizer=True, **extra)
            try:
                out["variants"][key] = measure_variant(ctx, spec, name in ("f32", "bf16"))
            except SectionTimeout:
                raise
            except Exception as e:  # one variant failing (e.g. compile) must not stop the rest
                out["variants"][key] = dict(error=f"{type(e).__name__}: {e}"[:300])
                free_device_memory(device)
            ctx.partial(out)
    # bandwidth bound of each variant: its eager traffic (compile: the f32 count) / copy bw
    for batch in sz["batches"]:
        for name in ("f32", "bf16", "compile"):
            r = out["variants"].get(f"b{batch} {name}", {})
            src = out["variants"].get(f"b{batch} {'bf16' if name == 'bf16' else 'f32'}", {})
            if "step_s" in r and src.get("traffic_complete"):
                r["bound_s"] = src["step_bytes"] / bw
                r["step_vs_bound"] = r["step_s"] / r["bound_s"]
    rows_speed(ctx, out)
    return out


def rows_speed(ctx, out):
    sz, cuda = ctx.sz, ctx.device.type == "cuda"
    bw = out["copy_bandwidth"]
    ctx.row("speed", "device copy bandwidth (measured, GB/s)", bw / 1e9, "", None)
    ctx.row("speed", "device peak bandwidth (properties, GB/s)",
            out["spec_bandwidth"] / 1e9 if out["spec_bandwidth"] else
            ("skipped: no CUDA" if not cuda else "not reported"), "", None)
    v = out["variants"]
    for batch in sz["batches"]:
        for name in ("f32", "bf16", "compile", "neuralop f32"):
            r = v.get(f"b{batch} {name}", {"skipped": "time budget"})
            label = f"batch {batch} {name}: samples/s"
            if "samples_per_s" not in r:
                ctx.row("speed", label, "skipped: " + r["skipped"] if "skipped" in r
                        else "error: " + r.get("error", "?"), "", None)
                continue
            mem = (f"{r['peak_mem_gib']:.2f} GiB" if r["peak_mem_gib"] is not None
                   else "skipped: no CUDA")
            extra = f" | peak {mem}"
            if "step_vs_bound" in r:
                extra += f" | {r['step_vs_bound']:.1f}x bound"
            if name == "compile":
                extra += f" | 1st step {r['first_step_s']:.1f} s"
            ctx.row("speed", label, f"{r['samples_per_s']:.1f}{extra}", "", None)
        f32, bf16 = v.get(f"b{batch} f32", {}), v.get(f"b{batch} bf16", {})
        nop, comp = v.get(f"b{batch} neuralop f32", {}), v.get(f"b{batch} compile", {})
        big = batch == max(sz["batches"])
        if "samples_per_s" in f32 and "samples_per_s" in bf16:
            s = bf16["samples_per_s"] / f32["samples_per_s"]
            ctx.row("speed", f"batch {batch}: bf16 / f32 step speed", s,
                    f">= {TARGETS['bf16_speedup']}" if big else "",
                    s >= TARGETS["bf16_speedup"] if big and cuda else None)
        if "samples_per_s" in f32 and "samples_per_s" in comp:
            ctx.row("speed", f"batch {batch}: compile / f32 step speed",
                    comp["samples_per_s"] / f32["samples_per_s"], "", None)
        if "samples_per_s" in f32:
            if "samples_per_s" in nop:
                s = f32["samples_per_s"] / nop["samples_per_s"]
                ctx.row("speed", f"batch {batch}: ours f32 / neuraloperator f32", s,
                        f">= {TARGETS['vs_neuralop']}", s >= TARGETS["vs_neuralop"])
            else:
                ctx.row("speed", f"batch {batch}: ours f32 / neuraloperator f32",
                        "skipped: " + nop.get("skipped", nop.get("error", "?")),
                        f">= {TARGETS['vs_neuralop']}", None)
        best = min((r["step_vs_bound"] for r in (f32, bf16, comp) if "step_vs_bound" in r),
                   default=None)
        if best is not None:
            ctx.row("speed", f"batch {batch}: best step / bandwidth bound", best,
                    f"<= {TARGETS['bound_ratio']}",
                    best <= TARGETS["bound_ratio"] if cuda else None)


# --------------------------------------------------------------------------------------------
# 3. the real run: generate data, train.py under torchrun, eval.py
# --------------------------------------------------------------------------------------------
def run_logged(cmd, log_path, timeout_s, extra_env):
    """Run ``cmd`` (own session) with output to log_path. Returns (exit code or None when it
    timed out, seconds). On timeout the process group gets SIGTERM (train.py checkpoints and
    stops), then SIGKILL after 30 s. extra_env: variables set for the command."""
    env = dict(os.environ, **extra_env)
    env.setdefault("WANDB_MODE", "disabled")
    t0 = time.perf_counter()
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        try:
            rc = proc.wait(timeout=max(timeout_s, 1))
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    return rc, time.perf_counter() - t0


def log_tail(path, n=5):
    with open(path) as f:
        return " / ".join(line.strip() for line in f.readlines()[-n:])


def section_run(ctx):
    from utils.h5io import dataset_path, scales_path
    sz = ctx.sz
    work = ctx.work_dir
    data, logs = os.path.join(work, "data"), os.path.join(work, "logs")
    os.makedirs(data)
    os.makedirs(logs)
    py = sys.executable
    out = dict(work_dir=work)
    # data on the CPUs (one generator process per core)
    n_total = sz["n_train"] + sz["n_val"] + sz["n_test"]
    workers = max(1, min(os.cpu_count() or 1, 16)) if ctx.mode == "full" else 1
    gen = [py, "utils/gen_data_poisson.py", "--ntrain", str(sz["n_train"]), "--nval",
           str(sz["n_val"]), "--ntest", str(sz["n_test"]), "--n", str(sz["res"]),
           "--datapath", data, "--e1", "1", "--e2", "5", "--sparse", "--seed", "0",
           "--workers", str(workers)]
    rc, secs = run_logged(gen, os.path.join(logs, "gen.log"), ctx.left() * 0.3, ctx.env)
    out["gen"] = dict(rc=rc, seconds=secs, samples=n_total, workers=workers,
                      samples_per_s=n_total / secs)
    ctx.row("run", f"generate {sz['n_train']}/{sz['n_val']}/{sz['n_test']} at "
            f"{sz['res']}x{sz['res']}, {workers} workers: samples/s",
            n_total / secs if rc == 0 else
            f"error: exit {rc}: {log_tail(os.path.join(logs, 'gen.log'))}", "",
            None if rc == 0 else False)
    if rc != 0:
        return out
    paths = {s: dataset_path(data, "poisson", s, 1, 5) for s in ("train", "val", "test")}
    paths["scales"] = scales_path(data, "poisson", 1, 5)
    rc, _ = run_logged([py, "utils/get_scale.py", paths["train"], "--out", paths["scales"]],
                       os.path.join(logs, "scales.log"), max(ctx.left(), 1), ctx.env)
    if rc != 0:
        ctx.row("run", "scales (utils/get_scale.py)", f"error: exit {rc}", "", False)
        return out
    # train.py through torchrun: one rank, nccl on CUDA (gloo on CPU)
    steps_per_epoch = sz["n_train"] // sz["run_batch"]
    epochs = max(1, math.ceil(sz["run_steps"] / steps_per_epoch))
    overrides = [f"train_path={paths['train']}", f"val_path={paths['val']}",
                 f"test_path={paths['test']}", f"scales_path={paths['scales']}",
                 f"max_epochs={epochs}", "log_to_wandb=false"] + sz["run_overrides"]
    common = ["--yaml_config", RUN_CONFIG_FILE, "--config", RUN_CONFIG, "--run_num",
              "gpu_check", "--root_dir", os.path.join(work, "results")]
    for o in overrides:
        common += ["--set", o]
    train = [py, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=1",
             "train.py"] + common
    eval_reserve = 30 if ctx.mode == "full" else 15
    rc, secs = run_logged(train, os.path.join(logs, "train.log"), ctx.left() - eval_reserve,
                          ctx.env)
    run = RunLayout.of(os.path.join(work, "results"), RUN_CONFIG, "gpu_check")
    out["train"] = t = dict(rc=rc, seconds=secs, epochs_planned=epochs,
                            steps_planned=epochs * steps_per_epoch, timed_out=rc is None)
    metrics = read_metrics(run.metrics)
    hp = read_yaml(run.hyperparams)
    t.update(dist_backend=hp.get("dist_backend"), world_size=hp.get("world_size"),
             global_batch=hp.get("global_batch_size"), epochs=len(metrics),
             iters=metrics[-1]["iters"] if metrics else 0)
    if rc != 0:
        what = "timed out (stopped by SIGTERM)" if rc is None else f"exit {rc}"
        ctx.row("run", "train.py under torchrun", f"error: {what}: "
                f"{log_tail(os.path.join(logs, 'train.log'))}"[:200], "", False)
    expect = "nccl" if ctx.device.type == "cuda" else "gloo"
    ctx.row("run", "train.py process group backend (ranks)",
            f"{t['dist_backend']} ({t['world_size']})", expect, t["dist_backend"] == expect)
    if metrics:
        # the first epoch pays one-off costs (allocator, FFT plans, loader start-up)
        steady = metrics[1:] if len(metrics) > 1 else metrics
        loop = statistics.median(m["train_samples_per_s"] for m in steady)
        t.update(loop_samples_per_s=loop, whole_run_samples_per_s=t["iters"] *
                 (t["global_batch"] or 0) / secs, final_val_rel_l2=metrics[-1]["val_rel_l2"])
        ctx.row("run", f"train.py, {t['iters']} steps in {t['epochs']} epochs: training loop "
                "samples/s", loop, "", None)
        ctx.row("run", "train.py whole process (start-up, val, checkpoints): samples/s",
                t["whole_run_samples_per_s"], "", None)
        # the loader alone, as the trainer builds it (same config, pinned memory on CUDA)
        params = load_run_params(common)
        from utils.data_utils import get_data_loader
        loader, _, sampler = get_data_loader(params, params.train_path, False, train=True)
        lsps = bench_train.loader_samples_per_s(loader, sampler, ctx.device)
        t.update(loader_samples_per_s=lsps, loader_headroom=lsps / loop,
                 loader_workers=loader.num_workers, pin_memory=loader.pin_memory)
        ctx.row("run", f"data loader ({loader.num_workers} workers, pin_memory="
                f"{loader.pin_memory}) / training loop", lsps / loop,
                f"> {TARGETS['loader_headroom']}", lsps / loop > TARGETS["loader_headroom"])
    best = run.best_ckpt
    if not os.path.isfile(best):
        ctx.row("run", "eval.py", "skipped: no checkpoint", "", False)
        return out
    eval_dir = os.path.join(work, "eval")
    rc, secs = run_logged([py, "eval.py"] + common + ["--weights", best, "--out_dir", eval_dir],
                          os.path.join(logs, "eval.log"), max(ctx.left(), 5), ctx.env)
    out["eval"] = e = dict(rc=rc, seconds=secs)
    if rc == 0:
        with open(os.path.join(eval_dir, "summary.json")) as f:
            s = json.load(f)
        e.update(test_rel_l2_mean=s["test_rel_l2_mean"], n_test=s["n_test"])
        ctx.row("run", f"eval.py: test rel L2 ({s['n_test']} samples, {secs:.1f} s)",
                s["test_rel_l2_mean"], "", None)
    else:
        ctx.row("run", "eval.py", f"error: exit {rc}: "
                f"{log_tail(os.path.join(logs, 'eval.log'))}"[:200], "", False)
    return out


def read_yaml(path):
    import yaml
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        return yaml.safe_load(f) or {}


def load_run_params(common):
    """The run's config exactly as train.py loads it (same arguments)."""
    import train
    return train.load_params(train.build_parser().parse_args(common))


# --------------------------------------------------------------------------------------------
# driver
# --------------------------------------------------------------------------------------------
class Context:
    """Shared state of one check: sizes, device, budget, the table and the JSON document."""

    def __init__(self, args, device):
        self.mode = "dry" if args.dry else "full"
        self.sz = SIZES[self.mode]
        self.device = device
        self.json_path = os.path.join(args.out, "gpu_check.json")
        self.work_dir = os.path.join(args.out, "work")
        self.t_end = time.perf_counter() + args.budget
        self.section_end = self.t_end
        self.current = None
        # dry mode: one thread everywhere; tiny ops on a shared CPU are much slower with more
        # (threads spin waiting for each other); the GPU run keeps the defaults
        self.env = {"OMP_NUM_THREADS": "1"} if args.dry else {}
        if args.dry:
            torch.set_num_threads(1)
        self.doc = dict(
            mode=self.mode, device=str(device),
            device_name=torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            torch=torch.__version__, cuda=torch.version.cuda,
            started_utc=datetime.datetime.now(datetime.timezone.utc).isoformat(
                timespec="seconds"),
            budget_s=args.budget, sizes={k: v for k, v in self.sz.items()}, tolerances=TOL,
            targets=TARGETS, sections={}, table=[])

    def left(self):
        return self.section_end - time.perf_counter()

    def row(self, section, check, value, target, ok):
        """One table row; ok True/False for checks and targets, None for plain figures."""
        if isinstance(value, float):
            value = f"{value:.3g}" if abs(value) < 1e3 else f"{value:,.0f}"
        if ok is None:
            status = ""
        elif "correctness" == section or section == "run" and not target:
            status = "ok" if ok else "FAIL"
        else:
            status = "met" if ok else ("FAIL" if section == "run" and target in ("nccl", "gloo")
                                       else "missed")
        self.doc["table"].append(dict(section=section, check=check, value=str(value),
                                      target=target, status=status))

    def partial(self, results):
        """Save a section's partial results (a later crash keeps them)."""
        self.doc["sections"][self.current] = dict(status="running", **results)
        self.save()

    def save(self):
        self.doc["table"].sort(key=lambda r: SECTION_ORDER.index(r["section"]))  # stable
        write_json_atomic(self.json_path, self.doc)



def compare_loop_with_step(ctx):
    """The training loop of the run against the bare f32 step of the speed section."""
    t = ctx.doc["sections"].get("run", {}).get("train", {})
    if "loop_samples_per_s" not in t:
        return
    label = f"training loop / bare f32 step at batch {t['global_batch']}"
    target = f">= {TARGETS['loop_vs_step']}"
    v = ctx.doc["sections"].get("speed", {}).get("variants", {})
    bare = v.get(f"b{t['global_batch']} f32", {}).get("samples_per_s")
    if not bare:
        ctx.row("run", label, "skipped: bare step not measured", target, None)
        return
    t["loop_vs_bare_step"] = ratio = t["loop_samples_per_s"] / bare
    ctx.row("run", label, ratio, target,
            ratio >= TARGETS["loop_vs_step"] if ctx.device.type == "cuda" else None)


def run_section(ctx, name, fn, shares_left):
    share = SECTION_SHARES[name] / shares_left
    remaining = ctx.t_end - time.perf_counter()
    ctx.section_end = time.perf_counter() + max(remaining * share, 0)
    ctx.current = name
    t0 = time.perf_counter()
    print(f"[gpu_check] {name}: {ctx.left():.0f} s", file=sys.stderr, flush=True)
    try:
        if name == "run":     # subprocesses with their own timeouts
            result = fn(ctx)
        else:
            with hard_deadline(ctx.left()):
                result = fn(ctx)
        status = "done"
    except SectionTimeout as e:
        result, status = {}, f"timed out: {e}"
    except Exception as e:   # keep the other sections' results
        result, status = {}, f"error: {type(e).__name__}: {e}"[:500]
    if status != "done":
        prev = ctx.doc["sections"].get(name, {})
        result = {k: v for k, v in prev.items() if k != "status"} | result
        ctx.row(name, "section", status, "", False)
        if name == "speed" and result.get("variants"):
            rows_speed(ctx, result)
    ctx.doc["sections"][name] = dict(status=status, seconds=time.perf_counter() - t0, **result)
    ctx.save()


def print_table(doc):
    rows = doc["table"]
    w = [max(len(str(r[k])) for r in rows + [dict(section="section", check="check",
                                                    value="value", target="target",
                                                    status="status")])
         for k in ("section", "check", "value", "target", "status")]
    head = (f"gpu_check ({doc['mode']}): {doc['device_name']} ({doc['device']}), torch "
            f"{doc['torch']}, CUDA {doc['cuda']}")
    print(head)
    line = "  ".join(f"{{:<{n}}}" for n in w)
    print(line.format("section", "check", "value", "target", "status"))
    print("  ".join("-" * n for n in w))
    for r in rows:
        print(line.format(r["section"], r["check"], r["value"], r["target"], r["status"]))
    secs = ", ".join(f"{k} {v['status'].split(':')[0]} in {v['seconds']:.1f} s"
                     for k, v in doc["sections"].items())
    print(f"sections: {secs}")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="results/gpu_check",
                   help="output folder: gpu_check.json and work/ (data, run, logs)")
    p.add_argument("--dry", action="store_true", help="CPU, tiny sizes (the tests run this)")
    p.add_argument("--budget", type=float, default=None,
                   help="seconds for all sections (default 280; dry 600, a safety net only)")
    p.add_argument("--sections", default="correctness,speed,run",
                   help="comma-separated subset of correctness,speed,run")
    p.add_argument("--overwrite", action="store_true",
                   help="replace gpu_check.json and work/ of a previous check in --out")
    args = p.parse_args(argv)
    if args.budget is None:
        args.budget = 600.0 if args.dry else 280.0
    if args.budget <= 0:
        raise UserError(f"--budget must be > 0, got {args.budget}")
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.sections if s not in SECTION_SHARES]
    if bad or not args.sections:
        raise UserError(f"--sections: unknown {bad or 'empty'} (use correctness,speed,run)")
    return args


def check_main(argv=None):
    args = parse_args(argv)
    if args.dry:
        device = torch.device("cpu")
    elif not torch.cuda.is_available():
        raise UserError("no CUDA device (torch.cuda.is_available() is False); "
                        "use --dry for the CPU dry run")
    else:
        device = torch.device("cuda:0")
    json_path = os.path.join(args.out, "gpu_check.json")
    work = os.path.join(args.out, "work")
    if not args.overwrite:
        for p in (json_path, work):
            if os.path.exists(p):
                raise UserError(f"{p} exists from a previous check; pass --overwrite "
                                f"or another --out")
    os.makedirs(args.out, exist_ok=True)
    if os.path.exists(work):
        shutil.rmtree(work)         # only our own work folder, with --overwrite
    ctx = Context(args, device)
    fns = dict(correctness=section_correctness, speed=section_speed, run=section_run)
    order = [s for s in SECTION_SHARES if s in args.sections]
    for i, name in enumerate(order):
        run_section(ctx, name, fns[name], sum(SECTION_SHARES[s] for s in order[i:]))
    compare_loop_with_step(ctx)
    ctx.doc["seconds"] = ctx.doc["budget_s"] - (ctx.t_end - time.perf_counter())
    ctx.save()
    print_table(ctx.doc)
    print(f"total {ctx.doc['seconds']:.1f} s; JSON: {ctx.json_path}")
    failed = any(r["status"] == "FAIL" for r in ctx.doc["table"]) or any(
        v["status"] != "done" for v in ctx.doc["sections"].values())
    sys.exit(1 if failed else 0)


def main(argv=None):
    import logging
    run_cli(check_main, argv, level=logging.WARNING)


if __name__ == "__main__":
    main()
