"""Chunking importance samples over particles and data points, so memory stays bounded."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyro
import torch
from torch import Tensor

from ppl_vae.objectives.particles import log_weights, probe, vectorized_traces
from ppl_vae.runtime.distributed import World, shard_rows

__all__ = []


#: Particles x data points per pass when neither chunk_size nor batch_size is given. Measured on
#: the seed network (784-300-300-50) at K = 5000: 2048 rows (a 6 MB logits block) ran 0.89x the
#: time of one 5000-row pass per image, 4096 rows 1.2x and 16384 rows 1.9x; past the CPU caches,
#: bigger passes are slower, not faster (benchmarks/README.md).
DEFAULT_ROWS = 2**11


ONE = World()  # a single process


#: Data points per block of the one-particle probe that checks every site of every point.
PROBE_ROWS = 256


def _probe_in_blocks(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, plate: str
) -> tuple[int, int]:
    """:func:`probe` over all data points, ``PROBE_ROWS`` at a time; ``(max_plate_nesting, N)``.

    Every point's sites are checked once under the caller's validation setting, with memory
    for one block, not for all N (the particle passes then run without validation). If
    slicing the largest tensor arguments does not shrink the data plate, the data are not
    split along their first dimension and the probe runs once on everything.
    """
    firsts = [a.shape[0] for a in (*args, *kwargs.values()) if isinstance(a, Tensor) and a.dim()]
    m = max(firsts, default=0)
    if m > PROBE_ROWS:
        nesting = 0
        for lo, hi in _chunks(m, PROBE_ROWS):
            block_nesting, size = probe(model, guide, *_rows(args, kwargs, m, lo, hi), plate)
            if size != hi - lo:
                break
            nesting = max(nesting, block_nesting)
        else:
            return nesting, m
    return probe(model, guide, args, kwargs, plate)


def _split(obj: Any, n: int, start: int, stop: int) -> Any:
    if isinstance(obj, Tensor) and obj.dim() > 0 and obj.shape[0] == n:
        return obj[start:stop]
    return obj


def _rows(args: tuple, kwargs: dict, n: int, start: int, stop: int) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with every tensor whose first dimension is ``n`` sliced."""
    return (
        tuple(_split(x, n, start, stop) for x in args),
        {k: _split(v, n, start, stop) for k, v in kwargs.items()},
    )


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, total)) for i in range(0, total, size)]


def _batches(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    chunk_size: int | None,
    batch_size: int | None,
    plate: str,
    progress: bool,
    seed: int | None = None,
    where: World = ONE,
) -> Iterator[tuple[int, int, int, Iterator[Tensor]]]:
    """Yield ``(start, stop, n, chunks)``; ``chunks`` yields log weights ``(k_chunk, stop-start)``
    and ``n`` is the data plate's size.

    With ``seed``, each batch draws from its own stream, seeded by ``seed`` and its first row,
    so a point's estimate does not depend on which batches ran before it (nor on which
    process ran them); the global random state is left as it was. With ``where`` a world of
    several processes, this process yields only its contiguous share of the batches."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    nesting, n = _probe_in_blocks(model, guide, args, kwargs, plate)
    chunk_size = chunk_size or min(num_samples, DEFAULT_ROWS)
    batch_size = batch_size or max(1, DEFAULT_ROWS // chunk_size)
    splittable = any(
        isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n
        for a in (*args, *kwargs.values())
    )
    if not splittable:
        batch_size = n
    batches = _chunks(n, batch_size)
    batches = batches[shard_rows(len(batches), where)]
    bar = None
    if progress and where.root:
        from tqdm import tqdm

        total = sum(stop - start for start, stop in batches)
        bar = tqdm(total=total, unit="point", desc=f"log p(x), K={num_samples}")

    def chunks(a: tuple, kw: dict, size: int, start: int) -> Iterator[Tensor]:
        if seed is None:
            yield from passes(a, kw, size)
            return
        with torch.random.fork_rng():
            torch.manual_seed(hash((seed, start)) % 2**63)  # ints hash alike in every process
            yield from passes(a, kw, size)

    def passes(a: tuple, kw: dict, size: int) -> Iterator[Tensor]:
        for lo, hi in _chunks(num_samples, chunk_size):
            # _probe_in_blocks() has run every site of every point once under the caller's
            # validation setting; checking K x N particles again costs ~7% of a pass (measured).
            with pyro.validation_enabled(False):
                model_trace, guide_trace = vectorized_traces(model, guide, a, kw, hi - lo, nesting)
            log_w = log_weights(model_trace, guide_trace, plate, nesting)
            if log_w.shape[1] != size:
                raise ValueError(
                    f"pyro.plate({plate!r}) has size {log_w.shape[1]} on a batch of {size} "
                    f"points: the data are not split along their first dimension; "
                    f"pass batch_size={n} to turn batching off"
                )
            yield log_w

    for start, stop in batches:
        a, kw = _rows(args, kwargs, n, start, stop)
        yield start, stop, n, chunks(a, kw, stop - start, start)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()
