#!/usr/bin/env python
"""Generation throughput: the project's CLIs vs a straightforward per-sample implementation.

    python benchmarks/bench_gen_data.py                   # n = 128, 8192/512/512 samples per PDE
    python benchmarks/bench_gen_data.py --ntrain 32768 --pdes poisson   # the memory claim

For each PDE, in one run:
- reference: the same recipe written the straightforward way (as published): a Python loop
  over samples, each of the ng Gaussians evaluated on the full grid, one complex FFT solve per
  sample; AD finds lambda per sample with a scalar root finder (brentq), each evaluation a
  full solve and the physical-space ratio; Helmholtz redraws whole samples while max|u| > 2.
  It runs in this process on one core, on --nref samples (it is slow), and reports samples/s.
- project: the whole CLI (`python utils/gen_data_*.py`, start-up, three splits and the
  HDF5 writes included) in a subprocess with --workers; samples/s over all three splits, and
  the peak resident memory of the process tree (sum over processes, polled every 20 ms).
Output files go to a temporary directory that is removed afterwards.
"""
import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
from scipy.optimize import brentq

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPTS = {"poisson": ("gen_data_poisson.py", ["--e1", "1", "--e2", "5"]),
           "ad": ("gen_data_advdiff.py", ["--adr1", "0.2", "--adr2", "1"]),
           "helmholtz": ("gen_data_helmholtz.py", ["--o1", "1", "--o2", "10"])}


# --- the straightforward per-sample reference ----------------------------------------------------

class Reference:
    """Per-sample generator of DESIGN section 3 (deliberately unvectorised)."""

    def __init__(self, n=128, ng=144, seed=0):
        self.n, self.ng = n, ng
        self.rng = np.random.default_rng(seed)
        x = np.arange(n) / n
        self.X, self.Y = np.meshgrid(x, x)
        k = np.fft.fftfreq(n, 1.0 / n)
        self.ikx = (2j * np.pi * k)[None, :] * np.ones((n, 1))
        self.iky = (2j * np.pi * k)[:, None] * np.ones((1, n))
        sigma, m = 1 / 32, int(np.sqrt(ng))
        c = 0.5 + (np.arange(m) - (m - 1) / 2) * 2 * sigma
        self.centres = [(cx, cy) for cy in c for cx in c]
        self.sigma = sigma

    def source(self, vf, centre=True):
        p = np.zeros(self.ng)
        for i in range(self.ng):
            if self.rng.random() > vf:
                p[i] = 1e-3 + (1 - 1e-3) * self.rng.random()
        if not p.any():
            p[self.rng.integers(self.ng)] = 1e-3 + (1 - 1e-3) * self.rng.random()
        f = np.zeros((self.n, self.n))
        for (cx, cy), a in zip(self.centres, p):
            f += a * np.exp(-((self.X - cx) ** 2 + (self.Y - cy) ** 2) / (2 * self.sigma ** 2))
        f /= f.max()
        return f - f.mean() if centre else f

    def tensor(self, e1, e2):
        e = self.rng.uniform(e1, e2)
        th = self.rng.uniform(0, 2 * np.pi)
        R = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        K = 0.01 * R.T @ np.diag([1, e]) @ R
        return K

    def solve(self, f, sym):
        f_hat = np.fft.fft2(f)
        u_hat = np.where(sym == 0, 0, f_hat / np.where(sym == 0, 1, sym))
        return np.real(np.fft.ifft2(u_hat))

    def diff_sym(self, K):
        return -(K[0, 0] * self.ikx ** 2 + K[1, 1] * self.iky ** 2
                 + 2 * K[0, 1] * self.ikx * self.iky)

    def d(self, u, ik):
        return np.real(np.fft.ifft2(ik * np.fft.fft2(u)))

    def poisson(self, vf):
        f = self.source(vf)
        K = self.tensor(1, 5)
        return f, self.solve(f, self.diff_sym(K)), K

    def ad(self, vf):
        f = self.source(vf)
        K = self.tensor(1, 5)
        th = self.rng.uniform(0, 2 * np.pi)
        v = np.array([np.cos(th), np.sin(th)])
        r = self.rng.uniform(0.2, 1)

        def ratio(lam):
            Ks, vs = (1 - lam) * K, lam * v
            u = self.solve(f, self.diff_sym(Ks) + vs[0] * self.ikx + vs[1] * self.iky)
            ux, uy = self.d(u, self.ikx), self.d(u, self.iky)
            qx, qy = Ks[0, 0] * ux + Ks[0, 1] * uy, Ks[0, 1] * ux + Ks[1, 1] * uy
            div = self.d(qx, self.ikx) + self.d(qy, self.iky)
            return np.linalg.norm(vs[0] * ux + vs[1] * uy) / np.linalg.norm(div), u

        lam = brentq(lambda lam: ratio(lam)[0] - r, 1e-6, 1 - 1e-6, rtol=1e-6)
        achieved, u = ratio(lam)
        return f, u, K, achieved

    def helmholtz(self, vf):
        while True:
            f = self.source(vf, centre=False)
            om = self.rng.integers(1, 11)
            u = self.solve(f, -0.01 * (self.ikx ** 2 + self.iky ** 2) - om)
            if np.abs(u).max() <= 2:
                return f, u, om


def bench_reference(pde, n, nref):
    ref = Reference(n)
    fn = getattr(ref, pde)
    vfs = [0.2, 0.4, 0.6, 0.8]
    fn(0.4)                                          # warm-up
    t0, c0 = time.perf_counter(), time.process_time()
    for i in range(nref):
        fn(vfs[i % 4])
    return nref / (time.perf_counter() - t0), (time.process_time() - c0) / nref


# --- the project's CLI ---------------------------------------------------------------------------

def tree_rss_kb(pid):
    """Resident memory (kB) of pid and its descendants, from /proc (Linux)."""
    total, stack = 0, [pid]
    while stack:
        p = stack.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next(int(l.split()[1]) for l in fh if l.startswith("VmRSS"))
            with open(f"/proc/{p}/task/{p}/children") as fh:
                stack += [int(c) for c in fh.read().split()]
        except (OSError, StopIteration):
            pass
    return total


def bench_cli(pde, n, ntrain, nval, ntest, workers, datadir):
    script, rng_flags = SCRIPTS[pde]
    cmd = [sys.executable, os.path.join(REPO, "utils", script), "--ntrain", str(ntrain),
           "--nval", str(nval), "--ntest", str(ntest), "--n", str(n), "--sparse",
           "--datapath", datadir, "--workers", str(workers), "--overwrite", *rng_flags]
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_rss_kb(proc.pid))
        time.sleep(0.02)
    dt = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)   # includes the worker processes
    cpu = (r1.ru_utime + r1.ru_stime) - (r0.ru_utime + r0.ru_stime)
    if proc.returncode:
        raise SystemExit(f"error: {' '.join(cmd)} failed: {proc.stderr.read().strip()}")
    for f in os.listdir(datadir):
        os.remove(os.path.join(datadir, f))
    total = ntrain + nval + ntest
    return total / dt, dt, cpu / total, peak / 1024


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--ntrain", type=int, default=8192, help="train samples of the CLI run")
    p.add_argument("--nval", type=int, default=512)
    p.add_argument("--ntest", type=int, default=512)
    p.add_argument("--nref", type=int, default=32, help="samples of the reference loop")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2, help="best of this many runs per side")
    p.add_argument("--pdes", nargs="+", default=["poisson", "ad", "helmholtz"],
                   choices=list(SCRIPTS))
    p.add_argument("--tmpdir", default=None, help="where to write (default: system temp)")
    args = p.parse_args()
    print(f"n = {args.n}, CLI: {args.ntrain}/{args.nval}/{args.ntest} samples, "
          f"--workers {args.workers}; reference: {args.nref} samples, 1 process; "
          f"{os.cpu_count()} CPUs; best of {args.repeat} runs")
    print(f"load average at start: {os.getloadavg()[0]:.1f} (other jobs slow the wall-clock "
          "figures; the CPU-time columns are less sensitive)")
    print(f"{'pde':10s} {'ref/s':>8s} {'CLI/s':>8s} {'ratio':>7s} | {'ref ms':>7s} "
          f"{'CLI ms':>7s} {'ratio':>7s} | {'CLI wall':>8s} {'peak RSS':>9s}")
    print(f"{'':10s} {'(wall-clock samples/s)':>25s} | {'(CPU ms per sample)':>23s} |")
    with tempfile.TemporaryDirectory(dir=args.tmpdir) as d:
        for pde in args.pdes:
            # best of --repeat runs on both sides (other jobs on the machine add noise)
            refs = [bench_reference(pde, args.n, args.nref) for _ in range(args.repeat)]
            ref, ref_cpu = max(r[0] for r in refs), min(r[1] for r in refs)
            clis = [bench_cli(pde, args.n, args.ntrain, args.nval, args.ntest, args.workers, d)
                    for _ in range(args.repeat)]
            fast, dt = max(c[0] for c in clis), min(c[1] for c in clis)
            cpu, peak = min(c[2] for c in clis), max(c[3] for c in clis)
            print(f"{pde:10s} {ref:8.1f} {fast:8.0f} {fast / ref:6.1f}x | {ref_cpu * 1e3:7.2f} "
                  f"{cpu * 1e3:7.3f} {ref_cpu / cpu:6.1f}x | {dt:7.1f}s {peak:7.0f}MB",
                  flush=True)


if __name__ == "__main__":
    main()
