"""fit(): stochastic variational inference with validation, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import pyro
import torch
from pyro.infer import SVI
from torch import Tensor
from tqdm import tqdm

from .checkpoint import CheckpointError, load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .data import DataSplits, check_data
from .model import VAE
from .objectives import OBJECTIVES, make_objective

__all__ = ["FitConfig", "FitResult", "fit", "negative_bound"]

CHECKPOINT = "checkpoint.pt"
METRICS = "metrics.jsonl"
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
        "auto: mean-field where the prior allows it, else stl",
        OBJECTIVES,
    )
    particles: int = _opt(1, "draws per data point; the K of the IWAE bound")
    seed: int = _opt(0, "seeds the initial noise, shuffling, dynamic binarization and draws")
    warmup: float = _opt(
        0, "KL warm-up: beta rises linearly from 0 to the model's beta over this many epochs"
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


def negative_bound(
    vae: VAE, x: Tensor, objective: Any, batch_size: int = 1000, seed: int | None = 0
) -> float:
    """Minus the objective's bound, averaged over the rows of ``x`` (N, D), in nats.

    With ``seed`` set, the draws are fixed (common random numbers across calls) and the global
    random state is left as it was.
    """
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        total = sum(
            float(objective.differentiable_loss(vae.model, vae.guide, x[i : i + batch_size]))
            for i in range(0, len(x), batch_size)
        )
    return total / len(x)


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


def _likelihood_is_binary(vae: VAE) -> bool:
    return bool(getattr(getattr(vae.decoder, "likelihood", None), "binary", False))


def _split_data(
    data: DataSplits | Tensor, val: Tensor | None
) -> tuple[Tensor, Tensor | None, bool]:
    if isinstance(data, DataSplits):
        return data.train, data.val if val is None else val, data.dynamic
    return data, val, False


def fit(
    vae: VAE,
    data: DataSplits | Tensor,
    val: Tensor | None = None,
    *,
    config: FitConfig | None = None,
    out: str | Path | None = None,
    resume: bool = False,
    callback: Callable[[int, int, float], None] | None = None,
    **overrides: Any,
) -> FitResult:
    """Train ``vae`` by stochastic variational inference on the rows of ``data``.

    Each step draws a minibatch, evaluates the Pyro objective (``config.objective``) on
    ``vae.model`` / ``vae.guide`` and takes an Adam step. With ``config.warmup = W > 0`` the
    latent site's weight rises linearly, step by step, from 0 to ``vae.beta`` over the first
    W epochs (KL annealing, Bowman et al. 2016; Sønderby et al. 2016): at step ``s`` of ``S``
    in epoch ``e`` it is ``vae.beta * min(1, (e + (s + 1) / S) / W)``. Validation always
    scores the bound at ``vae.beta``, and patience counts only epochs after the warm-up.

    After every epoch the validation split is scored with fixed draws; with ``out`` set, the
    run appends a line per epoch to ``out/metrics.jsonl`` and writes ``out/checkpoint.pt``
    atomically (parameters, optimizer state, random states, position in the epoch).
    ``resume=True`` continues from that checkpoint exactly as if the run had not stopped.
    With ``config.patience`` set, the model comes back with the weights of its best validation
    epoch, whether early stopping ended the run or the epochs ran out (the checkpoint keeps the
    last weights for resuming, and the best ones, which ``ppl-vae evaluate`` loads).
    Ctrl-C finishes the current step, saves, and raises ``KeyboardInterrupt``.

    Args:
        vae: the model; its device decides where training runs.
        data: a :class:`~ppl_vae.data.DataSplits` (its ``dynamic`` flag resamples binary
            training data every epoch) or a training tensor of shape (N, D).
        val: validation rows (M, D); taken from ``data`` when it is a ``DataSplits``.
        config: a :class:`FitConfig`; keyword ``overrides`` replace its fields.
        out: folder for the checkpoint and the metrics log.
        resume: continue from ``out/checkpoint.pt`` when it exists.
        callback: called as ``callback(epoch, step, loss)`` after every step.

    Returns:
        A :class:`FitResult`.
    """
    config = replace(config or FitConfig(), **overrides)
    train, val, dynamic = _split_data(data, val)
    binary = _likelihood_is_binary(vae)
    check_data(train, binary=binary and not dynamic, what="training data")
    if dynamic and (train.min() < 0 or train.max() > 1):
        raise ValueError("dynamic binarization needs training data in [0, 1]")
    if val is not None:
        check_data(val, binary=binary, what="validation data")
    for name, x in (("training", train), ("validation", val)):
        if x is not None and x.shape[1] != vae.x_dim:
            raise ValueError(
                f"{name} data has {x.shape[1]} features per row but the model expects "
                f"{vae.x_dim}; build the model with x_dim={x.shape[1]} or pass matching data"
            )
    if config.engine not in ENGINES:
        raise ValueError(f"unknown engine {config.engine!r}; choose one of {list(ENGINES)}")
    objective = make_objective(
        config.objective, config.particles, getattr(vae.prior, "analytic_kl", False)
    )
    if config.warmup < 0:
        raise ValueError(f"warmup must be a number of epochs >= 0, got {config.warmup}")
    if config.warmup and config.objective.startswith("iwae"):
        raise ValueError(
            "KL warm-up scales the latent site, which inside the IWAE log-sum-exp is no bound; "
            "use warmup=0 with iwae objectives, or warm up with an ELBO objective first"
        )
    beta = vae.beta

    device = next(vae.parameters()).device
    train = train.to(device)
    val = val.to(device) if val is not None else None
    pyro.set_rng_seed(config.seed)
    gen = torch.Generator(device=device).manual_seed(config.seed)
    n_batches = math.ceil(len(train) / config.batch_size)

    if config.engine == "svi":
        store = pyro.get_param_store()
        for name in [k for k in store.keys() if k.startswith(f"{vae.name}$$$")]:
            del store[name]
        svi = SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": config.lr}), loss=objective)
        optimizer = None
    else:
        optimizer = torch.optim.Adam(vae.parameters(), lr=config.lr)

    result = FitResult()
    epoch, step_in_epoch, bad_epochs, perm, total = 0, 0, 0, None, 0.0
    best_state: dict[str, Tensor] | None = None
    path = Path(out) / CHECKPOINT if out is not None else None

    resuming = resume and path is not None and path.exists()
    if out is not None:
        Path(out).mkdir(parents=True, exist_ok=True)
        if not resuming:
            (Path(out) / METRICS).write_text("")
    if resuming:
        state = load_checkpoint(path, map_location=device)
        saved = FitConfig(**state["config"])
        changed = {
            k for k, v in asdict(saved).items() if v != getattr(config, k) and k not in _RESUMABLE
        }
        if changed:
            raise CheckpointError(
                f"{path} was written with different settings ({', '.join(sorted(changed))}); "
                "resume with the same settings or train into a new folder"
            )
        try:
            vae.load_state_dict(state["model"])
        except RuntimeError as e:
            raise CheckpointError(f"{path} does not fit this model: {e}") from e
        if optimizer is not None:
            optimizer.load_state_dict(state["optimizer"])
        else:
            svi.optim.set_state(state["optimizer"])
        set_rng_state(state["rng"])
        gen.set_state(state["data_rng"])
        epoch, step_in_epoch, perm = state["epoch"], state["step_in_epoch"], state["perm"]
        total = state["epoch_loss_sum"]
        result.history = state["history"]
        result.best_val_loss, bad_epochs = state["best_val_loss"], state["bad_epochs"]
        best_state = state["best_state"]
        if config.progress:
            tqdm.write(f"resuming {path}: epoch {epoch + 1}, step {step_in_epoch}")

    def checkpoint() -> None:
        if path is None:
            return
        opt_state = optimizer.state_dict() if optimizer is not None else svi.optim.get_state()
        state = {
            "config": asdict(config),
            "model": vae.state_dict(),
            "optimizer": opt_state,
            "rng": rng_state(),
            "data_rng": gen.get_state(),
            "epoch": epoch,
            "step_in_epoch": step_in_epoch,
            "perm": perm,
            "epoch_loss_sum": total,
            "history": result.history,
            "best_val_loss": result.best_val_loss,
            "bad_epochs": bad_epochs,
            "best_state": best_state,
        }
        result.checkpoint = save_checkpoint(state, path)

    def step(xb: Tensor) -> float:
        if optimizer is None:
            return svi.step(xb) / len(xb)
        loss = objective.differentiable_loss(vae.model, vae.guide, xb) / len(xb)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.item()

    vae.train()
    vae.pyro_module = config.engine == "svi"
    try:
        with _deferred_interrupt() as interrupted:
            while epoch < config.epochs:
                if hasattr(vae, "on_epoch_start"):
                    vae.on_epoch_start(epoch, config.epochs)
                if perm is None:
                    perm = torch.randperm(len(train), generator=gen, device=device)
                started = time.perf_counter()
                bar = tqdm(
                    range(step_in_epoch, n_batches),
                    desc=f"epoch {epoch + 1}/{config.epochs}",
                    disable=not config.progress,
                    leave=False,
                    mininterval=0.5,
                )
                for b in bar:
                    if config.warmup:
                        vae.beta = beta * min(1.0, (epoch + (b + 1) / n_batches) / config.warmup)
                    xb = train[perm[b * config.batch_size : (b + 1) * config.batch_size]]
                    if dynamic:
                        xb = torch.bernoulli(xb, generator=gen)
                    loss = step(xb)
                    if not math.isfinite(loss):
                        raise FloatingPointError(
                            f"the loss became {loss} at epoch {epoch + 1}, step {b}; lower "
                            "--lr, or check the data for extreme values"
                        )
                    total += loss
                    step_in_epoch = b + 1
                    if b % 20 == 0:
                        bar.set_postfix(loss=f"{loss:.2f}", refresh=False)
                    if callback is not None:
                        callback(epoch, b, loss)
                    if interrupted():
                        raise KeyboardInterrupt
                    if config.checkpoint_every and step_in_epoch % config.checkpoint_every == 0:
                        checkpoint()
                bar.close()
                record = {"epoch": epoch + 1, "train_loss": total / max(1, n_batches)}
                vae.beta = beta
                if val is not None:
                    vae.eval()
                    record["val_loss"] = negative_bound(
                        vae, val, objective, config.eval_batch_size, config.seed
                    )
                    vae.train()
                record["seconds"] = time.perf_counter() - started
                result.history.append(record)
                epoch, step_in_epoch, perm, total = epoch + 1, 0, None, 0.0
                current = record.get("val_loss", record["train_loss"])
                if current < result.best_val_loss:
                    result.best_val_loss, bad_epochs = current, 0
                    if config.patience is not None:
                        best_state = {k: v.clone() for k, v in vae.state_dict().items()}
                elif epoch > config.warmup:
                    bad_epochs += 1
                if config.progress:
                    val_text = f"  val {record['val_loss']:.2f}" if "val_loss" in record else ""
                    tqdm.write(
                        f"epoch {epoch}/{config.epochs}  train {record['train_loss']:.2f}"
                        f"{val_text} nats  ({record['seconds']:.1f} s)"
                    )
                if out is not None:
                    with open(Path(out) / METRICS, "a") as f:
                        f.write(json.dumps(record) + "\n")
                stop = config.patience is not None and bad_epochs >= config.patience
                if stop:
                    epoch = config.epochs
                checkpoint()
                if stop:
                    result.stopped_early = True
                    break
    except KeyboardInterrupt:
        checkpoint()
        if config.progress and path is not None:
            tqdm.write(f"interrupted; saved {path} (resume with resume=True / --resume)")
        raise
    finally:
        vae.pyro_module = True
        vae.beta = beta
        vae.eval()
    if best_state is not None:  # with patience set, fit returns the best epoch's weights
        vae.load_state_dict(best_state)
    return result
