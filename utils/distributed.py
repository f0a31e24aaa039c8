"""Process group and random state: DDP set-up from torchrun / slurm variables, seeding, and the
RNG states a checkpoint stores (plain values, so that it loads with weights_only=True)."""
import os
import random

import numpy as np
import torch
import torch.distributed as dist


def setup_distributed():
    """Initialise DDP from torchrun/slurm variables (RANK, LOCAL_RANK, WORLD_SIZE, MASTER_*).

    nccl on CUDA, gloo otherwise. A group is formed when there are several ranks, and also
    for one rank launched by torchrun (TORCHELASTIC_RUN_ID set), so that a one-GPU torchrun
    runs the same DDP code path as a multi-GPU one. Returns (world_size, rank, local_rank,
    device).
    """
    world = int(os.environ.get("WORLD_SIZE", 1))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    launched = world > 1 or "TORCHELASTIC_RUN_ID" in os.environ
    if launched and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    rank = dist.get_rank() if dist.is_initialized() else 0
    world = dist.get_world_size() if dist.is_initialized() else 1
    return world, rank, local_rank, device


def set_seed(seed):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device


def get_rng_state():
    """RNG states as tensors and plain values only (loadable with weights_only=True)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = dict(python=random.getstate(),
                 numpy=(kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)),
                 torch=torch.get_rng_state())
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    random.setstate(tuple(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
