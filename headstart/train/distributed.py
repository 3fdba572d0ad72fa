"""Data-parallel fine-tuning on torch.distributed: launched by ``torchrun``, never by a home-made launcher.

    torchrun --standalone --nproc-per-node 2 -m headstart fit DATA --strategy finetune --out RUN

torchrun starts the processes and sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``; ``joined``
makes each one join the process group (NCCL on CUDA, gloo on CPU) and leaves it at the end. The rules the
loop follows (as timm's ``train.py`` does, with one choice of ours, the first):

- ``--batch-size`` is the **global** batch: each of W processes takes B/W images of every step and DDP
  averages the gradients, so the learning rate, the schedule (steps per epoch) and the optimisation are
  those of one process with batch B, and a checkpoint resumes on any world size.
- Every process draws the same epoch order (``default_rng([seed, epoch])``); ``DistributedSampler`` (its
  own shuffling off) pads it to a multiple of W and deals it out, so together the W batches of a step are
  the global batch. Validation is dealt out without padding and summed: each image counts once.
- Only rank 0 writes run files (curves, checkpoints, bundle, metrics); a checkpoint holds the unwrapped
  state dict and the global step.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
import torch
from torch import distributed as tdist
from torch import nn
from torch.utils.data import DistributedSampler

from headstart.errors import ConfigError

__all__ = ["Dist", "barrier", "broadcast_state", "check_batch", "current", "deal", "joined", "launched", "pick",
           "same_everywhere", "sum_across", "train_shard"]

# How long a process waits for the others at a collective. Rank 0 alone evaluates the test split and writes
# the report after training, and the others may wait on it at the next run's barrier: generous.
TIMEOUT = timedelta(hours=2)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job: ``rank`` of ``world`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    # In a process group, so the collectives run: under torchrun, also with one process (a single-GPU NCCL
    # smoke test runs the very code several GPUs run).
    enabled: bool = False

    @property
    def backend(self) -> str | None:
        """The process group's backend (nccl, gloo), None outside one."""
        return str(tdist.get_backend()) if self.enabled else None

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes run files and shows progress."""
        return self.rank == 0


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher that sets the env:// variables)."""
    return all(k in os.environ for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))


def current() -> Dist:
    """This process's place, from the process group if one is joined (else a single process)."""
    if not (tdist.is_available() and tdist.is_initialized()):
        return Dist()
    return Dist(tdist.get_rank(), tdist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")), enabled=True)


@contextlib.contextmanager
def joined(device: str = "auto") -> Iterator[Dist]:
    """Join torchrun's process group for the duration (a no-op outside torchrun, or when the caller joined one).

    NCCL when ``device`` is cuda, or auto with a GPU visible (each process on GPU ``LOCAL_RANK``); gloo and
    the CPU otherwise (never Apple's MPS, which DDP does not support)."""
    if not launched() or (tdist.is_available() and tdist.is_initialized()):
        yield current()
        return
    if not tdist.is_available():
        raise ConfigError("this PyTorch build has no torch.distributed; run headstart without torchrun")
    cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        torch.cuda.set_device(local)
    tdist.init_process_group("nccl" if cuda else "gloo", timeout=TIMEOUT)
    try:
        yield current()
    finally:
        tdist.destroy_process_group()


def barrier(d: Dist) -> None:
    if d.enabled:
        tdist.barrier()


def check_batch(batch_size: int, d: Dist) -> int:
    """The per-process share of the global ``batch_size``."""
    if batch_size % d.world:
        raise ConfigError(f"--batch-size {batch_size} is the global batch and does not split over {d.world} "
                          f"processes; use a multiple of {d.world}")
    return batch_size // d.world


def train_shard(order: np.ndarray, d: Dist) -> np.ndarray:
    """This process's part of the epoch ``order``: padded to a multiple of the world size by repeating its
    start, then dealt out (``DistributedSampler`` semantics), so the W per-process batches of step j are
    together the global batch j of the order."""
    if d.world == 1:
        return order
    sampler = DistributedSampler(range(len(order)), num_replicas=d.world, rank=d.rank, shuffle=False)
    return np.asarray(order)[np.fromiter(iter(sampler), dtype=np.int64)]


def deal(n: int, d: Dist) -> np.ndarray:
    """Positions ``0..n-1`` this process evaluates: dealt out without padding, so summed across processes
    every item counts exactly once."""
    return np.arange(d.rank, n, d.world)


def sum_across(values: Sequence[float], d: Dist) -> list[float]:
    """Element-wise sum of ``values`` over all processes (float64; the values themselves when alone)."""
    if not d.enabled:
        return list(values)
    t = _on_group_device(torch.tensor(list(values), dtype=torch.float64))
    tdist.all_reduce(t)
    return t.cpu().tolist()


def same_everywhere(values: Sequence[float], d: Dist) -> bool:
    """Whether every process holds the same ``values`` (one MAX all-reduce of ``values`` and their negatives)."""
    if not d.enabled:
        return True
    t = _on_group_device(torch.tensor([*values, *(-v for v in values)], dtype=torch.float64))
    tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
    n = len(values)
    return bool(torch.equal(t[:n], -t[n:]))


def _on_group_device(t: torch.Tensor) -> torch.Tensor:
    """``t`` where the group's collectives can read it: NCCL's on this process's GPU, gloo's anywhere."""
    return t.cuda() if tdist.get_backend() == "nccl" and not t.is_cuda else t


def pick(value: Any, d: Dist) -> Any:
    """Rank 0's ``value`` on every process (a decision all must share, e.g. to stop on a time budget)."""
    if not d.enabled:
        return value
    box = [value]
    tdist.broadcast_object_list(box, src=0)
    return box[0]


@torch.no_grad()
def broadcast_state(model: nn.Module, d: Dist) -> None:
    """Rank 0's parameters and buffers everywhere: DDP syncs only what it wraps (the trainable suffix), and
    the frozen prefix must be the same function in every process too."""
    if not d.enabled:
        return
    for t in model.state_dict().values():
        buf = _on_group_device(t)
        tdist.broadcast(buf, src=0)
        if buf is not t:
            t.copy_(buf.cpu())
