"""fit(): stochastic variational inference on any Pyro program, with validation, early stopping,
checkpoints and exact resume; the trainer composes the named steps of the other modules."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from functools import partial
from pathlib import Path
from typing import Any

import pyro
import torch
from tqdm import tqdm

from ppl_vae.objectives.factory import make_objective, resolve
from ppl_vae.program import Program, ProgramError
from ppl_vae.runtime.distributed import (
    agree,
    broadcast_tensors,
    gather_objects,
    on_root,
    rank_seed,
    world,
)
from ppl_vae.runtime.kernels import flush_denormals
from ppl_vae.training.checkpoint import (
    CheckpointError,
    RunLock,
    rng_state,
    save_checkpoint,
    set_rng_state,
    share_equal,
    write_json,
)
from ppl_vae.training.config import FitConfig, check_config, kl_warmup
from ppl_vae.training.engines import DistributedEngine, FastEngine, SVIEngine
from ppl_vae.training.epoch import EpochLoop
from ppl_vae.training.folder import (
    CHECKPOINT,
    CONFIG,
    RUN_FORMAT,
    read_checkpoint,
    take_folder,
    write_metrics,
)
from ppl_vae.training.preflight import feeds, probe, ready_feeds, split_arguments
from ppl_vae.training.schedules import Schedule
from ppl_vae.training.signals import _deferred_interrupt, _stop_if
from ppl_vae.training.state import FitResult, TrainState
from ppl_vae.training.trackers import Tracker
from ppl_vae.training.validation import (
    count_epoch,
    epoch_record,
    patience_spent,
    report_line,
    val_batches,
    validate,
)

__all__ = ["FitResult", "TrainState", "fit"]


class _Trainer:
    """Everything :func:`fit` holds while it runs; each method is one named step of the loop:
    :meth:`start` (take the folder, resume), :meth:`train_epoch`, :meth:`end_epoch` (validate,
    record, stop), :meth:`checkpoint` and :meth:`finish`."""

    def __init__(
        self,
        program: Program,
        data: Any,
        val: Any,
        config: FitConfig,
        out: Path | None,
        callback: Callable[[int, int, float], None] | None,
        run_info: dict[str, Any] | None,
        trackers: Sequence[Tracker] = (),
    ) -> None:
        self.world = world()
        if trackers and out is None:
            raise ValueError("trackers write into the run folder; give fit out=FOLDER")
        self.trackers = list(trackers) if self.world.root else []
        if not self.world.root:  # rank 0 alone reports and writes the run folder
            config = replace(config, progress=False)
        self.program, self.config, self.out = program, config, out
        self.train_feed, self.val_feed, splits = feeds(data, val, config)
        ready_feeds(self.train_feed, self.val_feed, self.world, config.engine)
        self.dtype, self.device, sites = probe(
            program, self.train_feed, self.val_feed, splits, config.objective
        )
        objective = make_objective(config.objective, config.particles, sites)
        # the particle draws: a stream of each process's own; the data (shuffling, dynamic
        # binarization): one stream, alike on every process
        pyro.set_rng_seed(rank_seed(config.seed, self.world.rank))
        self.gen = torch.Generator(device=self.device).manual_seed(config.seed)
        engine = SVIEngine if config.engine == "svi" else FastEngine
        if self.world.active:
            engine = DistributedEngine
        self.engine = engine(program, objective, config.lr, config.beta)
        optimizer = getattr(self.engine, "optimizer", None)
        self.schedule = Schedule(config.lr_schedule, optimizer, config.epochs)
        self.loop = EpochLoop(
            config,
            self.train_feed,
            self.engine,
            self.gen,
            self.dtype,
            self.device,
            self.checkpoint,
            self.trackers,
            callback,
        )
        self.state = TrainState()
        self.result = FitResult(objective=resolve(config.objective))
        self.lock = RunLock(out) if out is not None and self.world.root else None
        self.run_info = {
            "format": RUN_FORMAT,
            "program": program.recipe,
            "data": splits.spec if splits is not None else None,
            "fit": asdict(config),
            **(run_info or {}),
        }

    # -- the run folder: take it, resume, checkpoint ---------------------------------------------

    @property
    def path(self) -> Path | None:
        return self.out / CHECKPOINT if self.out is not None else None

    def start(self, resume: bool, overwrite: bool) -> None:
        """Take the run folder: lock it; continue the run there (``resume``), replace it
        (``overwrite``), or refuse to touch a folder that holds a run. Under torch.distributed
        rank 0 does this; every rank then starts from the same parameters (rank 0's) and, on
        resume, from the checkpoint rank 0 read."""
        saved = on_root(lambda: self._take_folder(resume, overwrite))
        if saved is not None:
            self._resume(saved)
        broadcast_tensors(list(self.program.parameters.values()))
        for tracker in self.trackers:
            tracker.start(self.out, self.run_info, self.state.global_step)

    def _take_folder(self, resume: bool, overwrite: bool) -> dict[str, Any] | None:
        """The folder part of :meth:`start`; the checkpoint to resume from, if any."""
        if self.out is None or not take_folder(self.out, self.lock, resume, overwrite):
            return None
        return read_checkpoint(self.out, self.run_info, self.config, self.world.size, self.device)

    def _resume(self, saved: dict[str, Any]) -> None:
        """Continue from the checkpoint ``saved``."""
        old = FitConfig(**saved["config"])
        try:
            self.program.load_state_dict(saved["program"])
        except ProgramError as e:
            raise CheckpointError(f"{self.path} does not fit this program: {e}") from e
        self.engine.load_state_dict(saved["optimizer"])
        self.schedule.load_state_dict(saved.get("schedule", {}))
        if old.lr != self.config.lr:
            self.engine.set_lr(self.config.lr)
        rngs = saved.get("rng_ranks", [saved["rng"]])
        set_rng_state(rngs[self.world.rank])
        self.gen.set_state(saved["data_rng"].cpu())
        self.state = TrainState(**saved["train"])
        if self.world.root:  # the log may be an epoch ahead of the checkpoint after a kill
            self._write_metrics()
        self.result.history = self.state.history
        self.result.best_val_loss = self.state.best_val_loss
        if self.config.progress:
            tqdm.write(
                f"resuming {self.path}: epoch {self.state.epoch + 1}, "
                f"step {self.state.step_in_epoch}"
            )

    def checkpoint(self) -> None:
        if self.path is None:
            return
        rngs = gather_objects(rng_state())  # every process's draws, for an exact resume
        if not self.world.root:
            return
        if not (self.out / CONFIG).is_file():
            write_json(self.out / CONFIG, self.run_info)
        state = {
            "config": asdict(self.config),
            "program": self.program.state_dict(),
            "optimizer": self.engine.state_dict(),
            "schedule": self.schedule.state_dict(),
            "rng": rngs[0],
            "data_rng": self.gen.get_state(),
            "train": self.state.as_dict(),
        }
        if state["train"]["best_state"] is not None:  # stored once where it equals the current
            state["train"]["best_state"] = share_equal(
                state["train"]["best_state"], state["program"]
            )
        if self.world.active:
            state["processes"] = self.world.size
            state["rng_ranks"] = rngs
        self.result.checkpoint = save_checkpoint(state, self.path)
        self._write_metrics()
        for tracker in self.trackers:
            tracker.commit()

    def _write_metrics(self) -> None:
        write_metrics(self.out, self.state.history)

    # -- the epoch -------------------------------------------------------------------------------

    def train_epoch(self, interrupted: Callable[[], Any]) -> None:
        on_epoch_start = self.program.hook("on_epoch_start")
        if on_epoch_start is not None:
            on_epoch_start(self.state.epoch, self.config.epochs)
        self.program.train(True)
        self.started = time.perf_counter()
        note = self.loop.run(self.state, interrupted)
        if note is not None:
            self.result.step_mode = note

    def end_epoch(self) -> bool:
        """Validate, record the epoch, keep the best weights, checkpoint; True when training
        stops."""
        config, state, schedule = self.config, self.state, self.schedule
        val = None
        if self.val_feed is not None:
            batches = partial(
                val_batches, self.val_feed, config.eval_batch_size, self.dtype, self.device
            )
            val = validate(
                self.program, self.engine, batches, config.seed, state.epoch, self.world
            )
        lr = schedule.lr if schedule.scheduler is not None else None  # the rate it trained at
        record = epoch_record(state, val, time.perf_counter() - self.started, lr)
        if schedule.scheduler is not None:
            schedule.step(record.get("val_loss", record["train_loss"]))
        state.history.append(record)
        for tracker in self.trackers:
            tracker.log_epoch(state.global_step, record)
        state.next_epoch()
        best = count_epoch(state, record.get("val_loss", record["train_loss"]), kl_warmup(config))
        if best and config.patience is not None:
            state.best_state = self.program.state_dict()
        self.result.history, self.result.best_val_loss = state.history, state.best_val_loss
        if config.progress:
            tqdm.write(report_line(record, config.epochs))
        stop = patience_spent(state, config.patience)
        if stop:
            state.epoch = config.epochs
            self.result.stopped_early = True
        self.checkpoint()
        return stop

    def finish(self) -> FitResult:
        """Evaluation mode; with patience set, the best epoch's weights."""
        self.program.train(False)
        if self.state.best_state is not None:
            self.program.load_state_dict(self.state.best_state)
        self.result.steps = self.state.global_step
        return self.result


def fit(
    program: Any,
    *data: Any,
    config: FitConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[int, int, float], None] | None = None,
    run_info: dict[str, Any] | None = None,
    overwrite: bool = False,
    trackers: Sequence[Tracker] = (),
    **overrides: Any,
) -> FitResult:
    """Train any Pyro program by stochastic variational inference.

    Called as ``fit(model, guide, data[, val])`` with two Pyro functions, or as
    ``fit(obj, data[, val])`` with any object that has ``model`` and ``guide`` methods (the
    built-in :class:`~ppl_vae.models.VAE`, Pyro's example VAE, an ``nn.Module`` or not). What
    a program must be is written down in :mod:`ppl_vae.program`; ``fit`` asks nothing more.

    Each step draws a minibatch, evaluates the Pyro objective (``config.objective``) on
    ``model(*batch)`` / ``guide(*batch)`` and takes an Adam step on every parameter the program
    registered (found as ``pyro.infer.SVI`` finds them, in a first trace, plus the parameters
    of any ``nn.Module`` among the program's objects). The KL weight is the effect handler
    :class:`~ppl_vae.objectives.KLWeight` over every latent site of model and guide: ``beta``,
    after a linear rise from 0 over the first ``W = kl_warmup(config)`` epochs, step by step
    (:func:`~ppl_vae.objectives.warmup_weight`; by default W = 3, or a third of a shorter run,
    and 0 under the IWAE objectives). Validation scores the bound at ``beta`` with fixed
    draws after every epoch, and patience counts only epochs after the warm-up.
    ``objective="auto"`` is STL; ``"mean-field"`` takes the analytic KL where every latent
    site has a registered ``kl_divergence`` between the guide's and the model's distributions.

    Data: a :class:`~ppl_vae.data.DataSplits` (its ``dynamic`` flag redraws binary training
    data every epoch), a tensor or numpy array of rows, a tuple of them (passed to the program
    as several arguments, e.g. data and labels), a ``torch.utils.data.Dataset`` (shuffled by
    ``fit``) or a ``DataLoader`` (streamed as it yields; exact resume needs its order to follow
    from torch's random state or its ``generator``, see :class:`~ppl_vae.training.LoaderFeed`).
    Floating-point data are cast to the parameters' dtype and device. Values the model observes
    are checked against their distributions' supports before training starts.

    With ``out`` set, the run locks the folder (a second writer is refused), writes
    ``out/config.json`` (how to rebuild the program and reload the data, where known),
    ``out/checkpoint.pt`` (parameters, optimizer state, random states, position in the epoch,
    history) and ``out/metrics.jsonl`` (one line per epoch, derived from the checkpoint), each
    atomically; ``ppl-vae evaluate | sample | reconstruct`` read that folder. A folder that
    holds a run is refused unless ``resume`` or ``overwrite``. ``resume=True`` checks that the
    folder holds this run (program, data, settings: each difference is named; only
    :data:`RESUMABLE` settings may change) and continues exactly as if it had not stopped.
    SIGTERM is handled as Ctrl-C. With
    ``config.patience`` set, the program comes back with the weights of its best validation
    epoch. Ctrl-C finishes the current step, saves, and raises ``KeyboardInterrupt``.

    Args:
        program: the program, or the model when the guide follows it.
        *data: ``[guide,] data[, val]``.
        config: a :class:`FitConfig`; keyword ``overrides`` replace its fields.
        out: folder for the checkpoint, the metrics log and the run's config.
        resume: continue from ``out/checkpoint.pt`` when it exists.
        callback: called as ``callback(epoch, step, loss)`` after every step.
        run_info: more fields for ``out/config.json`` (the CLI records its flags there).
        overwrite: replace a run that ``out`` holds (without it, and without ``resume``, a
            folder with a checkpoint is refused).
        trackers: :class:`~ppl_vae.training.Tracker` objects (TensorBoard, MLflow, CSV) that
            get the settings, every step's loss and every epoch's record; they stay open
            after ``fit`` (log the evaluation, then close them).

    Several processes: under an initialized ``torch.distributed`` group (``torchrun``), each
    process trains on its rows of every global batch of ``batch_size`` rows, with the
    gradients averaged over all of them (:class:`~ppl_vae.training.DistributedEngine`); rank 0
    alone writes ``out`` and reports. The particle draws of each process come from a stream
    of its own, the shuffling and dynamic binarization from one stream alike everywhere, and
    all are checkpointed, so a run resumes exactly with the same number of processes.

    Returns:
        A :class:`FitResult`.
    """
    config = replace(config or FitConfig(), **overrides)
    check_config(config)
    program, train, val = split_arguments(program, data)
    trainer = _Trainer(
        program,
        train,
        val,
        config,
        Path(out) if out is not None else None,
        callback,
        run_info,
        trackers,
    )
    try:
        trainer.start(resume, overwrite)
        flush = flush_denormals(config.denormals == "flush")
        with flush, _deferred_interrupt() as interrupted:
            while trainer.state.epoch < config.epochs:
                trainer.train_epoch(interrupted)
                if trainer.end_epoch():
                    break
                _stop_if(interrupted, agree(interrupted() is not None))
    except KeyboardInterrupt:
        trainer.checkpoint()
        if config.progress and trainer.path is not None:
            tqdm.write(f"interrupted; saved {trainer.path} (resume with resume=True / --resume)")
        program.train(False)
        raise
    finally:
        if trainer.lock is not None:
            trainer.lock.release()
    return trainer.finish()
