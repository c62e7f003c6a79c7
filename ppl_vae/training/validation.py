"""The end of an epoch: validation, the epoch's record, the stopping rule and the report line."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator

import torch

from ppl_vae.program import Program
from ppl_vae.runtime.distributed import World, sum_all
from ppl_vae.training.batching import Feed
from ppl_vae.training.engines import FastEngine, bound_terms, mean_loss
from ppl_vae.training.preflight import cast
from ppl_vae.training.state import TrainState

__all__ = [
    "count_epoch",
    "epoch_record",
    "patience_spent",
    "report_line",
    "val_batches",
    "validate",
]


def val_batches(
    feed: Feed, batch_size: int, dtype: torch.dtype, device: torch.device
) -> Iterator[tuple]:
    """The validation batches (under torch.distributed, this process's rows of each)."""
    for b in feed.batches(batch_size):
        yield cast(feed.shard(b), dtype, device)


def validate(
    program: Program,
    engine: FastEngine,
    batches: Callable[[], Iterable[tuple]],
    seed: int,
    epoch: int,
    world: World,
) -> tuple[float, float, float]:
    """Minus the bound per data point on the validation ``batches`` (at the engine's KL
    weight, with draws fixed by ``seed``), and the ELBO's two terms (reconstruction, KL) at
    weight 1: means over every process's rows. Raises ``FloatingPointError`` when the run
    diverged by the end of ``epoch`` (0-based)."""
    program.train(False)
    where = f"the run diverged by the end of epoch {epoch + 1}"
    try:
        loss = mean_loss(engine.model, engine.guide, engine.objective, batches(), seed)
        recon, kl, n = bound_terms(program.model, program.guide, batches(), 0)
    except ValueError as e:
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "invalid values" not in first_line:
            raise
        raise FloatingPointError(
            f"{where}: on validation data a parameter left its support "
            f"({first_line.rstrip(':')}); lower the learning rate (--lr) or warm the KL up "
            "(--warmup); the last good checkpoint is kept"
        ) from e
    if world.active:  # means over this process's rows -> means over all rows
        total, recon, kl, n = sum_all([loss * n, recon * n, kl * n, n])
        loss, recon, kl = total / n, recon / n, kl / n
    if not math.isfinite(loss):
        raise FloatingPointError(
            f"{where}: the validation loss is {loss}; lower the learning rate (--lr); the "
            "last good checkpoint is kept"
        )
    program.train(True)
    return loss, recon, kl


def epoch_record(
    state: TrainState,
    val: tuple[float, float, float] | None,
    seconds: float,
    lr: float | None = None,
) -> dict[str, float]:
    """The line of ``metrics.jsonl`` for the epoch ``state`` is in: its mean training loss,
    the validation loss and terms (``val``, when there is validation data), its duration and
    the learning rate it trained at (when a schedule sets it)."""
    record = {"epoch": state.epoch + 1, "train_loss": state.loss_sum / max(1, state.loss_count)}
    if val is not None:
        record["val_loss"], record["val_reconstruction"], record["val_kl"] = val
    record["seconds"] = seconds
    if lr is not None:
        record["lr"] = lr
    return record


def count_epoch(state: TrainState, loss: float, warmup: int) -> bool:
    """Weigh the epoch just completed (``state.epoch`` counts it) against the best: True
    when ``loss`` is a new best; otherwise a bad epoch, counted only after the ``warmup``
    epochs (a rising KL weight makes the loss rise by design)."""
    if loss < state.best_val_loss:
        state.best_val_loss, state.bad_epochs = loss, 0
        return True
    if state.epoch > warmup:
        state.bad_epochs += 1
    return False


def patience_spent(state: TrainState, patience: int | None) -> bool:
    """Whether early stopping ends the run: ``patience`` bad epochs in a row (None: never)."""
    return patience is not None and state.bad_epochs >= patience


def report_line(record: dict[str, float], epochs: int) -> str:
    """The line printed after each epoch."""
    val_text = f"  val {record['val_loss']:.2f}" if "val_loss" in record else ""
    return (
        f"epoch {record['epoch']}/{epochs}  train {record['train_loss']:.2f}"
        f"{val_text} nats  ({record['seconds']:.1f} s)"
    )
