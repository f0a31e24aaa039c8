"""run_study.sh, the one-command study driver, end to end in a smoke setting (tiny data and
budgets), in a copy of the code so that its data and results stay in tmp_path; then the
same command again: everything is found finished, nothing is trained twice."""
import csv
import os
import subprocess

from tests.helpers import copy_study_code


def _run(src, env):
    p = subprocess.run(["bash", os.path.join(src, "run_study.sh")], env=env,
                       capture_output=True, text=True, timeout=1800)   # a loaded machine
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    return p


def test_study_driver_smoke_and_resume(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    copy_study_code(src)
    root, out = tmp_path / "res", tmp_path / "out"
    # EXTRA_SET's max_steps wins over the cpu preset's step caps (PT_SET, STUDY_SET), which
    # would otherwise train every run to convergence (minutes even at 16 samples)
    env = {**os.environ, "WANDB_MODE": "disabled", "STUDY": "sizes", "SIZES": "2:4",
           "PT_SIZES": "16 8 8", "DOWN_SIZES": "16 8 8", "SEEDS": "0", "N_TRAIN": "4",
           "LRS": "1e-3", "EXTEND_LR": "0", "EXTRA_SET": "max_epochs=1 min_steps=0 max_steps=4",
           "JOBS": "2", "TARGETS": "0.5", "ROOT": str(root), "OUT": str(out)}
    _run(src, env)

    with open(out / "study_cpu_sizes_selected.csv") as f:
        sel = {(r["model"], r["approach"], r["n_train"]): r for r in csv.DictReader(f)}
    assert set(sel) == {("m2w4", "finetune", "4"), ("m2w4", "scratch", "4")}
    assert all(r["n_seeds"] == "1" for r in sel.values())
    with open(out / "study_cpu_sizes_zero_shot.csv") as f:
        assert [r["model"] for r in csv.DictReader(f)] == ["m2w4"]
    assert (out / "study_cpu_sizes_data_scaling.png").is_file()
    # the fine-tuned trials started from the pre-trained weights of this size
    ckpt = root / "expts" / "poisson-cpu32-pt-k1_5" / "m2w4" / "checkpoints" / "ckpt_best.tar"
    sweep = root / "sweeps" / "study_cpu_poisson_k5_10_m2w4_finetune"
    assert f"pretrained={ckpt}" in (sweep / "sweep.json").read_text().replace('"', "")

    # rerun: resumes to "all done" without training anything again
    trials = sorted((root / "sweeps").glob("*/expts/*/*/train_summary.json")) + [ckpt]
    assert len(trials) == 1 + 2
    stamps = [p.stat().st_mtime_ns for p in trials]
    _run(src, env)
    assert [p.stat().st_mtime_ns for p in trials] == stamps
