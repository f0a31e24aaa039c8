"""Training-step and data-loader throughput of the FNO, side by side in one run.

    python benchmarks/bench_train.py            # published size, CPU, ~5 min on 2 cores
    python benchmarks/bench_train.py --quick    # fewer rounds/steps, ~1-2 min
    python benchmarks/bench_train.py --json out.json

Measures (samples/s of forward + backward + Adam step, summed MSE loss):
  * our FNO (models/fno.py) vs neuraloperator's FNO of the same width, depth and retained
    modes (optional: `pip install neuraloperator`; skipped with a note when missing);
  * each with and without the glibc malloc fix (utils/malloc_tuning.py);
  * on CUDA (when available) also bf16 autocast vs float32;
  * the data loader (utils.data_utils.get_data_loader) over a temporary HDF5 file in the
    DESIGN.md format, against what the training step consumes.

Every model variant runs in its own fresh subprocess (allocator settings must be applied
before torch allocates anything and must not leak between variants); the parent runs the
variants alternately, `--rounds` times `--steps` steps each, so that machine noise hits all
of them alike, and reports the median step time.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)


class BenchError(Exception):
    """A user error (bad flag value) or a failed worker."""


# --------------------------------------------------------------------------------------------
# worker: one model variant in a fresh process
# --------------------------------------------------------------------------------------------
def build_model(spec):
    """Our FNO or neuraloperator's at the size in ``spec``; returns (model, n_real_params)."""
    import torch
    if spec["impl"] == "ours":
        from types import SimpleNamespace
        from models.fno import fno
        model = fno(SimpleNamespace(
            layers=[spec["width"]] * (spec["n_layers"] + 1), modes1=spec["modes"],
            modes2=spec["modes"], fc_dim=spec["fc_dim"], in_dim=spec["in_dim"], out_dim=1))
    else:
        from neuralop.models import FNO
        # neuraloperator counts both signs in n_modes and keeps n_modes[-1]//2 + 1 columns of
        # the rfft: (2m, 2(m-1)) retains rows -m..m-1 and columns 0..m-1, exactly our modes.
        m = spec["modes"]
        model = FNO(n_modes=(2 * m, 2 * (m - 1)), in_channels=spec["in_dim"], out_channels=1,
                    hidden_channels=spec["width"], n_layers=spec["n_layers"],
                    lifting_channel_ratio=0,                       # one Linear lift, as ours
                    projection_channel_ratio=spec["fc_dim"] / spec["width"],  # fc_dim MLP
                    positional_embedding=None, use_channel_mlp=False, fno_skip="linear")
    n_params = sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters())
    return model, n_params


def make_train_step(spec, device):
    """One training step of the model in ``spec`` on ``device``, as the benchmarks time it.

    spec: impl ("ours" | "neuralop"), width, n_layers, modes, fc_dim, in_dim, batch, res,
    amp (bf16 autocast), optional trainer_optimizer (train.py's fused Adam instead of plain
    Adam) and compile (torch.compile the model; True or the name of a compile backend). The batch is random: x (batch, in_dim, res,
    res), y (batch, 1, res, res). Returns (step, model, n_params); step() runs forward,
    summed MSE loss, backward and the optimizer step.
    """
    import torch
    device = torch.device(device)
    model, n_params = build_model(spec)
    model = model.to(device)
    if spec.get("trainer_optimizer"):
        from utils.optim import build_optimizer   # what train.py uses (fused Adam)
        opt = build_optimizer({"optimizer": "adam", "lr": 1e-3}, model)
    else:
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)   # plain Adam for both models
    backend = spec.get("compile")
    if backend:
        run = torch.compile(model, **({"backend": backend} if isinstance(backend, str) else {}))
    else:
        run = model
    b, n = spec["batch"], spec["res"]
    x = torch.randn(b, spec["in_dim"], n, n, device=device)
    y = torch.randn(b, 1, n, n, device=device)
    use_amp = bool(spec["amp"])

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            pred = run(x)
        loss = (pred.float() - y).square().sum()
        loss.backward()
        opt.step()

    return step, model, n_params


def device_sync(device):
    """Wait for the device's queued work (CUDA kernels run asynchronously)."""
    import torch
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def timed_steps(step, n, device):
    """Seconds of each of ``n`` calls of ``step()``, the device synchronised after each."""
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        step()
        device_sync(device)
        times.append(time.perf_counter() - t0)
    return times


def worker_main(spec):
    """Protocol on stdin/stdout: prints READY {json}; on 'RUN n' runs n timed steps and prints
    TIMES [seconds...]; exits on EOF or 'QUIT'."""
    if spec["malloc_fix"]:
        from utils.malloc_tuning import configure_malloc
        if not configure_malloc():
            raise BenchError("malloc fix requested but not applied (not glibc, or opted out)")
    import torch
    if spec["threads"]:
        torch.set_num_threads(spec["threads"])
    torch.manual_seed(0)
    step, _, n_params = make_train_step(spec, spec["device"])
    for _ in range(spec["warmup"]):
        step()
    device_sync(spec["device"])
    print("READY " + json.dumps({"n_params": n_params, "threads": torch.get_num_threads()}),
          flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "QUIT":
            break
        print("TIMES " + json.dumps(timed_steps(step, int(cmd[1]), spec["device"])),
              flush=True)


class Worker:
    """Parent-side handle of one variant's subprocess."""

    def __init__(self, name, spec):
        self.name, self.spec, self.times = name, spec, []
        env = {k: v for k, v in os.environ.items()
               if k not in ("GLIBC_TUNABLES", "FNO_NO_MALLOC_TUNING")}
        if not spec["malloc_fix"]:
            env["FNO_NO_MALLOC_TUNING"] = "1"
        self.proc = subprocess.Popen(
            [sys.executable, "-u", os.path.abspath(__file__), "--_worker", json.dumps(spec)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env, cwd=REPO_ROOT)
        self.info = json.loads(self._expect("READY"))

    def _expect(self, tag):
        for line in self.proc.stdout:
            if line.startswith(tag + " "):
                return line[len(tag) + 1:]
        raise BenchError(f"benchmark worker '{self.name}' failed (exit code {self.proc.wait()})")

    def run(self, steps):
        self.proc.stdin.write(f"RUN {steps}\n")
        self.proc.stdin.flush()
        self.times += json.loads(self._expect("TIMES"))

    def close(self):
        if self.proc.poll() is None:
            try:
                self.proc.stdin.write("QUIT\n")
                self.proc.stdin.close()
            except (BrokenPipeError, OSError):
                pass
            self.proc.wait(timeout=60)


# --------------------------------------------------------------------------------------------
# data loader
# --------------------------------------------------------------------------------------------
def write_design_h5(path, n_samples, n, k=3, seed=0):
    """A Poisson-like split in the DESIGN.md section 4 format (random fields), plus scales."""
    import h5py
    import numpy as np
    rng = np.random.default_rng(seed)
    with h5py.File(path, "w") as f:
        fields = f.create_dataset("fields", (n_samples, 2, n, n), dtype="<f4",
                                  chunks=(1, 2, n, n))
        for start in range(0, n_samples, 64):  # bounded memory
            stop = min(start + 64, n_samples)
            fields[start:stop] = rng.standard_normal((stop - start, 2, n, n), dtype=np.float32)
        f.create_dataset("tensor", data=rng.uniform(0.01, 0.05, (n_samples, k)).astype("<f4"))
        f.attrs.update(pde="poisson", split="train", n=n, n_samples=n_samples)
    scales = np.array([1e-3] + [0.03] * k + [1.0, 1.0, 1.0])  # [source, t.., sol, Lx, Ly]
    np.save(os.path.splitext(path)[0] + "_scales.npy", scales)
    return os.path.splitext(path)[0] + "_scales.npy"


class _Params(dict):
    """Minimal params object (attribute access + get) for get_data_loader."""

    __getattr__ = dict.__getitem__


def loader_throughput(args, workers, tmpdir):
    """samples/s of one pass over the temporary file (after one warm-up batch)."""
    from utils.data_utils import get_data_loader
    path = os.path.join(tmpdir, "poisson_train_k1_5.h5")
    scales = os.path.splitext(path)[0] + "_scales.npy"
    if not os.path.exists(path):
        write_design_h5(path, args.loader_samples, args.res)
    params = _Params(in_dim=4, out_dim=1, scales_path=scales, train_path=path, Lx=1.0, Ly=1.0,
                     batch_size=args.batch, valid_batch_size=args.batch, subsample=1,
                     in_memory=False, num_data_workers=workers, seed=0)
    loader, _, sampler = get_data_loader(params, path, distributed=False, train=True)
    return loader_samples_per_s(loader, sampler)


def loader_samples_per_s(loader, sampler, device=None):
    """samples/s of one epoch of a training loader (after one warm-up batch); with ``device``
    each batch is also copied there as the trainer does (non-blocking from pinned memory)."""
    sampler.set_epoch(0)
    it = iter(loader)
    next(it)                                  # worker start-up and file open not counted
    count, t0 = 0, time.perf_counter()
    for x, y in it:
        if device is not None:
            x = x.to(device, non_blocking=True)
            y = y.to(device, non_blocking=True)
        count += x.shape[0]
    if device is not None:
        device_sync(device)
    return count / (time.perf_counter() - t0)


# --------------------------------------------------------------------------------------------
# parent
# --------------------------------------------------------------------------------------------
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=8, help="batch size (default 8, CPU-sized)")
    p.add_argument("--res", type=int, default=128, help="grid n x n (default 128)")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--modes", type=int, default=32, help="modes1 = modes2 (ours)")
    p.add_argument("--layers", type=int, default=4, help="number of Fourier layers")
    p.add_argument("--fc-dim", type=int, default=128)
    p.add_argument("--in-dim", type=int, default=4, help="Poisson: f + 3 coefficients")
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    p.add_argument("--steps", type=int, default=3, help="timed steps per variant per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per variant")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--loader-samples", type=int, default=256,
                   help="samples in the temporary HDF5 file for the loader test")
    p.add_argument("--loader-workers", default="0,1",
                   help="comma-separated num_data_workers values to measure")
    p.add_argument("--no-neuralop", action="store_true", help="skip neuraloperator")
    p.add_argument("--no-loader", action="store_true", help="skip the data-loader test")
    p.add_argument("--quick", action="store_true", help="2 rounds x 2 steps, 1 warm-up")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--_worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.quick:
        args.rounds, args.steps, args.warmup = 2, 2, 1
        args.loader_samples = min(args.loader_samples, 96)
    for name in ("batch", "res", "width", "modes", "layers", "fc_dim", "in_dim", "rounds",
                 "steps", "loader_samples"):
        if getattr(args, name) < 1:
            raise BenchError(f"--{name.replace('_', '-')} must be >= 1")
    if 2 * args.modes > args.res:
        raise BenchError(f"--modes {args.modes} needs --res >= {2 * args.modes}")
    try:
        args.loader_workers = [int(w) for w in args.loader_workers.split(",") if w.strip()]
    except ValueError:
        raise BenchError(f"--loader-workers must be comma-separated integers, "
                         f"got {args.loader_workers!r}") from None
    return args


def have_neuralop():
    try:
        import neuralop  # noqa: F401
        return True
    except Exception:  # ImportError, or a broken install of its dependencies
        return False


def variant_specs(args, device):
    base = dict(batch=args.batch, res=args.res, width=args.width, modes=args.modes,
                n_layers=args.layers, fc_dim=args.fc_dim, in_dim=args.in_dim,
                warmup=args.warmup, threads=args.threads, device=device, amp=False)
    impls = ["ours"] + ([] if args.no_neuralop or not have_neuralop() else ["neuralop"])
    specs = {}
    for impl in impls:
        if device == "cpu":
            for fix in (True, False):
                name = f"{impl} ({'malloc fix' if fix else 'glibc default'})"
                specs[name] = dict(base, impl=impl, malloc_fix=fix)
        else:
            for amp in (False, True):
                name = f"{impl} ({'bf16 autocast' if amp else 'float32'})"
                specs[name] = dict(base, impl=impl, malloc_fix=True, amp=amp)
    # our training step exactly as train.py runs it (allocator setting + fused Adam)
    specs["ours (as train.py)"] = dict(base, impl="ours", malloc_fix=True, trainer_optimizer=True)
    return specs


def run_models(args, specs):
    workers = {}
    try:
        for name, spec in specs.items():
            print(f"  starting {name} ...", file=sys.stderr, flush=True)
            workers[name] = Worker(name, spec)
        names = list(workers)
        for r in range(args.rounds):
            order = names[r % len(names):] + names[:r % len(names)]  # rotate: no position bias
            for name in order:
                workers[name].run(args.steps)
            print(f"  round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)
    finally:
        for w in workers.values():
            w.close()
    results = {}
    for name, w in workers.items():
        med = statistics.median(w.times)
        results[name] = dict(n_params=w.info["n_params"], threads=w.info["threads"],
                             step_s_median=med, step_s_min=min(w.times),
                             samples_per_s=args.batch / med, steps=len(w.times))
    return results


def ratio(results, a, b):
    if a in results and b in results:
        return results[a]["samples_per_s"] / results[b]["samples_per_s"]
    return None


def main(argv=None):
    try:
        args = parse_args(argv)
        if args._worker:
            worker_main(json.loads(args._worker))
            return
        import torch
        device = args.device
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device == "cuda" and not torch.cuda.is_available():
            raise BenchError("--device cuda but torch.cuda is not available")
        specs = variant_specs(args, device)
        results = run_models(args, specs)

        out = {"config": {k: v for k, v in vars(args).items() if not k.startswith("_")},
               "device": device, "models": results, "ratios": {}, "loader": {}}
        if device == "cpu":
            pairs = {"ours / neuraloperator (malloc fix)":
                     ("ours (malloc fix)", "neuralop (malloc fix)"),
                     "ours / neuraloperator (glibc default)":
                     ("ours (glibc default)", "neuralop (glibc default)"),
                     "malloc fix speed-up, ours": ("ours (malloc fix)", "ours (glibc default)"),
                     "malloc fix speed-up, neuraloperator":
                     ("neuralop (malloc fix)", "neuralop (glibc default)"),
                     "fused Adam speed-up, ours (as train.py)":
                     ("ours (as train.py)", "ours (malloc fix)")}
            train_name = "ours (as train.py)"
        else:
            pairs = {"ours / neuraloperator (float32)": ("ours (float32)", "neuralop (float32)"),
                     "bf16 / float32, ours": ("ours (bf16 autocast)", "ours (float32)"),
                     "bf16 / float32, neuraloperator":
                     ("neuralop (bf16 autocast)", "neuralop (float32)"),
                     "fused Adam speed-up, ours (as train.py)":
                     ("ours (as train.py)", "ours (float32)")}
            train_name = "ours (as train.py)"
        for label, (a, b) in pairs.items():
            r = ratio(results, a, b)
            if r is not None:
                out["ratios"][label] = r

        if not args.no_loader:
            consumption = results[train_name]["samples_per_s"]
            with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
                for nw in args.loader_workers:
                    sps = loader_throughput(args, nw, tmp)
                    out["loader"][f"num_data_workers={nw}"] = dict(
                        samples_per_s=sps, vs_training=sps / consumption)
        print_report(args, out, train_name)
        if args.json:
            from utils.fileio import write_json_atomic
            write_json_atomic(args.json, out)
    except BenchError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)


def print_report(args, out, train_name):
    import torch
    results = out["models"]
    threads = next(iter(results.values()))["threads"]
    print(f"\nFNO training step (forward + backward + Adam), device {out['device']}"
          f"{f' ({threads} threads)' if out['device'] == 'cpu' else ''}, torch {torch.__version__}")
    print(f"batch {args.batch}, {args.res}x{args.res}, width {args.width}, modes {args.modes} "
          f"(rows -{args.modes}..{args.modes - 1} x cols 0..{args.modes - 1}), {args.layers} "
          f"layers, fc_dim {args.fc_dim}, in_dim {args.in_dim}; {args.rounds} interleaved "
          f"rounds x {args.steps} steps")
    if "neuralop (malloc fix)" not in results and "neuralop (float32)" not in results:
        print("(neuraloperator not measured: pip install neuraloperator)")
    ref = results[train_name]["samples_per_s"]
    print(f"\n{'variant':<28}{'params':>12}{'step s (med)':>14}{'step s (min)':>14}"
          f"{'samples/s':>11}{'vs ' + train_name.split(' (')[0]:>9}")
    for name, r in results.items():
        print(f"{name:<28}{r['n_params']:>12,}{r['step_s_median']:>14.3f}{r['step_s_min']:>14.3f}"
              f"{r['samples_per_s']:>11.2f}{r['samples_per_s'] / ref:>9.2f}")
    if out["ratios"]:
        print()
        for label, r in out["ratios"].items():
            print(f"{label:<42}{r:>6.2f}x")
    if out["loader"]:
        print(f"\ndata loader, {args.loader_samples} samples at {args.res}x{args.res}, batch "
              f"{args.batch} (training consumes {ref:.1f} samples/s: {train_name})")
        for label, r in out["loader"].items():
            print(f"{label:<28}{r['samples_per_s']:>10.1f} samples/s {r['vs_training']:>8.1f}x "
                  f"training")


if __name__ == "__main__":
    main()
