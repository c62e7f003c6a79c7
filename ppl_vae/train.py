"""fit(): stochastic variational inference on any Pyro program, with validation, early stopping,
checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import os
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI
from torch import Tensor
from tqdm import tqdm

from .batching import Feed, TensorFeed, as_batch, cast_batch, check_finite, make_feed
from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import DataSplits
from .handlers import KLWeight, RegisteredParams, warmup_weight
from .objectives import OBJECTIVES, kl_obstacles, make_objective, resolve
from .program import Program, ProgramError, as_program, binary_observation, check_observed

__all__ = ["FitConfig", "FitResult", "TrainState", "fit", "negative_bound"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
CONFIG = "config.json"
RUN_FORMAT = "ppl_vae-run-2"
ENGINES = ("fast", "svi")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose ``help`` (and ``choices``) the CLI flag takes over."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains. Every field is a CLI flag of ``ppl-vae train``."""

    epochs: int = _opt(10, "passes over the training data")
    batch_size: int = _opt(100, "data points per optimisation step")
    lr: float = _opt(1e-3, "Adam's learning rate")
    objective: str = _opt(
        "auto",
        "mean-field (analytic KL), elbo (Monte Carlo KL), stl, iwae, iwae-dreg; "
        "auto: mean-field where every latent site has a closed-form KL, else stl",
        OBJECTIVES,
    )
    particles: int = _opt(1, "draws per data point; the K of the IWAE bound")
    beta: float = _opt(1.0, "KL weight (beta-VAE) on every latent site; 1 is the ELBO")
    seed: int = _opt(0, "seeds the initial noise, shuffling, dynamic binarization and draws")
    warmup: float = _opt(
        0, "KL warm-up: the KL weight rises linearly from 0 to beta over this many epochs"
    )
    patience: int | None = _opt(
        None, "stop after this many epochs without a better val loss (counted after warm-up)"
    )
    checkpoint_every: int = _opt(0, "also checkpoint every N steps in an epoch (0: epoch ends)")
    engine: str = _opt("fast", "fast: Pyro ELBO + one torch Adam; svi: pyro.infer.SVI", ENGINES)
    progress: bool = _opt(True, "show a progress bar and a line per epoch")
    eval_batch_size: int = _opt(1000, "data points per validation batch")


# Fields that may change between an interrupted run and its resumption.
_RESUMABLE = {"epochs", "patience", "progress", "checkpoint_every", "eval_batch_size"}


@dataclass
class FitResult:
    """What :func:`fit` did: one ``history`` entry per epoch (``train_loss``, ``val_loss`` in
    nats per data point, i.e. minus the bound), the best validation loss, and whether early
    stopping ended the run."""

    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    stopped_early: bool = False
    checkpoint: Path | None = None
    #: the objective trained with (what ``auto`` chose: ``mean-field`` or ``stl``)
    objective: str = ""


@dataclass
class TrainState:
    """Where a run stands; with the parameters, the optimizer and the random states, this is
    what a checkpoint holds."""

    epoch: int = 0  # epochs completed
    step_in_epoch: int = 0  # steps of the current epoch completed
    perm: Tensor | None = None  # this epoch's order of the training rows
    loss_sum: float = 0.0  # sum of this epoch's step losses so far
    history: list[dict[str, float]] = field(default_factory=list)
    best_val_loss: float = math.inf
    bad_epochs: int = 0  # epochs since the best, counted after the warm-up
    best_state: dict[str, Any] | None = None  # the best epoch's program state (with patience)
    loader_rng: dict[str, Any] | None = None  # random states at this epoch's start (loaders)

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


# --------------------------------------------------------------------------------------------
# Setting up: the program, its data, its parameters, the objective
# --------------------------------------------------------------------------------------------


def _arguments(program: Any, args: tuple) -> tuple[Program, Any, Any]:
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


def _check_config(config: FitConfig) -> None:
    if config.engine not in ENGINES:
        raise ValueError(f"unknown engine {config.engine!r}; choose one of {list(ENGINES)}")
    if config.warmup < 0:
        raise ValueError(f"warmup must be a number of epochs >= 0, got {config.warmup}")
    if config.beta < 0:
        raise ValueError(f"beta must be >= 0, got {config.beta}")
    if config.objective.startswith("iwae") and (config.warmup or config.beta != 1.0):
        raise ValueError(
            "a KL weight (beta or warm-up) scales the latent sites, which inside the IWAE "
            "log-sum-exp is no bound; use beta=1 and warmup=0 with iwae objectives, or warm up "
            "with an ELBO objective first"
        )
    if config.batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {config.batch_size}")


def _feeds(data: Any, val: Any, config: FitConfig) -> tuple[Feed, Feed | None, DataSplits | None]:
    splits = data if isinstance(data, DataSplits) else None
    if splits is not None:
        if splits.dynamic and (splits.train.min() < 0 or splits.train.max() > 1):
            raise ValueError("dynamic binarization needs training data in [0, 1]")
        data, val = splits.train, splits.val if val is None else val
    train = make_feed(data, config.batch_size, splits is not None and splits.dynamic, "the data")
    val_feed = None if val is None else make_feed(val, config.eval_batch_size, what="val data")
    return train, val_feed, splits


def _first_trace(program: Program, batch: tuple, what: str) -> dict[str, Tensor]:
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


def _discover(program: Program, first: tuple) -> tuple[torch.dtype, torch.device]:
    """Find the program's parameters on the first batch; return the dtype and device that
    the data are cast to: the modules' when the program shows them, else the data's own
    (or the default dtype, if the program fails on the data's)."""
    known = program.dtype_and_device()
    if known is not None:
        _first_trace(program, _as(first, *known), "the first batch")
        return known
    dtype = first[0].dtype if first[0].is_floating_point() else torch.get_default_dtype()
    device = first[0].device
    try:
        _first_trace(program, _as(first, dtype, device), "the first batch")
    except ProgramError:
        if dtype == torch.get_default_dtype():
            raise
        dtype = torch.get_default_dtype()
        _first_trace(program, _as(first, dtype, device), "the first batch")
    return dtype, device


def _as(batch: tuple, dtype: torch.dtype, device: torch.device) -> tuple:
    return cast_batch(batch, dtype, device, "the data")


def _check_data(program: Program, batch: tuple, splits: DataSplits | None, what: str) -> None:
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


# --------------------------------------------------------------------------------------------
# Engines: one optimisation step
# --------------------------------------------------------------------------------------------


def _adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused where the parameters' device has the kernel: the same update
    to float rounding (2e-8 after 50 steps, measured), 0.20 ms a step on the seed network's
    parameters against 0.62 ms for the default per-tensor loop (2 CPU threads)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


class _FastEngine:
    """The Pyro objective on the program, one ``torch.optim.Adam`` over every parameter."""

    def __init__(self, program: Program, objective: Any, lr: float, beta: float) -> None:
        params = list(program.parameters.values())
        self.weights = KLWeight(beta), KLWeight(beta)
        held = RegisteredParams(params), RegisteredParams(params)
        self.model = held[0](self.weights[0](program.model))
        self.guide = held[1](self.weights[1](program.guide))
        self.objective = objective
        self.optimizer = _adam(params, lr)
        self._checked = False

    def set_weight(self, weight: float) -> None:
        for w in self.weights:
            w.weight = weight

    def step(self, batch: tuple) -> float:
        loss = self.objective.differentiable_loss(self.model, self.guide, *batch) / len(batch[0])
        if not loss.requires_grad:
            raise ProgramError(
                "the loss does not depend on any parameter of the program; register the "
                "networks the model and guide use (pyro.module) or give fit their nn.Module"
            )
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if not self._checked:
            self._check_gradients()
        self.optimizer.step()
        return loss.item()

    def _check_gradients(self) -> None:
        """After the first backward pass: some parameter fit steps must have a gradient."""
        self._checked = True
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if all(p.grad is None for p in params):
            raise ProgramError(
                "no parameter that fit found got a gradient: the model and guide compute with "
                "other tensors than those they register (pyro.module / pyro.param), or than "
                "the nn.Module fit was given holds"
            )

    def state_dict(self) -> Any:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.optimizer.load_state_dict(state)


class _SVIEngine(_FastEngine):
    """``pyro.infer.SVI`` with ``pyro.optim.Adam``: steps what the param store holds."""

    def __init__(self, program: Program, objective: Any, lr: float, beta: float) -> None:
        registered = {id(t) for t in pyro.get_param_store()._params.values()}
        unseen = [n for n, p in program.parameters.items() if id(p) not in registered]
        if unseen:
            raise ProgramError(
                f"engine 'svi' steps only what pyro.module / pyro.param register, and "
                f"{len(unseen)} parameters of {program.name} are not registered (first: "
                f"{unseen[0]}); register them, or use engine='fast'"
            )
        self.weights = KLWeight(beta), KLWeight(beta)
        self.model = self.weights[0](program.model)
        self.guide = self.weights[1](program.guide)
        self.svi = SVI(self.model, self.guide, pyro.optim.Adam({"lr": lr}), loss=objective)
        self.objective = objective

    def step(self, batch: tuple) -> float:
        return self.svi.step(*batch) / len(batch[0])

    def state_dict(self) -> Any:
        return self.svi.optim.get_state()

    def load_state_dict(self, state: Any) -> None:
        self.svi.optim.set_state(state)


def _mean_loss(model: Callable, guide: Callable, objective: Any, batches: Any, seed: int | None):
    """Minus the objective's bound per data point over ``batches``, with fixed draws when
    ``seed`` is set (the global random state is left as it was)."""
    with torch.random.fork_rng(), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        total, n = 0.0, 0
        for batch in batches:
            total += float(objective.differentiable_loss(model, guide, *batch))
            n += len(batch[0])
    return total / max(n, 1)


def negative_bound(
    program: Any, x: Any, objective: Any, batch_size: int = 1000, seed: int | None = 0
) -> float:
    """Minus the objective's bound, averaged over the data points of ``x`` (rows of a tensor,
    or a tuple of tensors), in nats, for any program :func:`ppl_vae.program.as_program` takes.

    With ``seed`` set, the draws are fixed (common random numbers across calls) and the global
    random state is left as it was.
    """
    program = as_program(program)
    feed = TensorFeed(as_batch(x), batch_size, shuffle=False)
    return _mean_loss(program.model, program.guide, objective, feed.batches(batch_size), seed)


# --------------------------------------------------------------------------------------------
# The trainer: one epoch, one validation, the stopping rule, checkpoints
# --------------------------------------------------------------------------------------------


@contextmanager
def _deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """Hold Ctrl-C until the current step ends, so a checkpoint never sees half an update."""
    hit = {"flag": False}
    if threading.current_thread() is not threading.main_thread():
        yield lambda: False
        return

    def handler(signum: int, frame: Any) -> None:
        if hit["flag"]:  # a second Ctrl-C stops at once
            raise KeyboardInterrupt
        hit["flag"] = True

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: hit["flag"]
    finally:
        signal.signal(signal.SIGINT, previous)


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
    ) -> None:
        self.program, self.config, self.out, self.callback = program, config, out, callback
        self.train_feed, self.val_feed, splits = _feeds(data, val, config)
        for feed, what in (
            (self.train_feed, "the training data"),
            (self.val_feed, "the validation data"),
        ):
            if isinstance(feed, TensorFeed):
                check_finite(feed.batch, what)
        # probing runs the program; it leaves the random state as it found it, so training
        # draws the same numbers as pyro.infer.SVI seeded alike
        with torch.random.fork_rng():
            self.dtype, self.device = _discover(program, self.train_feed.first())
            for feed, what in ((self.train_feed, "the data"), (self.val_feed, "validation data")):
                if isinstance(feed, TensorFeed):
                    feed.to(self.dtype, self.device, what)
            self._check_first_batches(splits)
            sites = kl_obstacles(program.model, program.guide, *self._first_train)
        objective = make_objective(config.objective, config.particles, sites)
        pyro.set_rng_seed(config.seed)
        self.gen = torch.Generator(device=self.device).manual_seed(config.seed)
        engine = _SVIEngine if config.engine == "svi" else _FastEngine
        self.engine = engine(program, objective, config.lr, config.beta)
        self.state = TrainState()
        self.result = FitResult(objective=resolve(config.objective, sites))
        self.run_info = {
            "format": RUN_FORMAT,
            "program": program.recipe,
            "data": splits.spec if splits is not None else None,
            "fit": asdict(config),
            **(run_info or {}),
        }

    def _check_first_batches(self, splits: DataSplits | None) -> None:
        first = _as(self.train_feed.first(), self.dtype, self.device)
        if self.train_feed.dynamic:
            first = (torch.bernoulli(first[0]), *first[1:])
        self._first_train = first
        _check_data(self.program, first, splits, "the training data")
        if self.val_feed is not None:
            val_first = _as(self.val_feed.first(), self.dtype, self.device)
            _check_data(self.program, val_first, splits, "the validation data")

    # -- checkpoints ---------------------------------------------------------------------------

    @property
    def path(self) -> Path | None:
        return self.out / CHECKPOINT if self.out is not None else None

    def checkpoint(self) -> None:
        if self.path is None:
            return
        if not (self.out / CONFIG).is_file():
            _write_json(self.out / CONFIG, self.run_info)
        state = {
            "config": asdict(self.config),
            "program": self.program.state_dict(),
            "optimizer": self.engine.state_dict(),
            "rng": rng_state(),
            "data_rng": self.gen.get_state(),
            "train": self.state.as_dict(),
        }
        self.result.checkpoint = save_checkpoint(state, self.path)

    def start(self, resume: bool) -> None:
        """Open the run folder; with ``resume`` and a checkpoint there, continue from it."""
        if self.out is None:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        if not (resume and self.path.exists()):
            (self.out / METRICS).write_text("")
            (self.out / CONFIG).unlink(missing_ok=True)
            return
        saved = load_checkpoint(self.path, map_location=self.device)
        if "train" not in saved:
            raise CheckpointError(
                f"{self.path} was written by an older ppl_vae; train into a new folder"
            )
        old = FitConfig(**saved["config"])
        changed = {
            k
            for k, v in asdict(old).items()
            if v != getattr(self.config, k) and k not in _RESUMABLE
        }
        if changed:
            raise CheckpointError(
                f"{self.path} was written with different settings ({', '.join(sorted(changed))}); "
                "resume with the same settings or train into a new folder"
            )
        try:
            self.program.load_state_dict(saved["program"])
        except ProgramError as e:
            raise CheckpointError(f"{self.path} does not fit this program: {e}") from e
        self.engine.load_state_dict(saved["optimizer"])
        set_rng_state(saved["rng"])
        self.gen.set_state(saved["data_rng"])
        self.state = TrainState(**saved["train"])
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
        for batch in self.train_feed.epoch(state, self.gen, self.dtype, self.device):
            b = state.step_in_epoch
            self.engine.set_weight(warmup_weight(config.beta, config.warmup, state.epoch, b, n))
            loss = self._step(batch, b)
            state.loss_sum += loss
            state.step_in_epoch = b + 1
            bar.update(1)
            if b % 20 == 0:
                bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
            if self.callback is not None:
                self.callback(state.epoch, b, loss)
            if interrupted():
                raise KeyboardInterrupt
            if config.checkpoint_every and state.step_in_epoch % config.checkpoint_every == 0:
                self.checkpoint()
        bar.close()
        self.engine.set_weight(config.beta)

    def _step(self, batch: tuple, b: int) -> float:
        where = f"epoch {self.state.epoch + 1}, step {b}"
        try:
            loss = self.engine.step(batch)
        except ValueError as e:  # Pyro's validation: a parameter or value out of its support
            first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise ValueError(
                f"training failed at {where}: {first_line} (if the loss was falling, it diverged: "
                "lower --lr)"
            ) from e
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"the loss became {loss} at {where}; lower --lr, or check the data for extreme "
                "values"
            )
        return loss

    # -- validation and the stopping rule ------------------------------------------------------

    def validate(self) -> float | None:
        if self.val_feed is None:
            return None
        self.program.train(False)
        batches = (
            _as(b, self.dtype, self.device)
            for b in self.val_feed.batches(self.config.eval_batch_size)
        )
        loss = _mean_loss(
            self.engine.model, self.engine.guide, self.engine.objective, batches, self.config.seed
        )
        self.program.train(True)
        return loss

    def end_epoch(self) -> bool:
        """Record the epoch, keep the best weights, checkpoint; True when training stops."""
        config, state = self.config, self.state
        n = self.train_feed.n_batches or max(1, state.step_in_epoch)
        record = {"epoch": state.epoch + 1, "train_loss": state.loss_sum / max(1, n)}
        val = self.validate()
        if val is not None:
            record["val_loss"] = val
        record["seconds"] = time.perf_counter() - self.started
        state.history.append(record)
        state.epoch, state.step_in_epoch, state.perm, state.loss_sum = (
            state.epoch + 1,
            0,
            None,
            0.0,
        )
        current = record.get("val_loss", record["train_loss"])
        if current < state.best_val_loss:
            state.best_val_loss, state.bad_epochs = current, 0
            if config.patience is not None:
                state.best_state = self.program.state_dict()
        elif state.epoch > config.warmup:
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
        if self.out is not None:
            with open(self.out / METRICS, "a") as f:
                f.write(json.dumps(record) + "\n")

    def finish(self) -> FitResult:
        """Evaluation mode; with patience set, the best epoch's weights."""
        self.program.train(False)
        if self.state.best_state is not None:
            self.program.load_state_dict(self.state.best_state)
        return self.result


def _write_json(path: Path, doc: dict[str, Any]) -> None:
    """Write ``doc`` to ``path`` atomically."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        f.write(json.dumps(doc, indent=2) + "\n")
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)


def fit(
    program: Any,
    *data: Any,
    config: FitConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[int, int, float], None] | None = None,
    run_info: dict[str, Any] | None = None,
    **overrides: Any,
) -> FitResult:
    """Train any Pyro program by stochastic variational inference.

    Called as ``fit(model, guide, data[, val])`` with two Pyro functions, or as
    ``fit(obj, data[, val])`` with any object that has ``model`` and ``guide`` methods (the
    built-in :class:`~ppl_vae.model.VAE`, Pyro's example VAE, an ``nn.Module`` or not). What
    a program must be is written down in :mod:`ppl_vae.program`; ``fit`` asks nothing more.

    Each step draws a minibatch, evaluates the Pyro objective (``config.objective``) on
    ``model(*batch)`` / ``guide(*batch)`` and takes an Adam step on every parameter the program
    registered (found as ``pyro.infer.SVI`` finds them, in a first trace, plus the parameters
    of any ``nn.Module`` among the program's objects). The KL weight is the effect handler
    :class:`~ppl_vae.handlers.KLWeight` over every latent site of model and guide: ``beta``,
    and with ``warmup = W > 0`` a linear rise from 0 to ``beta`` over the first W epochs, step
    by step (:func:`~ppl_vae.handlers.warmup_weight`). Validation scores the bound at ``beta``
    with fixed draws after every epoch, and patience counts only epochs after the warm-up.
    ``objective="auto"`` takes the analytic KL when every latent site has a registered
    ``kl_divergence`` between the guide's and the model's distributions, else STL.

    Data: a :class:`~ppl_vae.data.DataSplits` (its ``dynamic`` flag redraws binary training
    data every epoch), a tensor or numpy array of rows, a tuple of them (passed to the program
    as several arguments, e.g. data and labels), a ``torch.utils.data.Dataset`` (shuffled by
    ``fit``) or a ``DataLoader`` (streamed as it yields; exact resume needs its order to follow
    from torch's random state or its ``generator``, see :class:`~ppl_vae.batching.LoaderFeed`).
    Floating-point data are cast to the parameters' dtype and device. Values the model observes
    are checked against their distributions' supports before training starts.

    With ``out`` set, the run appends a line per epoch to ``out/metrics.jsonl``, writes
    ``out/config.json`` (how to rebuild the program and reload the data, where known) and
    ``out/checkpoint.pt`` atomically (parameters, optimizer state, random states, position in
    the epoch); ``ppl-vae evaluate | sample | reconstruct`` read that folder. ``resume=True``
    continues from the checkpoint exactly as if the run had not stopped. With
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

    Returns:
        A :class:`FitResult`.
    """
    config = replace(config or FitConfig(), **overrides)
    _check_config(config)
    program, train, val = _arguments(program, data)
    trainer = _Trainer(
        program, train, val, config, Path(out) if out is not None else None, callback, run_info
    )
    trainer.start(resume)
    try:
        with _deferred_interrupt() as interrupted:
            while trainer.state.epoch < config.epochs:
                trainer.train_epoch(interrupted)
                if trainer.end_epoch():
                    break
    except KeyboardInterrupt:
        trainer.checkpoint()
        if config.progress and trainer.path is not None:
            tqdm.write(f"interrupted; saved {trainer.path} (resume with resume=True / --resume)")
        program.train(False)
        raise
    return trainer.finish()
