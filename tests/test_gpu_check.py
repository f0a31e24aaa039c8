"""benchmarks/gpu_check.py: the CPU dry mode end to end, and the checks it is made of."""
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from tests.conftest import REPO_ROOT

sys.path.insert(0, os.path.join(REPO_ROOT, "benchmarks"))
import gpu_check  # noqa: E402

SCRIPT = os.path.join(REPO_ROOT, "benchmarks", "gpu_check.py")


def run_script(*args, timeout=600):
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def dry_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    res = run_script("--dry", "--out", str(out))
    return out, res


def test_dry_run_end_to_end(dry_run):
    out, res = dry_run
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    doc = json.loads((out / "gpu_check.json").read_text())
    assert doc["mode"] == "dry" and doc["device"] == "cpu"
    assert {k: v["status"] for k, v in doc["sections"].items()} == dict(
        correctness="done", run="done", speed="done")
    # the printed table is the JSON's table
    assert "gpu_check (dry)" in res.stdout
    for row in doc["table"]:
        assert row["check"] in res.stdout
    assert not [r for r in doc["table"] if r["status"] == "FAIL"]

    # 1. correctness: real numbers (float32 vs float64 differ by rounding, not by 0 or O(1))
    c = doc["sections"]["correctness"]
    for name in ("forward_dev_vs_f64", "grad_dev_vs_f64"):
        assert 0 < c["fno"][name] < 1e-5, name
    assert 0 < c["fno"]["bf16_forward_vs_f32"] < 1e-2
    assert c["fno"]["bf16_output_dtype"] == "bfloat16"     # autocast really ran in bf16
    # the compiled model (aot_eager on CPU) computes what the eager one does, to rounding
    assert c["fno"]["compile_forward_vs_eager"] < 1e-5
    assert c["fno"]["compile_grad_vs_eager"] < 1e-5
    assert c["adam"]["fused"] is True and c["adam"]["update_dev_vs_ref"] < 1e-5
    assert len(c["spectral"]) == 2
    for errs in c["spectral"].values():
        assert set(errs) == {"forward", "grad_x", "grad_w"}
        for e in errs.values():
            assert 0 < e < 1e-5

    # 2. speed: every non-neuraloperator variant measured, with traffic and bound
    s = doc["sections"]["speed"]
    assert s["copy_bandwidth"] > 0 and s["spec_bandwidth"] is None
    v = s["variants"]
    for key in ("b2 f32", "b2 bf16", "b8 f32", "b8 bf16", "b8 compile"):
        assert v[key]["samples_per_s"] > 0, key
        assert v[key]["peak_mem_gib"] is None                      # no CUDA
        assert v[key]["bound_s"] > 0 and v[key]["step_vs_bound"] > 0
    assert v["b8 f32"]["traffic_complete"]
    # traffic grows with the batch (activations) on top of a fixed part (weights, Adam)
    assert v["b2 f32"]["step_bytes"] < v["b8 f32"]["step_bytes"] < 4 * v["b2 f32"]["step_bytes"]
    assert "skipped" in v["b2 compile"]
    if not gpu_check.bench_train.have_neuralop():
        assert v["b8 neuralop f32"] == {"skipped": "neuraloperator not installed"}
    assert any(r["value"] == "skipped: no CUDA" for r in doc["table"])

    # 3. the run: torchrun with a gloo group of one rank, train.py then eval.py
    r = doc["sections"]["run"]
    t = r["train"]
    assert t["rc"] == 0 and t["dist_backend"] == "gloo" and t["world_size"] == 1
    assert t["iters"] == t["steps_planned"] == 16
    assert t["loop_samples_per_s"] > 0 and t["loader_headroom"] > 0
    assert t["loop_vs_bare_step"] > 0
    assert r["eval"]["rc"] == 0 and r["eval"]["n_test"] == 16
    assert math.isfinite(r["eval"]["test_rel_l2_mean"])


def test_existing_output_is_not_overwritten(dry_run):
    out, _ = dry_run
    before = (out / "gpu_check.json").read_text()
    res = run_script("--dry", "--out", str(out), timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "--overwrite" in res.stderr
    assert (out / "gpu_check.json").read_text() == before


def test_no_cuda_without_dry_is_a_user_error(tmp_path):
    res = run_script("--out", str(tmp_path / "o"), timeout=120)
    assert res.returncode == 2
    assert res.stderr.strip() == ("error: no CUDA device (torch.cuda.is_available() is False); "
                                  "use --dry for the CPU dry run")
    assert not (tmp_path / "o").exists()


def _worst_spectral_error():
    errs = gpu_check.check_spectral(gpu_check.SIZES["dry"], torch.device("cpu"))
    return max(max(e.values()) for e in errs.values())


def test_spectral_check_passes_on_the_layer():
    assert _worst_spectral_error() < 1e-5


@pytest.mark.parametrize("breakage", ["edge weights of the rfft adjoint", "rfft scaling"])
def test_spectral_check_detects_a_broken_layer(monkeypatch, breakage):
    import models.fno as fno
    if breakage == "edge weights of the rfft adjoint":   # backward only
        real = fno._edge_mask
        monkeypatch.setattr(fno, "_edge_mask",
                            lambda m, n, inner, edge, like: real(m, n, inner, inner, like))
    else:                                                 # forward: wrong normalisation
        def forward(ctx, x, m):
            ctx.n, ctx.m = x.shape[-1], m
            return torch.fft.rfft(x, dim=-1, norm="ortho")[..., :m]
        monkeypatch.setattr(fno._RFFTLast, "forward", staticmethod(forward))
    assert _worst_spectral_error() > 1e-2


def test_traffic_counter_counts_bytes_once_per_operand():
    x = torch.randn(1000)
    y = torch.empty(1000)
    with gpu_check.TrafficCounter() as c:
        y.copy_(x)                        # read x, write y
    assert c.bytes == 2 * 4000
    with gpu_check.TrafficCounter() as c:
        x.view(10, 100).t()               # views move nothing
    assert c.bytes == 0
    with gpu_check.TrafficCounter() as c:
        torch.ones(10, 1).expand(10, 100) + torch.ones(10, 100)  # 10 + 1000 read, 1000 written
    assert c.bytes == 4 * (10 + 1000 + 1000) + 4 * (10 + 1000)   # + the two ones() fills
