"""Minibatches for :func:`ppl_vae.fit` from data in the forms people have it: tensors and numpy
arrays (one, or a tuple: data and labels), :class:`~ppl_vae.data.DataSplits`,
``torch.utils.data.Dataset`` and ``DataLoader`` (streamed, so the data need not fit in memory).

A batch is always a tuple of tensors, passed to ``model(*batch)`` and ``guide(*batch)``; its
first tensor's first dimension counts the data points. Floating-point tensors are cast to the
program's dtype and device; other tensors (labels) keep their dtype.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, default_collate

from ppl_vae.runtime.distributed import World, shard_rows
from ppl_vae.runtime.kernels import bernoulli
from ppl_vae.training.checkpoint import rng_state, set_rng_state

__all__ = [
    "Feed",
    "LoaderFeed",
    "TensorFeed",
    "as_batch",
    "cast_batch",
    "check_finite",
    "make_feed",
]


Batch = tuple[Tensor, ...]


def _tensor(x: Any, what: str) -> Tensor:
    if isinstance(x, Tensor):
        return x
    if isinstance(x, np.ndarray):
        if x.dtype == object:
            raise TypeError(f"{what} is a numpy array of Python objects; give numbers")
        return torch.from_numpy(np.ascontiguousarray(x))
    raise TypeError(
        f"{what} must be a tensor, a numpy array or a tuple of them, a torch Dataset or a "
        f"DataLoader; got {type(x).__name__}"
    )


def as_batch(data: Any, what: str = "data") -> Batch:
    """``data`` (a tensor, an array, or a tuple/list of them) as a tuple of tensors with one
    first dimension."""
    items = tuple(data) if isinstance(data, (tuple, list)) else (data,)
    if not items:
        raise ValueError(f"{what} is empty")
    tensors = tuple(_tensor(x, what) for x in items)
    if tensors[0].dim() == 0:
        raise ValueError(f"{what} must have one data point per row, got a scalar")
    n = tensors[0].shape[0]
    sizes = [t.shape[0] if t.dim() else None for t in tensors]
    if any(s != n for s in sizes):
        raise ValueError(
            f"the tensors of {what} must have as many rows each, got first dimensions {sizes}"
        )
    return tensors


def cast_batch(batch: Batch, dtype: torch.dtype, device: torch.device, what: str) -> Batch:
    """Floating tensors to ``dtype``/``device``; others to ``device``. A first tensor of
    raw bytes (uint8 pixels) is an error that says how to scale it."""
    first = batch[0]
    if first.dtype == torch.uint8:
        raise ValueError(
            f"{what} holds uint8 values (raw pixels?); scale them to floats first, e.g. "
            "x.float() / 255 (or load the file with ppl_vae.data.load_dataset)"
        )
    out = []
    for t in batch:
        if t.is_floating_point():
            out.append(t.to(device=device, dtype=dtype))
        else:
            out.append(t.to(device=device))
    return tuple(out)


def check_finite(batch: Batch, what: str) -> None:
    """A ``ValueError`` naming the rows when a floating tensor holds NaN or infinite values."""
    for t in batch:
        if not t.is_floating_point():
            continue
        bad = ~torch.isfinite(t)
        if bad.any():
            rows = bad.reshape(len(t), -1).any(dim=1).nonzero().flatten()
            raise ValueError(
                f"{what} has {int(bad.sum())} NaN or infinite values in {len(rows)} rows "
                f"(first rows: {rows[:5].tolist()}); drop or impute them before training"
            )


class Feed:
    """Where the batches of an epoch come from. ``n_batches`` is None when unknown."""

    n_batches: int | None
    dynamic: bool = False
    #: the processes sharing each batch; every process draws the whole global batch (shuffling
    #: and binarization alike on every rank) and keeps its own rows of it
    world: World = World()

    def shard(self, batch: Batch) -> Batch:
        """This process's rows of a global batch."""
        if not self.world.active:
            return batch
        rows = shard_rows(len(batch[0]), self.world)
        return tuple(t[rows] for t in batch)

    def first(self) -> Batch:
        """The first batch (unshuffled, not binarized): to trace the program on."""
        raise NotImplementedError

    def epoch(
        self, state: Any, gen: torch.Generator, dtype: torch.dtype, device: torch.device
    ) -> Iterator[Batch]:
        """The batches of ``state.epoch`` from ``state.step_in_epoch`` on."""
        raise NotImplementedError


class TensorFeed(Feed):
    """In-memory rows, shuffled by ``fit``'s own generator; the permutation is checkpointed,
    so a resumed epoch continues with the same batches. With ``dynamic`` the first tensor
    (grey levels in [0, 1]) is redrawn as x ~ Bernoulli(x) for every batch."""

    def __init__(
        self, batch: Batch, batch_size: int, dynamic: bool = False, shuffle: bool = True
    ) -> None:
        self.batch, self.batch_size = batch, batch_size
        self.dynamic, self.shuffle = dynamic, shuffle
        self.n = len(batch[0])
        self.n_batches = math.ceil(self.n / batch_size)

    def first(self) -> Batch:
        return tuple(t[: self.batch_size] for t in self.batch)

    def to(self, dtype: torch.dtype, device: torch.device, what: str) -> TensorFeed:
        self.batch = cast_batch(self.batch, dtype, device, what)
        return self

    def epoch(
        self, state: Any, gen: torch.Generator, dtype: torch.dtype, device: torch.device
    ) -> Iterator[Batch]:
        if state.perm is None:
            state.perm = (
                torch.randperm(self.n, generator=gen, device=gen.device)
                if self.shuffle
                else torch.arange(self.n)
            )
        perm = state.perm.to(self.batch[0].device)
        for b in range(state.step_in_epoch, self.n_batches):
            rows = perm[b * self.batch_size : (b + 1) * self.batch_size]
            batch = tuple(t.index_select(0, rows) for t in self.batch)  # 3x faster than t[rows]
            if self.dynamic:
                x = bernoulli(batch[0], generator=gen)
                batch = (x, *batch[1:])
            yield self.shard(batch)

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """Consecutive batches in order (validation)."""
        for i in range(0, self.n, batch_size):
            yield tuple(t[i : i + batch_size] for t in self.batch)


class LoaderFeed(Feed):
    """Batches from a ``DataLoader`` (or a ``Dataset``, which gets one with ``fit``'s
    shuffling), loaded one at a time.

    Exact resume: a loader is replayed, not checkpointed. At the start of every epoch ``fit``
    saves torch's global random state and the loader's ``generator`` state, from which the
    loader draws its shuffling and its workers' seeds; a resumed epoch restores them, makes a
    new iterator, skips the batches already trained on and restores the random state of the
    interruption. So a resumed run equals an uninterrupted one when the loader's order depends
    only on those random states (the default samplers do; ``shuffle=False`` trivially) and its
    data set returns the same items on every run.
    """

    def __init__(self, loader: DataLoader | Dataset, batch_size: int) -> None:
        if isinstance(loader, Dataset) and not isinstance(loader, DataLoader):
            if not hasattr(loader, "__len__"):
                raise TypeError(
                    "an iterable Dataset has no length to shuffle by; wrap it in a DataLoader"
                )
            self.dataset = loader
            self.loader = None
            self.batch_size = batch_size
            self.n_batches = math.ceil(len(loader) / batch_size)
        else:
            self.dataset = None
            self.loader = loader
            try:
                self.n_batches = len(loader)
            except TypeError:
                self.n_batches = None

    def _dataset_loader(self, perm: Tensor) -> DataLoader:
        batches = [perm[i : i + self.batch_size] for i in range(0, len(perm), self.batch_size)]
        # under torch.distributed each process loads only its rows of every batch
        batches = [b[shard_rows(len(b), self.world)].tolist() for b in batches]
        return DataLoader(self.dataset, batch_sampler=batches, collate_fn=_collate)

    def _iterate(self, loader: DataLoader | Any) -> Iterator[Batch]:
        for i, item in enumerate(loader):
            if item is None:  # this process's share of a batch smaller than the processes
                item = tuple(t[:0] for t in as_batch(_collate([self.dataset[0]])))
            yield as_batch(item, f"batch {i} of the loader")

    def first(self) -> Batch:
        if self.dataset is not None:
            idx = torch.arange(min(self.batch_size, len(self.dataset)))
            return next(self._iterate(self._dataset_loader(idx)))
        state = rng_state()
        try:
            return next(self._iterate(self.loader))
        except StopIteration:
            raise ValueError("the DataLoader yields no batches") from None
        finally:
            set_rng_state(state)

    def _generator(self) -> torch.Generator | None:
        return getattr(self.loader, "generator", None)

    def check_shared_order(self) -> None:
        """Under torch.distributed every process must draw the same global batches: a
        shuffling DataLoader without a ``generator`` draws its order from torch's global random
        state, which differs between processes."""
        if self.loader is None or self._generator() is not None:
            return
        sampler = getattr(self.loader, "batch_sampler", None)
        sampler = getattr(sampler, "sampler", sampler)
        if not isinstance(sampler, torch.utils.data.SequentialSampler):
            raise ValueError(
                "under torch.distributed a shuffling DataLoader needs a generator seeded alike "
                "in every process (DataLoader(..., generator=torch.Generator().manual_seed(0)))"
                ", or give fit the Dataset and let it shuffle"
            )

    def epoch(
        self, state: Any, gen: torch.Generator, dtype: torch.dtype, device: torch.device
    ) -> Iterator[Batch]:
        if self.dataset is not None:
            if state.perm is None:
                state.perm = torch.randperm(len(self.dataset), generator=gen, device=gen.device)
            loader = self._dataset_loader(state.perm.cpu())
            it = self._iterate(loader)
            for _ in range(state.step_in_epoch):
                next(it)
        else:
            g = self._generator()
            if state.step_in_epoch == 0:
                state.loader_rng = {
                    "global": rng_state(),
                    "loader": g.get_state() if g is not None else None,
                }
                it = self._iterate(self.loader)
            else:  # replay the interrupted epoch up to where it stopped
                now = rng_state()
                set_rng_state(state.loader_rng["global"])
                if g is not None and state.loader_rng["loader"] is not None:
                    g.set_state(state.loader_rng["loader"])
                it = self._iterate(self.loader)
                for _ in range(state.step_in_epoch):
                    next(it)
                set_rng_state(now)
        for batch in it:
            if self.dataset is None:
                batch = self.shard(batch)
            batch = cast_batch(batch, dtype, device, f"batch {state.step_in_epoch}")
            check_finite(batch, f"batch {state.step_in_epoch} of epoch {state.epoch + 1}")
            yield batch

    def batches(self, batch_size: int) -> Iterator[Batch]:
        """All batches in the loader's order (validation)."""
        if self.dataset is not None:
            loader = DataLoader(self.dataset, batch_size=batch_size, collate_fn=default_collate)
            yield from self._iterate(loader)
        else:
            yield from self._iterate(self.loader)


def _collate(items: list) -> Any:
    """``default_collate``, and None for no items (every process takes every step, even one
    whose share of the batch is empty)."""
    return default_collate(items) if items else None


def make_feed(data: Any, batch_size: int, dynamic: bool = False, what: str = "data") -> Feed:
    """A :class:`Feed` for any accepted form of ``data``."""
    if isinstance(data, (DataLoader, Dataset)):
        return LoaderFeed(data, batch_size)
    batch = as_batch(data, what)
    if len(batch[0]) == 0:
        raise ValueError(f"{what} has no rows")
    return TensorFeed(batch, batch_size, dynamic=dynamic)
