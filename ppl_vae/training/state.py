"""Where a run stands (what a checkpoint holds of it) and what :func:`ppl_vae.fit` returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from torch import Tensor

__all__ = ["FitResult", "TrainState"]


@dataclass
class FitResult:
    """What :func:`fit` did: one ``history`` entry per epoch (``train_loss``, ``val_loss`` in
    nats per data point, i.e. minus the bound), the best validation loss, and whether early
    stopping ended the run."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    stopped_early: bool = False
    checkpoint: Path | None = None
    #: the objective trained with (``auto`` stands for ``stl``)
    objective: str = ""
    #: optimisation steps of the whole run (resumed ones included)
    steps: int = 0
    #: how the last epoch's steps ran: "eager", "traced ...", "compiled ...", or why the
    #: traced step was given up (``compile`` setting; ppl_vae.training.traced)
    step_mode: str = "eager"


@dataclass
class TrainState:
    """Where a run stands; with the parameters, the optimizer and the random states, this is
    what a checkpoint holds."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    perm: Tensor | None = None  # this epoch's order of the training rows
    loss_sum: float = 0.0  # sum of this epoch's step losses so far
    loss_count: int = 0  # how many steps that sum has (skipped steps have no loss)
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    bad_epochs: int = 0  # epochs since the best, counted after the warm-up
    best_state: dict[str, Any] | None = None  # the best epoch's program state (with patience)
    loader_rng: dict[str, Any] | None = None  # random states at this epoch's start (loaders)
    skipped: int = 0  # steps skipped for a non-finite loss (skip_nonfinite)
    global_step: int = 0  # steps of the whole run completed (the trackers' x axis)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def next_epoch(self) -> None:
        """Count the epoch as completed and start the next at its first step."""
        self.epoch, self.step_in_epoch, self.perm = self.epoch + 1, 0, None
        self.loss_sum, self.loss_count = 0.0, 0
