"""Learning-rate schedules for :func:`ppl_vae.fit`, from ``torch.optim.lr_scheduler``, stepped
once per epoch and saved in the checkpoint (a resumed run follows the same rates).

- ``constant``: the learning rate throughout.
- ``iwae``: the IWAE paper's stages (Burda, Grosse & Salakhutdinov 2016, section 5): stage
  ``i = 0, 1, 2, ...`` lasts ``3^i`` epochs at ``lr * 10^(-i/7)``; 3280 epochs for i <= 7.
- ``cosine``: cosine annealing from ``lr`` to 0 over the run's epochs.
- ``plateau``: halve the rate after 5 epochs without a better validation loss (the training
  loss when there is no validation data).
"""

from __future__ import annotations

import math
from typing import Any

from torch.optim import Optimizer
from torch.optim.lr_scheduler import CosineAnnealingLR, LambdaLR, ReduceLROnPlateau

__all__ = ["SCHEDULES", "Schedule", "iwae_factor"]


SCHEDULES = ("constant", "iwae", "cosine", "plateau")


def iwae_factor(epoch: int) -> float:
    """The IWAE paper's rate for ``epoch`` (from 0) over the initial one: ``10^(-i/7)`` in
    stage ``i``, which holds epochs ``(3^i - 1)/2`` to ``(3^(i+1) - 1)/2 - 1``.

    >>> [round(iwae_factor(e), 3) for e in (0, 1, 3, 4, 12, 13)]
    [1.0, 0.72, 0.72, 0.518, 0.518, 0.373]
    """
    stage = 0
    while (3 ** (stage + 1) - 1) // 2 <= epoch:
        stage += 1
    return 10 ** (-stage / 7)


class Schedule:
    """One of :data:`SCHEDULES` on ``optimizer``; :meth:`step` after every epoch."""

    def __init__(self, name: str, optimizer: Optimizer, epochs: int) -> None:
        if name not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {list(SCHEDULES)}, got {name!r}")
        self.name = name
        self.scheduler: Any = None
        if name == "iwae":
            self.scheduler = LambdaLR(optimizer, iwae_factor)
        elif name == "cosine":
            self.scheduler = CosineAnnealingLR(optimizer, T_max=max(1, epochs))
        elif name == "plateau":
            self.scheduler = ReduceLROnPlateau(optimizer, factor=0.5, patience=5)
        self.optimizer = optimizer

    @property
    def lr(self) -> float:
        """The rate the next step takes."""
        return self.optimizer.param_groups[0]["lr"]

    def step(self, loss: float) -> None:
        """The epoch is over; ``loss`` is its validation (or training) loss."""
        if isinstance(self.scheduler, ReduceLROnPlateau):
            self.scheduler.step(loss if math.isfinite(loss) else math.inf)
        elif self.scheduler is not None:
            self.scheduler.step()

    def state_dict(self) -> dict[str, Any]:
        return self.scheduler.state_dict() if self.scheduler is not None else {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.scheduler is not None:
            self.scheduler.load_state_dict(state)
