"""What :func:`ppl_vae.fit` does before its first step: read its arguments, find the program's
parameters on a first batch (and the dtype the data take), and check the data against what
the program observes."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from ppl_vae.data.splits import DataSplits, check_grey_levels
from ppl_vae.objectives.analytic import kl_obstacles
from ppl_vae.program import (
    Program,
    ProgramError,
    as_program,
    binary_observation,
    check_observed,
    check_pair,
    traces,
)
from ppl_vae.runtime.distributed import World
from ppl_vae.runtime.kernels import bernoulli
from ppl_vae.training.batching import (
    Feed,
    LoaderFeed,
    TensorFeed,
    cast_batch,
    check_finite,
    make_feed,
)

__all__ = [
    "cast",
    "check_data",
    "discover",
    "feeds",
    "first_trace",
    "probe",
    "ready_feeds",
    "split_arguments",
]


def split_arguments(program: Any, args: tuple) -> tuple[Program, Any, Any]:
    """``(program, data[, val])`` or ``(model, guide, data[, val])`` as (program, data, val)."""
    guide = None
    if args and callable(args[0]) and not isinstance(args[0], (Tensor, torch.nn.Parameter)):
        guide, args = args[0], args[1:]
    if not 1 <= len(args) <= 2:
        raise TypeError(
            "fit takes fit(program, data[, val]) or fit(model, guide, data[, val]); "
            f"got {len(args)} data arguments"
        )
    return as_program(program, guide), args[0], args[1] if len(args) > 1 else None


def feeds(data: Any, val: Any, config: Any) -> tuple[Feed, Feed | None, DataSplits | None]:
    splits = data if isinstance(data, DataSplits) else None
    if splits is not None:
        if splits.dynamic:
            check_grey_levels(splits.train, "dynamic binarization of the training data")
        data, val = splits.train, splits.val if val is None else val
        if val is not None and len(val) == 0:  # trained on every row (--val-size 0)
            val = None
    train = make_feed(data, config.batch_size, splits is not None and splits.dynamic, "the data")
    val_feed = None if val is None else make_feed(val, config.eval_batch_size, what="val data")
    return train, val_feed, splits


def ready_feeds(train: Feed, val: Feed | None, world: World, engine: str) -> None:
    """Under torch.distributed, each feed keeps this process's rows of every batch (a loader
    must shuffle alike on every process, and ``engine`` cannot be "svi"); in-memory rows are
    checked finite before anything runs on them."""
    if world.active:
        if engine == "svi":
            raise ValueError(
                "engine 'svi' trains in one process; under torch.distributed use the fast "
                "engine (--engine fast)"
            )
        for feed in (train, val):
            if feed is not None:
                feed.world = world
            if isinstance(feed, LoaderFeed):
                feed.check_shared_order()
    for feed, what in ((train, "the training data"), (val, "the validation data")):
        if isinstance(feed, TensorFeed):
            check_finite(feed.batch, what)


def first_trace(program: Program, batch: tuple, what: str) -> dict[str, Tensor]:
    try:
        return program.find_parameters(*batch)
    except ProgramError:
        raise
    except Exception as e:
        shapes = ", ".join(f"{tuple(t.shape)} {t.dtype}" for t in batch)
        raise ProgramError(
            f"running {program.name} on {what} ({shapes}) failed: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e


def discover(program: Program, first: tuple) -> tuple[torch.dtype, torch.device]:
    """Find the program's parameters on the first batch; return the dtype and device that
    the data are cast to: the modules' when the program shows them, else the data's own
    (or the default dtype, if the program fails on the data's)."""
    known = program.dtype_and_device()
    if known is not None:
        first_trace(program, cast(first, *known), "the first batch")
        return known
    dtype = first[0].dtype if first[0].is_floating_point() else torch.get_default_dtype()
    device = first[0].device
    try:
        first_trace(program, cast(first, dtype, device), "the first batch")
    except ProgramError:
        if dtype == torch.get_default_dtype():
            raise
        dtype = torch.get_default_dtype()
        first_trace(program, cast(first, dtype, device), "the first batch")
    return dtype, device


def cast(batch: tuple, dtype: torch.dtype, device: torch.device) -> tuple:
    """``batch`` with its floating tensors in ``dtype`` on ``device``."""
    return cast_batch(batch, dtype, device, "the data")


def check_data(program: Program, batch: tuple, splits: DataSplits | None, what: str) -> None:
    """The values the model observes lie in their supports; binarized data meet a Bernoulli."""
    check_finite(batch, what)
    if splits is not None and splits.binarization != "none":
        if not binary_observation(program.model, program.guide, *batch):
            raise ValueError(
                f"the data are binarized (binarization={splits.binarization!r}) but "
                f"{program.name} does not observe them with a Bernoulli likelihood; load them "
                "with binarization='none' (--binarize none): binarization only goes with a "
                "Bernoulli likelihood"
            )
    check_observed(program.model, program.guide, *batch, what=what)


def probe(
    program: Program,
    train: Feed,
    val: Feed | None,
    splits: DataSplits | None,
    objective: str,
) -> tuple[torch.dtype, torch.device, Any]:
    """Run the program on the first batches before training: find its parameters and the
    dtype and device of the data (in-memory rows are moved there), check the data and the
    model/guide pair, and, for ``objective`` "mean-field", read which latent sites lack a
    closed-form KL. Returns (dtype, device, the sites for
    :func:`~ppl_vae.objectives.make_objective`).

    Probing runs the program, so it leaves the random state as it found it: training then
    draws the same numbers as ``pyro.infer.SVI`` seeded alike."""
    with torch.random.fork_rng():
        dtype, device = discover(program, train.first())
        for feed, what in ((train, "the data"), (val, "validation data")):
            if isinstance(feed, TensorFeed):
                feed.to(dtype, device, what)
        first = cast(train.first(), dtype, device)
        if train.dynamic:
            first = (bernoulli(first[0]), *first[1:])
        check_data(program, first, splits, "the training data")
        if val is not None:
            check_data(program, cast(val.first(), dtype, device), splits, "the validation data")
        check_pair(*traces(program.model, program.guide, first, {}))
        # only the analytic KL reads the program's KL structure (a trace of its dependencies)
        sites = (
            kl_obstacles(program.model, program.guide, *first)
            if objective == "mean-field"
            else True
        )
    return dtype, device, sites
