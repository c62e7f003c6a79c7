"""Several processes, one model: the process group ``torchrun`` starts, each process's shard of
a batch, and the few collective operations :func:`ppl_vae.fit` and
:func:`ppl_vae.log_likelihood` need (gloo on CPU, NCCL on CUDA).

Data-parallel training here is an explicit all-reduce over the fast engine's gradients, not
``DistributedDataParallel``: a Pyro program is two functions, not one module's ``forward``,
and one flat all-reduce a step (the gradients, the loss, the batch size and an interrupt flag
together) keeps the step as fast as the single-process one. Every process draws the same
global batches (the data generator is seeded alike) and trains on its rows of each; the
particle draws differ per process, each from its own seeded stream.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = [
    "World",
    "agree",
    "broadcast_object",
    "broadcast_tensors",
    "gather_objects",
    "init_from_env",
    "join",
    "leave",
    "on_root",
    "rank_seed",
    "shard_rows",
    "sum_all",
    "world",
]


T = TypeVar("T")


@dataclass(frozen=True)
class World:
    """This process's place among ``size`` processes (rank 0 writes the run folder)."""

    rank: int = 0
    size: int = 1

    @property
    def root(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.size > 1


def world() -> World:
    """The initialized process group as a :class:`World`; one process when there is none."""
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return World()


def launched() -> bool:
    """Whether torchrun (or another launcher that sets ``WORLD_SIZE``) started this process as
    one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device: str | torch.device = "cpu") -> tuple[World, torch.device]:
    """Join the process group a launcher describes in the environment (``RANK``,
    ``WORLD_SIZE``, ``MASTER_ADDR``, ``MASTER_PORT``: what torchrun sets), with NCCL for CUDA
    and gloo otherwise; one process when there is no launcher.

    Returns the world and the device this process computes on: with ``cuda`` and no index,
    ``cuda:LOCAL_RANK``, so each process on a machine takes its own GPU.
    """
    device = torch.device(device)
    if not launched():
        return World(), device
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        join("nccl" if device.type == "cuda" else "gloo")
    return world(), device


def join(backend: str, **kwargs: Any) -> World:
    """``torch.distributed.init_process_group(backend, **kwargs)`` with Ctrl-C and SIGTERM
    blocked in the threads it starts, so that those signals reach the main thread alone.

    A signal the kernel hands to one of gloo's threads interrupts its wait on a socket, and
    gloo aborts the process (seen here about once in five Ctrl-Cs); :func:`ppl_vae.fit` needs
    them in the main thread, where it finishes the step and saves before stopping.
    """
    import signal

    held = {signal.SIGINT, signal.SIGTERM}
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, held)
    try:
        dist.init_process_group(backend, **kwargs)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    return world()


def leave() -> None:
    """Leave the process group once every process has come this far.

    The garbage of an interrupted run (reference cycles through its frames) is collected
    first: left to the interpreter's exit, it aborted the process in about one run in ten
    after a Ctrl-C, with the checkpoint written but exit code 134 (measured; none in 30 with
    the collection here)."""
    import gc

    if dist.is_available() and dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def rank_seed(seed: int, rank: int) -> int:
    """The seed of rank ``rank``'s own random stream: ``seed`` itself on rank 0 (so one process
    draws as a run without torch.distributed does), a distinct one on every other rank."""
    if rank == 0:
        return seed
    return hash((seed, rank)) % 2**32  # ints hash alike in every process; numpy takes 32 bits


def shard_rows(n: int, w: World) -> slice:
    """This rank's contiguous rows of ``n`` (sizes differ by at most one, as ``tensor_split``)."""
    base, extra = divmod(n, w.size)
    start = w.rank * base + min(w.rank, extra)
    return slice(start, start + base + (w.rank < extra))


def _device_of() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(flag: bool) -> bool:
    """True on every rank when ``flag`` is true on any (e.g. a Ctrl-C that reached one)."""
    w = world()
    if not w.active:
        return flag
    t = torch.tensor([float(flag)], device=_device_of())
    dist.all_reduce(t)
    return bool(t.item() > 0)


def sum_all(values: Sequence[float]) -> list[float]:
    """``values`` added up over every rank (float64), the same list on each."""
    w = world()
    if not w.active:
        return list(values)
    t = torch.tensor(list(values), dtype=torch.float64, device=_device_of())
    dist.all_reduce(t)
    return t.tolist()


def broadcast_object(obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank (pickled)."""
    w = world()
    if not w.active:
        return obj
    box = [obj if w.root else None]
    dist.broadcast_object_list(box, src=0)  # on the current GPU under NCCL, else the CPU
    return box[0]


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    w = world()
    if not w.active:
        return [obj]
    out: list[Any] = [None] * w.size
    dist.all_gather_object(out, obj)
    return out


def broadcast_tensors(tensors: Sequence[Tensor]) -> None:
    """Overwrite ``tensors`` on every rank with rank 0's values (the initial parameters)."""
    w = world()
    if not w.active:
        return
    with torch.no_grad():
        for t in tensors:
            dist.broadcast(t.data, src=0)


def on_root(fn: Callable[[], T]) -> T:
    """``fn()`` on rank 0 alone; its result, or its exception (same type and message), on
    every rank, so that a refusal on rank 0 stops all of them instead of leaving them waiting."""
    w = world()
    if not w.active:
        return fn()
    outcome: tuple[str, Any]
    if w.root:
        try:
            outcome = ("ok", fn())
        except Exception as e:  # passed on, and raised on rank 0 itself below
            outcome = ("error", e)
    else:
        outcome = ("", None)
    kind, value = broadcast_object(outcome)
    if kind == "error":
        raise value
    return value
