"""Data-parallel training under ``torchrun``: PyTorch's DistributedDataParallel, nothing
home-made for communication.

``torchrun --standalone --nproc_per_node N -m statewise train CONFIG --out DIR`` starts N
processes; each reads the environment torchrun sets (RANK, WORLD_SIZE, LOCAL_RANK,
MASTER_ADDR, MASTER_PORT) and joins one process group (gloo on CPU, nccl when CUDA is
there). Every rank builds the same batch of train.batch_size rows from (seed, step) and
trains on its own consecutive share of the rows (a truncated-BPTT row keeps its rank, so
each rank carries the states of its own rows). DDP averages the gradients over the ranks;
each rank's loss is weighted by its share of the global target tokens times the number of
ranks, so the averaged gradient is exactly the gradient of the whole batch's mean loss, as
one process computes it (up to the order of floating-point sums).

Rank 0 is the only writer: it holds the run directory's lock, writes checkpoints, the
tokenizer copy, metrics and event files, and shows the one progress bar. Whatever a
checkpoint needs from every rank (the carried states of their rows, their RNG states) is
gathered to it first, so ``--resume auto`` is exact under torchrun too.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from statewise.errors import ConfigError

# a peer that died is noticed within this (torchrun also stops the others when one fails)
TIMEOUT = datetime.timedelta(minutes=5)


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one training run (1 rank without torchrun)."""

    rank: int = 0
    size: int = 1

    @property
    def is_writer(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def launched_by_torchrun() -> bool:
    """Whether torchrun (or another launcher of the same convention) started this process."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def join() -> World:
    """Join the process group torchrun describes (once), or a world of one without it."""
    if not launched_by_torchrun():
        return World()
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend, timeout=TIMEOUT)
    return World(dist.get_rank(), dist.get_world_size())


def leave(world: World) -> None:
    """Leave the process group joined by :func:`join` (after a last barrier)."""
    if world.active and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def my_rows(world: World, batch_size: int) -> slice:
    """The consecutive rows of a train.batch_size batch that this rank trains on."""
    if batch_size % world.size:
        raise ConfigError(
            f"train.batch_size {batch_size} must be a multiple of the number of processes "
            f"({world.size}), so every rank trains on the same number of rows"
        )
    share = batch_size // world.size
    return slice(world.rank * share, (world.rank + 1) * share)


def sum_over_ranks(value: torch.Tensor, world: World) -> torch.Tensor:
    """``value`` summed over every rank (itself in a world of one)."""
    if not world.active:
        return value
    total = value.detach().clone()
    dist.all_reduce(total)
    return total


def gather_to_writer(obj: Any, world: World) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others); [obj] alone."""
    if not world.active:
        return [obj]
    gathered: list[Any] | None = [None] * world.size if world.is_writer else None
    dist.gather_object(obj, gathered, dst=0)
    return gathered


def from_writer(obj: Any, world: World) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not world.active:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def any_rank(flag: bool, world: World) -> bool:
    """True on every rank if ``flag`` is True on any (so every rank stops at one step)."""
    if not world.active:
        return flag
    return bool(sum_over_ranks(torch.tensor(float(flag)), world) > 0)


def wrap(model: torch.nn.Module, world: World) -> torch.nn.Module:
    """``model`` as DistributedDataParallel (which broadcasts rank 0's weights at once)."""
    if not world.active:
        return model
    return torch.nn.parallel.DistributedDataParallel(model)
