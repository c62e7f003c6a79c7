"""One training epoch: the step loop, how its steps run (checks, traced graph), and one step
with its non-finite handling."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pyro
import torch
from tqdm import tqdm

from ppl_vae.objectives.weights import warmup_weight
from ppl_vae.runtime.compiler import compiler_available
from ppl_vae.training.batching import Feed, TensorFeed
from ppl_vae.training.config import FitConfig, kl_warmup
from ppl_vae.training.engines import DistributedEngine, FastEngine, NonFiniteLoss
from ppl_vae.training.signals import _stop_if
from ppl_vae.training.state import TrainState
from ppl_vae.training.trackers import Tracker

__all__ = ["EpochLoop", "checks_skippable", "graph_mode", "guarded_step"]


def graph_mode(
    setting: str, n_batches: int | None, device: torch.device, convolutional: bool = False
) -> str | None:
    """What the ``compile`` setting asks of this epoch: "compile", "trace" or None (eager
    steps). A traced step needs Pyro's checks off (they read values) and the CPU; the caller
    asks only the plain fast engine (not SVI, not torch.distributed). ``auto`` compiles where
    it paid: MLP steps on long epochs (benchmarks/README.md, train_speed.py), not a program
    with convolutions, whose compiled step was 1.11-1.18x slower than eager on the CPU
    (benchmarks/conv.py)."""
    mode = setting
    if mode == "auto":
        long_epoch = (n_batches or 0) >= 200
        mode = "compile" if long_epoch and not convolutional and compiler_available() else "off"
    if mode == "off" or device.type != "cpu" or pyro.poutine.util.is_validation_enabled():
        return None
    return mode


def checks_skippable(state: TrainState, feed: Feed) -> bool:
    """Whether Pyro's argument and support checks may be skipped in this epoch: every
    training row has passed them once (a full first epoch over in-memory rows, with no
    skipped step), so later epochs, the same rows reshuffled (or redrawn 0/1 by dynamic
    binarization), can only fail them through a parameter gone non-finite, which the loss
    check before each update catches. Saves about 4% of an epoch at 2 threads, 1% at 1
    (seed network, `benchmarks/validation_cost.py`). A DataLoader's batches may change
    between epochs and stay checked."""
    return (
        state.epoch >= 1
        and state.skipped == 0
        and isinstance(feed, TensorFeed)
        and pyro.poutine.util.is_validation_enabled()
    )


def guarded_step(
    engine: FastEngine, batch: tuple, state: TrainState, skip_nonfinite: int
) -> float | None:
    """One step of ``engine`` on ``batch``; None when a step with a non-finite loss (or a
    parameter out of its support) was skipped, which ``skip_nonfinite`` allows that many
    times in the run (counted in ``state.skipped``)."""
    where = f"epoch {state.epoch + 1}, step {state.step_in_epoch}"
    try:
        return engine.step(batch)
    except NonFiniteLoss as e:
        problem = f"the loss became {e.value}"
    except ValueError as e:  # Pyro's validation: a distribution's parameter went NaN/inf
        first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "invalid values" not in first_line:
            raise ValueError(f"training failed at {where}: {first_line}") from e
        problem = f"a parameter left its support ({first_line.rstrip(':')})"
    if state.skipped < skip_nonfinite:
        state.skipped += 1
        return None
    raise FloatingPointError(
        f"the run diverged at {where}: {problem}; the last checkpoint is kept. Lower the "
        "learning rate (resume with --resume --lr SMALLER), warm the KL up (--warmup), or "
        "let up to N such steps be skipped (--skip-nonfinite N)"
    )


@dataclass
class EpochLoop:
    """The steps of one epoch over ``feed``: the KL warm-up weight of each step, the step,
    its loss to the progress bar, the trackers and ``callback``, a held Ctrl-C, and
    ``checkpoint`` every ``config.checkpoint_every`` steps."""

    config: FitConfig
    feed: Feed
    engine: FastEngine
    gen: torch.Generator  # the data's stream (shuffling, dynamic binarization)
    dtype: torch.dtype
    device: torch.device
    checkpoint: Callable[[], None]
    trackers: Sequence[Tracker] = ()
    callback: Callable[[int, int, float], None] | None = None

    def run(self, state: TrainState, interrupted: Callable[[], Any]) -> str | None:
        """Train the rest of epoch ``state.epoch``; how the engine ran its steps, if it
        says (``graph_note``)."""
        config, engine = self.config, self.engine
        bar = tqdm(
            total=self.feed.n_batches,
            initial=state.step_in_epoch,
            desc=f"epoch {state.epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=False,
            mininterval=0.5,
        )
        if isinstance(engine, DistributedEngine):
            engine.interrupted = interrupted
        before = getattr(engine, "graph_note", None)
        skip = checks_skippable(state, self.feed)
        with pyro.validation_enabled(False) if skip else nullcontext():
            if type(engine) is FastEngine:
                mode = graph_mode(
                    config.compile, self.feed.n_batches, self.device, engine.convolutional
                )
                engine.use_graph(mode)
            self._steps(state, interrupted, bar)
        bar.close()
        note = getattr(engine, "graph_note", None)
        if note is not None and note != before and config.progress:
            tqdm.write(f"epoch {state.epoch + 1}: {note}")
        engine.set_weight(config.beta)
        return note

    def _steps(self, state: TrainState, interrupted: Callable[[], Any], bar: Any) -> None:
        config = self.config
        n = self.feed.n_batches
        for batch in self.feed.epoch(state, self.gen, self.dtype, self.device):
            b = state.step_in_epoch
            self.engine.set_weight(
                warmup_weight(config.beta, kl_warmup(config), state.epoch, b, n)
            )
            loss = guarded_step(self.engine, batch, state, config.skip_nonfinite)
            state.step_in_epoch, state.global_step = b + 1, state.global_step + 1
            bar.update(1)
            if loss is not None:
                for tracker in self.trackers:
                    tracker.log_step(state.global_step, loss)
                state.loss_sum, state.loss_count = state.loss_sum + loss, state.loss_count + 1
                if b % 20 == 0:
                    bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
                if self.callback is not None:
                    self.callback(state.epoch, b, loss)
            _stop_if(interrupted, getattr(self.engine, "any_interrupted", None))
            if config.checkpoint_every and state.step_in_epoch % config.checkpoint_every == 0:
                self.checkpoint()
