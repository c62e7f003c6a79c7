"""fit(): stochastic variational inference on any Pyro program, with validation, early stopping,
checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from torch import Tensor
from tqdm import tqdm

from ppl_vae.data.splits import DataSplits
from ppl_vae.objectives.analytic import kl_obstacles
from ppl_vae.objectives.factory import make_objective, resolve
from ppl_vae.objectives.weights import warmup_weight
from ppl_vae.program import Program, ProgramError, check_pair, traces
from ppl_vae.runtime.compiler import compiler_available
from ppl_vae.runtime.distributed import (
    agree,
    broadcast_tensors,
    gather_objects,
    on_root,
    rank_seed,
    sum_all,
    world,
)
from ppl_vae.runtime.kernels import bernoulli, flush_denormals
from ppl_vae.training.batching import LoaderFeed, TensorFeed, check_finite
from ppl_vae.training.checkpoint import (
    CheckpointError,
    RunLock,
    load_checkpoint,
    read_json,
    rng_state,
    save_checkpoint,
    set_rng_state,
    write_json,
    write_text,
)
from ppl_vae.training.config import RESUMABLE, FitConfig, check_config, kl_warmup
from ppl_vae.training.engines import (
    DistributedEngine,
    FastEngine,
    NonFiniteLoss,
    SVIEngine,
    bound_terms,
    mean_loss,
)
from ppl_vae.training.folder import (
    CHECKPOINT,
    CONFIG,
    METRICS,
    RUN_FILES,
    RUN_FORMAT,
    _differences,
)
from ppl_vae.training.preflight import cast, check_data, discover, feeds, split_arguments
from ppl_vae.training.schedules import Schedule
from ppl_vae.training.signals import _deferred_interrupt, _stop_if
from ppl_vae.training.trackers import Tracker

__all__ = ["FitResult", "TrainState", "fit"]


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


class _Trainer:
    """Everything :func:`fit` holds while it runs; each method is one named step of the loop."""

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
        self.program, self.config, self.out, self.callback = program, config, out, callback
        self.train_feed, self.val_feed, splits = feeds(data, val, config)
        if self.world.active:
            if config.engine == "svi":
                raise ValueError(
                    "engine 'svi' trains in one process; under torch.distributed use the fast "
                    "engine (--engine fast)"
                )
            for feed in (self.train_feed, self.val_feed):
                if feed is not None:
                    feed.world = self.world
                if isinstance(feed, LoaderFeed):
                    feed.check_shared_order()
        for feed, what in (
            (self.train_feed, "the training data"),
            (self.val_feed, "the validation data"),
        ):
            if isinstance(feed, TensorFeed):
                check_finite(feed.batch, what)
        # probing runs the program; it leaves the random state as it found it, so training
        # draws the same numbers as pyro.infer.SVI seeded alike
        with torch.random.fork_rng():
            self.dtype, self.device = discover(program, self.train_feed.first())
            for feed, what in ((self.train_feed, "the data"), (self.val_feed, "validation data")):
                if isinstance(feed, TensorFeed):
                    feed.to(self.dtype, self.device, what)
            self._check_first_batches(splits)
            check_pair(*traces(program.model, program.guide, self._first_train, {}))
            # only the analytic KL reads the program's KL structure (a trace of its dependencies)
            sites = (
                kl_obstacles(program.model, program.guide, *self._first_train)
                if config.objective == "mean-field"
                else True
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

    def _check_first_batches(self, splits: DataSplits | None) -> None:
        first = cast(self.train_feed.first(), self.dtype, self.device)
        if self.train_feed.dynamic:
            first = (bernoulli(first[0]), *first[1:])
        self._first_train = first
        check_data(self.program, first, splits, "the training data")
        if self.val_feed is not None:
            val_first = cast(self.val_feed.first(), self.dtype, self.device)
            check_data(self.program, val_first, splits, "the validation data")

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self.out / CHECKPOINT if self.out is not None else None

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
        if self.world.active:
            state["processes"] = self.world.size
            state["rng_ranks"] = rngs
        self.result.checkpoint = save_checkpoint(state, self.path)
        self._write_metrics()
        for tracker in self.trackers:
            tracker.commit()

    def _write_metrics(self) -> None:
        """``metrics.jsonl`` as the checkpoint's history says, one line per epoch, rewritten
        whole and atomically: a kill at any instant cannot log an epoch twice."""
        lines = "".join(json.dumps(record) + "\n" for record in self.state.history)
        write_text(self.out / METRICS, lines)

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
        if self.out is None:
            return None
        if self.out.exists() and not self.out.is_dir():
            raise ValueError(f"{self.out} is a file, not a folder; give --out a folder")
        try:
            self.out.mkdir(parents=True, exist_ok=True)
            self.lock.acquire()
        except PermissionError as e:
            raise ValueError(
                f"cannot write to {self.out}: {e.strerror}; pick another --out"
            ) from e
        for name in RUN_FILES:  # a write killed halfway leaves its temporary file
            for tmp in self.out.glob(f".{name}.*.tmp"):
                tmp.unlink(missing_ok=True)
        if resume and self.path.exists():
            return self._read_checkpoint()
        if self.path.exists() and not overwrite:
            raise CheckpointError(
                f"{self.out} holds a run already ({CHECKPOINT}); pass resume=True (--resume) to "
                "continue it, overwrite=True (--overwrite) to replace it, or another folder"
            )
        for name in RUN_FILES:
            (self.out / name).unlink(missing_ok=True)
        return None

    def _read_checkpoint(self) -> dict[str, Any]:
        """The checkpoint, after checking that it holds this run."""
        saved = load_checkpoint(self.path, map_location=self.device)
        if "train" not in saved:
            raise CheckpointError(
                f"{self.path} was written by an older ppl_vae; train into a new folder"
            )
        old = FitConfig(**saved["config"])
        recorded = read_json(self.out / CONFIG) if (self.out / CONFIG).is_file() else {}
        recorded = {**recorded, "fit": asdict(old)}
        changed = _differences(recorded, self.run_info)
        if changed:
            raise CheckpointError(
                f"{self.out} holds another run than this one: {'; '.join(changed)}. Resume with "
                f"its settings (only {', '.join(RESUMABLE)} may change), or train into "
                "another folder"
            )
        if old.lr != self.config.lr and self.config.lr_schedule != "constant":
            raise CheckpointError(
                f"{self.out} follows the {self.config.lr_schedule!r} learning-rate schedule "
                f"from lr {old.lr}; resume with --lr {old.lr} (the schedule sets the rate)"
            )
        processes = saved.get("processes", 1)
        if processes != self.world.size:
            how = "without torchrun" if processes == 1 else f"--nproc-per-node {processes}"
            raise CheckpointError(
                f"{self.path} was written by a run over {processes} processes and this one has "
                f"{self.world.size}; an exact resume needs as many (torchrun {how}), or "
                "evaluate it (ppl-vae evaluate), which any number of processes can"
            )
        return saved

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

    # -- one epoch -----------------------------------------------------------------------------

    def train_epoch(self, interrupted: Callable[[], bool]) -> None:
        config, state = self.config, self.state
        on_epoch_start = self.program.hook("on_epoch_start")
        if on_epoch_start is not None:
            on_epoch_start(state.epoch, config.epochs)
        self.program.train(True)
        self.started = time.perf_counter()
        n = self.train_feed.n_batches
        bar = tqdm(
            total=n,
            initial=state.step_in_epoch,
            desc=f"epoch {state.epoch + 1}/{config.epochs}",
            disable=not config.progress,
            leave=False,
            mininterval=0.5,
        )
        if isinstance(self.engine, DistributedEngine):
            self.engine.interrupted = interrupted
        before = getattr(self.engine, "graph_note", None)
        with pyro.validation_enabled(False) if self._checks_skippable() else nullcontext():
            if type(self.engine) is FastEngine:
                self.engine.use_graph(self._graph_mode())
            self._steps(interrupted, bar)
        bar.close()
        note = getattr(self.engine, "graph_note", None)
        if note is not None:
            self.result.step_mode = note
            if note != before and config.progress:
                tqdm.write(f"epoch {state.epoch + 1}: {note}")
        self.engine.set_weight(config.beta)

    def _graph_mode(self) -> str | None:
        """What ``compile`` asks of this epoch: "compile", "trace" or None (eager steps). A
        traced step needs Pyro's checks off (they read values) and the CPU; the caller asks
        only the plain fast engine (not SVI, not torch.distributed)."""
        mode = self.config.compile
        if mode == "auto":  # where compiling paid (benchmarks/README.md, train_speed.py)
            n = self.train_feed.n_batches or 0
            mode = "compile" if n >= 200 and compiler_available() else "off"
        if mode == "off" or self.device.type != "cpu" or pyro.poutine.util.is_validation_enabled():
            return None
        return mode

    def _checks_skippable(self) -> bool:
        """Whether Pyro's argument and support checks may be skipped in this epoch: every
        training row has passed them once (a full first epoch over in-memory rows, with no
        skipped step), so later epochs, the same rows reshuffled (or redrawn 0/1 by dynamic
        binarization), can only fail them through a parameter gone non-finite, which the loss
        check before each update catches. Saves about 4% of an epoch at 2 threads, 1% at 1
        (seed network, `benchmarks/validation_cost.py`). A DataLoader's batches may change
        between epochs and stay checked."""
        state = self.state
        return (
            state.epoch >= 1
            and state.skipped == 0
            and isinstance(self.train_feed, TensorFeed)
            and pyro.poutine.util.is_validation_enabled()
        )

    def _steps(self, interrupted: Callable[[], bool], bar: Any) -> None:
        config, state = self.config, self.state
        n = self.train_feed.n_batches
        for batch in self.train_feed.epoch(state, self.gen, self.dtype, self.device):
            b = state.step_in_epoch
            weight = warmup_weight(config.beta, kl_warmup(config), state.epoch, b, n)
            self.engine.set_weight(weight)
            loss = self._step(batch, b)
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

    def _step(self, batch: tuple, b: int) -> float | None:
        """One step; None when a step with a non-finite loss was skipped."""
        where = f"epoch {self.state.epoch + 1}, step {b}"
        try:
            return self.engine.step(batch)
        except NonFiniteLoss as e:
            problem = f"the loss became {e.value}"
        except ValueError as e:  # Pyro's validation: a distribution's parameter went NaN/inf
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "invalid values" not in first_line:
                raise ValueError(f"training failed at {where}: {first_line}") from e
            problem = f"a parameter left its support ({first_line.rstrip(':')})"
        if self.state.skipped < self.config.skip_nonfinite:
            self.state.skipped += 1
            return None
        raise FloatingPointError(
            f"the run diverged at {where}: {problem}; the last checkpoint is kept. Lower the "
            "learning rate (resume with --resume --lr SMALLER), warm the KL up (--warmup), or "
            "let up to N such steps be skipped (--skip-nonfinite N)"
        )

    # -- validation and the stopping rule ------------------------------------------------------

    def validate(self) -> float | None:
        if self.val_feed is None:
            return None
        self.program.train(False)
        where = f"the run diverged by the end of epoch {self.state.epoch + 1}"
        try:
            loss = mean_loss(
                self.engine.model,
                self.engine.guide,
                self.engine.objective,
                self._val(),
                self.config.seed,
            )
            recon, kl, n = bound_terms(self.program.model, self.program.guide, self._val(), 0)
        except ValueError as e:
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            if "invalid values" not in first_line:
                raise
            raise FloatingPointError(
                f"{where}: on validation data a parameter left its support "
                f"({first_line.rstrip(':')}); lower the learning rate (--lr) or warm the KL up "
                "(--warmup); the last good checkpoint is kept"
            ) from e
        if self.world.active:  # means over this process's rows -> means over all rows
            total, recon, kl, n = sum_all([loss * n, recon * n, kl * n, n])
            loss, recon, kl = total / n, recon / n, kl / n
        self.terms = recon, kl
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"{where}: the validation loss is {loss}; lower the learning rate (--lr); the "
                "last good checkpoint is kept"
            )
        self.program.train(True)
        return loss

    def _val(self) -> Iterator[tuple]:
        """The validation batches (under torch.distributed, this process's rows of each)."""
        for b in self.val_feed.batches(self.config.eval_batch_size):
            yield cast(self.val_feed.shard(b), self.dtype, self.device)

    def end_epoch(self) -> bool:
        """Record the epoch, keep the best weights, checkpoint; True when training stops."""
        config, state = self.config, self.state
        record = {
            "epoch": state.epoch + 1,
            "train_loss": state.loss_sum / max(1, state.loss_count),
        }
        val = self.validate()
        if val is not None:
            record["val_loss"] = val
            record["val_reconstruction"], record["val_kl"] = self.terms
        record["seconds"] = time.perf_counter() - self.started
        if self.schedule.scheduler is not None:
            record["lr"] = self.schedule.lr  # the rate this epoch trained at
            self.schedule.step(record.get("val_loss", record["train_loss"]))
        state.history.append(record)
        for tracker in self.trackers:
            tracker.log_epoch(state.global_step, record)
        state.epoch, state.step_in_epoch, state.perm = state.epoch + 1, 0, None
        state.loss_sum, state.loss_count = 0.0, 0
        current = record.get("val_loss", record["train_loss"])
        if current < state.best_val_loss:
            state.best_val_loss, state.bad_epochs = current, 0
            if config.patience is not None:
                state.best_state = self.program.state_dict()
        elif state.epoch > kl_warmup(config):
            state.bad_epochs += 1
        self.result.history, self.result.best_val_loss = state.history, state.best_val_loss
        self._report(record)
        stop = config.patience is not None and state.bad_epochs >= config.patience
        if stop:
            state.epoch = config.epochs
            self.result.stopped_early = True
        self.checkpoint()
        return stop

    def _report(self, record: dict[str, float]) -> None:
        if self.config.progress:
            val_text = f"  val {record['val_loss']:.2f}" if "val_loss" in record else ""
            tqdm.write(
                f"epoch {record['epoch']}/{self.config.epochs}  train {record['train_loss']:.2f}"
                f"{val_text} nats  ({record['seconds']:.1f} s)"
            )

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
