"""The study designs as data (utils/study_spec.py) and their driver (utils/study.py).

- every question under every preset issues commands whose configs exist and whose data
  paths are the files its own data step writes (a dry run: no training);
- the override semantics of run_study.sh's variables and the two budgets of question 4;
- the paper preset rehearsed: every question with PRESET=paper end to end at a tiny size
  (32 x 32, 16 samples, 1 epoch of 2 steps, model 2:4), so that every config name, data path,
  sweep file and analysis step of the paper-scale commands runs once on CPU.
"""
import csv
import io
import json
import os
import shlex
import subprocess
import time

import pytest
import yaml

from tests.helpers import copy_study_code
from utils.YParams import YParams
from utils.errors import UserError
from utils.h5io import dataset_path, scales_path
from utils.study import Study, resolve
from utils.study_spec import PRESETS, QUESTIONS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PATH_KEYS = ("train_path", "val_path", "test_path", "scales_path")


def dry_run(tmp_path, **overrides):
    """The commands of one study (resolve + Study.run with dry_run), as lists of words."""
    out = io.StringIO()
    opt = resolve({"root": str(tmp_path / "root"), **overrides})
    Study(opt, dry_run=True, out=out).run()
    return [shlex.split(line) for line in out.getvalue().splitlines()]


def arg(cmd, flag):
    return cmd[cmd.index(flag) + 1] if flag in cmd else None


def generated_files(cmds):
    """Every data file the run_gen_data.sh commands of a dry run write (names from h5io)."""
    files = set()
    for cmd in cmds:
        if "run_gen_data.sh" not in cmd:
            continue
        env = dict(w.split("=", 1) for w in cmd if "=" in w and not w.startswith("-"))
        data = env.get("DATA_DIR", "data/paper")     # run_gen_data.sh's paper preset folder
        pde = env["PDES"]
        lo, hi = map(float, env["POISSON_RANGES"].split(","))
        files |= {dataset_path(data, pde, s, lo, hi) for s in ("train", "val", "test")}
        files.add(scales_path(data, pde, lo, hi))
    return files


@pytest.mark.parametrize("preset", sorted(PRESETS))
@pytest.mark.parametrize("study", sorted(QUESTIONS))
def test_every_config_exists_and_reads_the_generated_data(study, preset, tmp_path,
                                                          monkeypatch):
    monkeypatch.chdir(REPO)
    cmds = dry_run(tmp_path, study=study, preset=preset, mixed_budgets="steps epochs")
    files = generated_files(cmds)
    files |= {arg(c, "--out") for c in cmds if "utils/mixed_data.py" in c}
    assert files
    configs = {(arg(c, "--yaml_config"), arg(c, "--config")) for c in cmds if "--config" in c}
    assert configs
    for yaml, name in sorted(configs):
        params = YParams(yaml, name)                  # ConfigError if the name is not there
        for key in PATH_KEYS:
            paths = params[key] if isinstance(params[key], list) else [params[key]]
            for p in paths:
                assert os.path.relpath(p, REPO) in files, (name, key, p)
    for cmd in cmds:
        if "utils/sweeps.py" in cmd:
            assert os.path.isfile(arg(cmd, "--sweep"))
    assert "utils/scaling_plots.py" in cmds[-1]


def test_overrides_follow_run_study_variables(tmp_path, monkeypatch):
    monkeypatch.chdir(REPO)
    opt = resolve({"study": "shifts", "seeds": "", "jobs": "", "n_train": ""})
    assert (opt["seeds"], opt["jobs"], opt["n_train"]) == ("", "2", "")   # ${X-d} vs ${X:-d}
    assert resolve({"study": ""})["study"] == "headline"
    for bad, msg in [({"study": "q5"}, "STUDY must be"), ({"preset": "gpu"}, "PRESET must"),
                     ({"mixed_budgets": "steps days"}, "MIXED_BUDGETS must"),
                     ({"roots": "x"}, "unknown study override"),
                     ({"extra_set": "max_epochs=1"}, "EXTRA_SET max_epochs has no effect")]:
        with pytest.raises(UserError, match=msg):
            resolve(bad)
    # with a step cap of its own, or without a step cap in the preset, max_epochs is used
    resolve({"extra_set": "max_epochs=1 max_steps=4"})
    resolve({"extra_set": "max_epochs=1", "preset": "paper"})
    resolve({"extra_set": "max_epochs=1", "study_set": "", "pt_set": ""})
    sweep = next(c for c in dry_run(tmp_path, study="sizes", sizes="2:4", seeds="")
                 if "utils/sweeps.py" in c)
    assert "seed=0,1,2" not in sweep and "n_train=8,32,128,512,1024,2048,4096" in sweep


@pytest.mark.parametrize("key,value,msg", [
    ("shifts", "foo", "SHIFTS must be a list of LO,HI"), ("shifts", "10,5", "SHIFTS must"),
    ("sizes", "2:x", "SIZES must"), ("sizes", "0:4", "SIZES must"), ("size1", "8", "SIZE1"),
    ("targets", "abc", "TARGETS must"), ("targets", "-1", "TARGETS must"),
    ("seeds", "0,a", "SEEDS must"), ("n_train", "8,,32", "N_TRAIN must"),
    ("n_train", "-5", "N_TRAIN must"), ("subsamples", "0", "SUBSAMPLES must"),
    ("jobs", "0", "JOBS must"), ("jobs", "2 3", "JOBS must"), ("lrs", "1e-3,nan", "LRS must"),
    ("extend_lr", "-1", "EXTEND_LR must"), ("mixed_epochs", "x", "MIXED_EPOCHS must"),
    ("pt_sizes", "16 8", "PT_SIZES must be three"), ("down_sizes", "a b c", "DOWN_SIZES"),
    ("pt_set", "max_steps", "PT_SET: --set expects key=value"),
    ("study_set", "lr=abc", "STUDY_SET: lr must be a number"),
    ("extra_set", "foo=1", "unknown key 'foo' in EXTRA_SET")])
def test_bad_study_variables_are_one_line_before_any_run(key, value, msg):
    """Each variable in its format at resolve() (no command is issued): a bad value would
    otherwise stop the study at the first step that reads it, after hours of runs."""
    with pytest.raises(UserError, match=msg):
        resolve({"study": "shifts", key: value})


def test_question_4_two_budgets(tmp_path, monkeypatch):
    """Q4 as two entries: the mixed model at the steps of one single-PDE model (default,
    today's runs) and at the single-PDE epochs over the union (3x the steps)."""
    monkeypatch.chdir(REPO)

    def mixed_training(cmds):
        return {arg(c, "--run_num"): c[-1] for c in cmds
                if "train.py" in c and arg(c, "--config") == "mixed-cpu32-pt"}

    default = dry_run(tmp_path, study="mixed")
    # the cpu preset's converged protocol: the budgets are step caps, the single-PDE cap of
    # PT_SET and 3x it
    assert mixed_training(default) == {"m8w16": "max_steps=36000"}
    both = dry_run(tmp_path, study="mixed", mixed_budgets="steps epochs")
    assert mixed_training(both) == {"m8w16": "max_steps=36000",
                                    "m8w16_epochs": "max_steps=108000"}
    # a fixed-epoch protocol (no step cap in PT_SET): epochs, 8 (MIXED_EPOCHS) and 24
    fixed = dry_run(tmp_path, study="mixed", mixed_budgets="steps epochs", pt_set="",
                    mixed_epochs="8")
    assert mixed_training(fixed) == {"m8w16": "max_epochs=8", "m8w16_epochs": "max_epochs=24"}
    assert mixed_training(dry_run(tmp_path, study="mixed", pt_set="max_steps=500")) == {
        "m8w16": "max_steps=500"}
    with pytest.raises(UserError, match="PT_SET: max_steps must be an integer"):
        dry_run(tmp_path, study="mixed", pt_set="max_steps=lots")
    names = [arg(c, "--name") for c in both if "utils/sweeps.py" in c]
    assert "study_cpu_mixed_epochs_helm-o10_20_m8w16" in names
    assert "study_cpu_mixed_helm-o10_20_m8w16" in names
    plots = both[-1]
    assert any(a.endswith("approach=finetune-mixed-epochs") for a in plots)
    same_steps = [c for c in both[:-1] if not any(w in " ".join(c) for w in (
        "m8w16_epochs", "mixed_epochs"))]
    assert default[:-1] == same_steps


def test_paper_preset_rehearsed_end_to_end(tmp_path):
    """Every question with PRESET=paper: its configs, data paths (data/paper, written by
    run_gen_data.sh's paper preset), the published sweep file (subsample grid) and every
    analysis step, at a tiny size; questions share one results root as on a cluster. The
    configs of the shifts not run here are checked by the dry run above. The Poisson
    questions and physics run side by side (they share no run), then mixed (it reuses both)."""
    src = tmp_path / "src"
    src.mkdir()
    copy_study_code(src)
    out = tmp_path / "out"
    env = {**os.environ, "WANDB_MODE": "disabled", "OMP_NUM_THREADS": "1", "PRESET": "paper",
           # run_gen_data.sh's own variables: 32 x 32, 16/8/8 samples
           "N": "32", "NTRAIN": "16", "NVAL": "8", "NTEST": "8", "WORKERS": "1",
           "SIZE1": "2:4", "SUBSAMPLES": "2", "LRS": "1e-3", "MIXED_EPOCHS": "1",
           "LOSSES": "mse", "OUT": str(out),
           "EXTRA_SET": "max_epochs=1 batch_size=8 valid_batch_size=8 num_data_workers=0"}
    script = str(src / "run_study.sh")

    def chain(*studies):
        """One process running the studies one after another (bash -e)."""
        steps = "; ".join(f"{assign} STUDY={study} bash {script}" for study, assign in studies)
        return subprocess.Popen(["bash", "-ec", steps], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)

    start = time.time()
    chains = [chain(("headline", "SIZES=2:4"), ("shifts", "SHIFTS=10,20"),
                    ("sizes", "SIZES='2:4 2:8'")), chain(("physics", ""))]
    for c in chains:
        log = c.communicate(timeout=1800)[0]
        assert c.returncode == 0, log[-4000:]
    last = chain(("mixed", ""))
    log = last.communicate(timeout=1800)[0]
    assert last.returncode == 0, log[-4000:]
    print(f"paper rehearsal: {time.time() - start:.0f} s")
    tags = {"poisson": ("k1_5", "k5_10", "k10_20"), "ad": ("adr0p2_1", "adr1_2"),
            "helmholtz": ("o1_10", "o10_20")}
    assert sorted(os.listdir(src / "data" / "paper")) == sorted(
        [f"{pde}_{split}_{tag}.h5" for pde in tags for tag in tags[pde]
         for split in ("train", "val", "test")] +
        [f"{pde}_train_{tag}_scales.npy" for pde in tags for tag in tags[pde]] +
        ["mixed_train_scales.npy"])

    def selected(prefix):
        with open(out / f"{prefix}_selected.csv") as f:
            return {(r["model"], r["approach"]) for r in csv.DictReader(f)}

    assert selected("study_paper") == {("K 5-10 m2w4", "finetune"), ("K 5-10 m2w4", "scratch")}
    assert {m for m, _ in selected("study_paper_shifts")} == {"K 10-20"}
    assert selected("study_paper_sizes") == {(m, a) for m in ("m2w4", "m2w8")
                                            for a in ("finetune", "scratch")}
    assert (out / "study_paper_sizes_vs_params.png").is_file()
    assert {m for m, _ in selected("study_paper_physics")} == {"AD 1-2 mse",
                                                               "Helmholtz 10-20 mse"}
    assert {a for _, a in selected("study_paper_mixed")} == {"finetune", "scratch",
                                                             "finetune-mixed"}
    for prefix in ("study_paper", "study_paper_shifts", "study_paper_sizes",
                   "study_paper_physics", "study_paper_mixed"):
        assert (out / f"{prefix}_data_scaling.png").is_file()
    # the published sweep file's subsample grid was used (subsample 2 of 16 examples)
    sweep = src / "results" / "sweeps" / "study_paper_poisson_k10_20_m2w4_scratch"
    assert os.listdir(sweep / "expts" / "poisson-scratch-k10_20") == ["lr1em3_s2"]


def test_room_for_longer_n_ranges(tmp_path, monkeypatch):
    """A question can carry its own n range and downstream split sizes (issue: n up to 4096);
    a smaller train split already on disk is refused instead of silently capping n."""
    import dataclasses

    import utils.study_spec as spec
    from tests.helpers import write_poisson_set

    monkeypatch.chdir(tmp_path)          # data/study32 of this test only
    long = dataclasses.replace(spec.QUESTIONS["sizes"], n_train={"cpu": "8,64,512,4096"},
                               down_sizes={"cpu": "5120 64 256"})
    monkeypatch.setitem(spec.QUESTIONS, "sizes", long)
    cmds = dry_run(tmp_path, study="sizes", sizes="2:4")
    down = next(c for c in cmds if "POISSON_RANGES=5,10" in c)
    assert "NTRAIN=5120" in down
    assert "n_train=8,64,512,4096" in next(c for c in cmds if "utils/sweeps.py" in c)
    write_poisson_set(str(tmp_path / "data" / "study32"), n=16, sizes=(32, 8, 8), tag="k5_10")
    with pytest.raises(UserError, match="has 32 samples but the design asks for 5120"):
        dry_run(tmp_path, study="sizes", sizes="2:4")


def test_scratch_ascent_first_and_fine_tuned_on_its_n(tmp_path, monkeypatch):
    """The from-scratch sweep runs first with --stop_at_error = the smallest target; the
    fine-tuned sweep then runs the n values the from-scratch ascent ran (its ascent.json;
    the full range before it ran). lr_search and pt_set per preset, LR_SEARCH checked."""

    monkeypatch.chdir(REPO)
    cmds = dry_run(tmp_path, study="headline", pt_set="max_epochs=30 lr=1e-3",
                   extra_set="max_epochs=1 max_steps=0")
    sweeps = [c for c in cmds if "utils/sweeps.py" in c]
    assert [arg(c, "--tag") for c in sweeps] == ["approach=scratch", "approach=finetune"]
    assert arg(sweeps[0], "--stop_at_error") == "0.05" and "--stop_at_error" not in sweeps[1]
    assert {arg(c, "--lr_search") for c in sweeps} == {"seeded"}
    assert "n_train=8,32,128,512,1024,2048,4096" in sweeps[1]
    # pre-training only: its own budget, then EXTRA_SET (wins)
    pt = next(c for c in cmds if "train.py" in c)
    assert " ".join(pt).count("--set") == 4 and pt.index("max_epochs=30") < pt.index(
        "max_epochs=1")
    assert all("max_epochs=30" not in c for c in sweeps)
    # the analysis lists the fine-tuned curve first, as before
    assert [a.rsplit("=", 1)[1] for a in cmds[-1] if "@model=" in a] == ["finetune", "scratch"]
    # after the from-scratch ascent stopped at n 64: the fine-tuned sweep runs 8, 32, 64
    scratch = tmp_path / "root" / "sweeps" / arg(sweeps[0], "--name")
    scratch.mkdir(parents=True)
    (scratch / "ascent.json").write_text(json.dumps({"n_key": "n_train",
                                                     "n_values": [8, 32, 64]}))
    ft = [c for c in dry_run(tmp_path, study="headline") if "utils/sweeps.py" in c][1]
    values = [ft[i + 1] for i, w in enumerate(ft) if w == "--values"]
    assert [v for v in values if v.startswith("n_train")] == ["n_train=8,32,64"]
    paper = dry_run(tmp_path, study="headline", preset="paper")
    assert {arg(c, "--lr_search") for c in paper if "utils/sweeps.py" in c} == {"grid"}
    assert resolve({"lr_search": "seeded", "preset": "paper"})["lr_search"] == "seeded"
    with pytest.raises(UserError, match="LR_SEARCH must be grid or seeded"):
        resolve({"lr_search": "bayes"})


def test_step_cap_grows_with_n(tmp_path, monkeypatch):
    """The cpu preset's step caps per n (STEP_CAPS_DOWN) reach every downstream sweep as
    --set_for flags of the n it runs; they need the budget's step cap; paper has none."""

    monkeypatch.chdir(REPO)

    def set_for(cmd):
        return [tuple(cmd[i + 1:i + 3]) for i, w in enumerate(cmd) if w == "--set_for"]

    sweeps = [c for c in dry_run(tmp_path, study="physics") if "utils/sweeps.py" in c]
    assert len(sweeps) == 8      # 2 transfers x 2 losses x (scratch, fine-tuned)
    assert all(set_for(c) == [("n_train=4096", "max_steps=60000")] for c in sweeps)
    # after the from-scratch ascent stopped at n 64 the fine-tuned sweep runs no n = 4096
    mixed = [c for c in dry_run(tmp_path, study="mixed", step_caps="32:500 4096:40000")
             if "utils/sweeps.py" in c]
    assert {tuple(set_for(c)) for c in mixed} == {
        (("n_train=32", "max_steps=500"), ("n_train=4096", "max_steps=40000"))}
    scratch = tmp_path / "root" / "sweeps" / arg(sweeps[0], "--name")
    scratch.mkdir(parents=True)
    (scratch / "ascent.json").write_text(json.dumps({"n_key": "n_train",
                                                     "n_values": [8, 32, 64]}))
    ft = [c for c in dry_run(tmp_path, study="physics") if "utils/sweeps.py" in c][1]
    assert "n_train=8,32,64" in ft and set_for(ft) == []
    # a fixed-epoch budget, EXTRA_SET's cap or no n_train range: the preset's caps drop out
    for over in (dict(study_set="max_epochs=8"), dict(extra_set="max_steps=2"),
                 dict(n_train="", subsamples="1,2")):
        assert not any("--set_for" in c for c in dry_run(tmp_path, study="physics", **over))
    assert not any("--set_for" in c for c in dry_run(tmp_path, study="physics",
                                                     preset="paper"))
    for over, msg in [(dict(step_caps="4096"), "STEP_CAPS must be N:STEPS"),
                      (dict(step_caps="4096:0"), "STEP_CAPS must be N:STEPS"),
                      (dict(step_caps="4096:9", study_set="max_epochs=8"), "needs one there")]:
        with pytest.raises(UserError, match=msg):
            resolve(over)


def pretraining_on_disk(tmp_path):
    """(train.py command, run directory made on disk, its --set settings as values) of the
    pre-training of the (1,5) -> (5,10) shift study rooted in tmp_path."""
    cmds = dry_run(tmp_path, study="shifts", shifts="5,10")
    pt = next(c for c in cmds if "train.py" in c)
    run_dir = tmp_path / "root" / "expts" / arg(pt, "--config") / arg(pt, "--run_num")
    run_dir.mkdir(parents=True)
    sets = dict(w.split("=", 1) for i, w in enumerate(pt) if pt[i - 1] == "--set")
    return pt, run_dir, {k: yaml.safe_load(v) for k, v in sets.items()}


def test_finished_pretraining_must_match_the_settings(tmp_path, monkeypatch):
    """A pre-training run on disk trained under other settings than the study's PT_SET (here
    an older stopping rule) is refused with one line instead of being reused; one trained
    with them (and the size) passes, and so does a run not on disk yet."""
    monkeypatch.chdir(REPO)
    pt, run_dir, hp = pretraining_on_disk(tmp_path)
    (run_dir / "hyperparams.yaml").write_text(yaml.safe_dump(dict(hp, train_path="/x.h5")))
    dry_run(tmp_path, study="shifts", shifts="5,10")             # the same settings: fine
    (run_dir / "hyperparams.yaml").write_text(yaml.safe_dump(dict(hp, early_stop_patience=99)))
    with pytest.raises(UserError, match="was trained with early_stop_patience=99, the study "
                                        f"now asks for {hp['early_stop_patience']}"):
        dry_run(tmp_path, study="shifts", shifts="5,10")
    del hp["max_steps"]        # a key the run did not record: the schema default (0) differs
    (run_dir / "hyperparams.yaml").write_text(yaml.safe_dump(hp))
    with pytest.raises(UserError, match="max_steps=0"):
        dry_run(tmp_path, study="shifts", shifts="5,10")


def test_stale_evaluations_are_run_again(tmp_path, monkeypatch):
    """An evaluation on disk (zero-shot, the pre-training's own) is skipped by the driver
    while it is newer than the weights it evaluated; once the weights are newer (trained on,
    retrained) the driver runs it again instead of reporting the old numbers."""
    monkeypatch.chdir(REPO)
    cmds = dry_run(tmp_path, study="shifts", shifts="5,10")
    zs_cmd = next(c for c in cmds if "eval.py" in c and arg(c, "--run_num") == "zeroshot")
    pt_eval = next(c for c in cmds if "eval.py" in c and arg(c, "--run_num") != "zeroshot")
    weights = arg(zs_cmd, "--weights")
    run_dir = os.path.dirname(os.path.dirname(weights))
    summaries = [os.path.join(arg(zs_cmd, "--out_dir"), "summary.json"),
                 os.path.join(run_dir, "eval", "summary.json")]
    for path in [weights, *summaries]:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write("{}")
    with open(os.path.join(run_dir, "train_summary.json"), "w") as f:    # a finished run
        json.dump(dict(iters=100, stopped_early=True), f)

    def evals():
        return [c for c in dry_run(tmp_path, study="shifts", shifts="5,10") if "eval.py" in c]

    os.utime(weights, (time.time() - 60, time.time() - 60))      # evaluated after training
    assert evals() == []
    os.utime(weights, (time.time() + 60, time.time() + 60))      # trained since
    assert evals() == [pt_eval, zs_cmd]


def test_capped_pretraining_trains_on_to_a_raised_cap(tmp_path, monkeypatch):
    """PT_SET's max_steps may rise over a run on disk: a run that ended at its old cap trains
    on (train.py resumes it), a converged one (stopped early) is kept; a lower cap than the
    run trained with is refused like any other changed setting."""
    monkeypatch.chdir(REPO)
    pt, run_dir, hp = pretraining_on_disk(tmp_path)
    cap = hp["max_steps"]
    (run_dir / "hyperparams.yaml").write_text(yaml.safe_dump(hp))
    pt_set = resolve({"root": str(tmp_path / "root")})["pt_set"]

    def trains(**summary):
        (run_dir / "train_summary.json").write_text(json.dumps(summary))
        return [c for c in dry_run(tmp_path, study="shifts", shifts="5,10",
                                   pt_set=pt_set.replace(f"max_steps={cap}",
                                                         f"max_steps={2 * cap}"))
                if "train.py" in c]

    assert trains(iters=cap, stopped_early=False, capped_while_improving=True) == [
        pt[:pt.index("max_steps=" + str(cap))] + [f"max_steps={2 * cap}"]
        + pt[pt.index("max_steps=" + str(cap)) + 1:]]
    # ... and its evaluations follow it even where the files on disk look fresh
    (run_dir / "eval").mkdir()
    (run_dir / "eval" / "summary.json").write_text("{}")     # no weights file: "fresh"
    after = dry_run(tmp_path, study="shifts", shifts="5,10",
                    pt_set=pt_set.replace(f"max_steps={cap}", f"max_steps={2 * cap}"))
    assert [arg(c, "--run_num") for c in after if "eval.py" in c] == [arg(pt, "--run_num"),
                                                                      "zeroshot"]
    assert trains(iters=cap // 2, stopped_early=True, capped_while_improving=False) == []
    assert trains(iters=2 * cap, stopped_early=False, capped_while_improving=True) == []
    # the same cap: a finished run is done however it ended
    (run_dir / "train_summary.json").write_text(json.dumps(dict(iters=cap, stopped_early=False)))
    assert not any("train.py" in c for c in dry_run(tmp_path, study="shifts", shifts="5,10"))
    # a summary that is not one: one line, not a traceback
    (run_dir / "train_summary.json").write_text(json.dumps(dict(iters="many")))
    with pytest.raises(UserError, match="is not a train summary"):
        dry_run(tmp_path, study="shifts", shifts="5,10")
    with pytest.raises(UserError, match=f"was trained with max_steps={cap}, the study now "
                                        f"asks for {cap // 2}"):
        dry_run(tmp_path, study="shifts", shifts="5,10",
                pt_set=pt_set.replace(f"max_steps={cap}", f"max_steps={cap // 2}"))