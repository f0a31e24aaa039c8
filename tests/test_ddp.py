"""DDP exactness: 2 gloo processes (torchrun) == 1 process with the same global batch."""
import json
import os
import subprocess
import sys

import torch

from tests.helpers import child_pids, tiny_config, write_poisson_set
from utils.YParams import REPO_ROOT


# Marks each process that runs Python's exit handlers: a launched rank must skip them (it
# ends with os._exit once its work is written; train.exit_launched_rank says why).
EXIT_MARKER = """import atexit, os
atexit.register(lambda: open(os.path.join(os.environ["EXIT_MARK_DIR"],
                f"{os.environ.get('RANK', 'none')}-{os.getpid()}"), "w").close())
"""


def run(cmd, tmp_path):
    site = tmp_path / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(EXIT_MARKER)
    # faulthandler: a rank that aborts prints its Python stack (where, if it ever happens)
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1",
               PYTHONFAULTHANDLER="1", PYTHONPATH=str(site), EXIT_MARK_DIR=str(site))
    res = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    return res


def test_two_ranks_equal_one_process(tmp_path):
    # 44 training samples: the last partial batch is dropped identically in both settings;
    # 15 validation samples: uneven shards, metrics must still be exact averages.
    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(44, 15, 8))
    cfg = tiny_config(tmp_path, data, batch_size=8, valid_batch_size=4, max_epochs=2, lr=1e-3,
                      optimizer="sgd")  # SGD: a wrong gradient scale would show (Adam hides it)
    args = ["train.py", "--yaml_config", cfg, "--config", "tiny", "--root_dir", str(tmp_path / "res")]
    run([sys.executable, *args, "--run_num", "one"], tmp_path)
    assert [p.name.split("-")[0] for p in (tmp_path / "site").glob("*-*")] == ["none"]
    run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         *args, "--run_num", "two"], tmp_path)
    # the single process exited normally, torchrun's agent too; ranks 0 and 1 took os._exit
    marks = sorted(p.name.split("-")[0] for p in (tmp_path / "site").glob("*-*"))
    assert marks == ["none", "none"], marks
    ck = {r: torch.load(tmp_path / f"res/expts/tiny/{r}/checkpoints/ckpt.tar", weights_only=False)
          for r in ("one", "two")}
    assert ck["one"]["iters"] == ck["two"]["iters"] == 2 * (44 // 8)
    assert ck["two"]["world_size"] == 2
    max_diff = 0.0
    for k, v in ck["one"]["model_state"].items():
        assert not k.startswith("module.")
        max_diff = max(max_diff, (v - ck["two"]["model_state"][k]).abs().max().item())
    print('max |param difference|', max_diff)
    assert max_diff < 1e-5, max_diff
    m = {r: [json.loads(l) for l in open(tmp_path / f"res/expts/tiny/{r}/metrics.jsonl")]
         for r in ("one", "two")}
    for a, b in zip(m["one"], m["two"]):
        for key in ("train_loss", "val_loss", "val_rel_l2"):
            assert abs(a[key] - b[key]) <= 1e-5 * abs(a[key]), (key, a[key], b[key])
    hp = open(tmp_path / "res/expts/tiny/two/hyperparams.yaml").read()
    assert "local_batch_size: 4" in hp and "global_batch_size: 8" in hp


def test_export_ddp_vars_maps_slurm():
    env = dict(os.environ, SLURM_PROCID="5", SLURM_LOCALID="1", SLURM_NTASKS="8",
               SLURM_JOB_NODELIST="nodeA", MASTER_ADDR="nodeA")
    env.pop("MASTER_PORT", None)
    out = subprocess.run(["bash", "-c", "source export_DDP_vars.sh && echo $RANK $LOCAL_RANK "
                          "$WORLD_SIZE $MASTER_ADDR $MASTER_PORT"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, check=True).stdout.split()
    assert out == ["5", "1", "8", "nodeA", "29500"]
    bad = subprocess.run(["bash", "-c", "unset SLURM_PROCID; source export_DDP_vars.sh"],
                         cwd=REPO_ROOT, capture_output=True, text=True)
    assert bad.returncode != 0 and "srun task" in bad.stderr


def test_run_sh_slurm_branch(tmp_path):
    """run.sh inside slurm: srun (stub: one task) + export_DDP_vars.sh -> train, then eval."""
    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(16, 4, 4))
    cfg = tiny_config(tmp_path, data, max_epochs=1)
    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "scontrol").write_text("#!/bin/bash\necho fakenode\n")
    # srun stub: drop the options, run the task command as task 0 of 1
    (stubs / "srun").write_text('#!/bin/bash\necho "srun $*" >> "$SRUN_LOG"\n'
                                'while [ "$1" != bash ]; do shift; done\n'
                                'SLURM_PROCID=0 SLURM_LOCALID=0 SLURM_NTASKS=1 exec "$@"\n')
    for f in ("scontrol", "srun"):
        os.chmod(stubs / f, 0o755)
    env = dict(os.environ, PATH=f"{stubs}:{os.environ['PATH']}", SLURM_JOB_ID="1",
               SLURM_JOB_NODELIST="fakenode", SRUN_LOG=str(tmp_path / "srun.log"),
               CONFIG_FILE=cfg, CONFIG="tiny", RUN_NUM="r", ROOT_DIR=str(tmp_path / "res"),
               NGPU_PER_NODE="2", WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="")
    res = subprocess.run(["bash", "run.sh", "--set", "lr=2e-3"], cwd=REPO_ROOT, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    log = open(tmp_path / "srun.log").read()
    assert "--ntasks-per-node 2" in log and "--gpus-per-node 2" in log
    assert "source export_DDP_vars.sh" in log
    assert "test relative L2 error" in res.stdout
    run = tmp_path / "res/expts/tiny/r"
    assert (run / "eval/summary.json").exists()
    assert "lr: 0.002" in open(run / "hyperparams.yaml").read()


def test_signal_to_one_rank_stops_all_with_checkpoint(tmp_path):
    """SIGUSR1 to rank 1 only: both ranks agree to stop after the same step, rank 0 saves."""
    import signal
    import time

    data = write_poisson_set(str(tmp_path / "data"), n=16, sizes=(32, 4, 4))
    cfg = tiny_config(tmp_path, data, max_epochs=100000, batch_size=4)
    env = dict(os.environ, WANDB_MODE="disabled", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", "train.py", "--yaml_config", cfg, "--config",
                             "tiny", "--run_num", "0", "--root_dir", str(tmp_path / "res")],
                            cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    metrics = tmp_path / "res/expts/tiny/0/metrics.jsonl"
    deadline = time.time() + 120
    while not metrics.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    workers = sorted(child_pids(proc.pid))
    assert len(workers) == 2 and metrics.exists()
    os.kill(workers[1], signal.SIGUSR1)  # the later-started worker (rank 0 or 1, either works)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[:3000] + "\n...\n" + err[-3000:]
    ck = torch.load(tmp_path / "res/expts/tiny/0/checkpoints/ckpt.tar", weights_only=False)
    assert ck["epoch"] >= 1 and ck["world_size"] == 2
    assert ck["iters"] == ck["epoch"] * 8 + ck["step_in_epoch"]
