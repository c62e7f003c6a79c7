"""FitConfig: how fit trains; every field is a CLI flag."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from ppl_vae.objectives.factory import OBJECTIVES
from ppl_vae.training.engines import (
    ENGINES,
)
from ppl_vae.training.schedules import SCHEDULES
from ppl_vae.training.traced import MODES

__all__ = ["RESUMABLE", "FitConfig", "check_config", "kl_warmup"]


#: ``denormals`` settings (ppl_vae.runtime.flush_denormals)
DENORMALS = ("flush", "keep")


def _opt(default: Any, help: str, choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field whose ``help`` (and ``choices``) the CLI flag takes over."""
    return field(default=default, metadata={"help": help, "choices": choices})


@dataclass(frozen=True)
class FitConfig:
    """How :func:`fit` trains. Every field is a CLI flag of ``ppl-vae train``."""

    epochs: int = _opt(10, "passes over the training data")
    batch_size: int = _opt(100, "data points per optimisation step")
    lr: float = _opt(1e-3, "Adam's learning rate")
    lr_schedule: str = _opt(
        "constant",
        "constant; iwae: stage i of 3^i epochs at lr*10^(-i/7) (Burda et al. 2016); cosine: "
        "to 0 over the epochs; plateau: halve after 5 epochs without a better val loss",
        SCHEDULES,
    )
    objective: str = _opt(
        "auto",
        "mean-field (analytic KL), elbo (Monte Carlo KL), stl, iwae, iwae-dreg; "
        "auto: stl, which beat the analytic KL on MNIST at 10 and 30 epochs",
        OBJECTIVES,
    )
    particles: int = _opt(1, "draws per data point; the K of the IWAE bound")
    beta: float = _opt(1.0, "KL weight (beta-VAE) on every latent site; 1 is the ELBO")
    seed: int = _opt(0, "seeds the initial noise, shuffling, dynamic binarization and draws")
    warmup: float | None = _opt(
        None,
        "KL warm-up: the KL weight rises linearly from 0 to beta over this many epochs; "
        "default: 3 epochs, or a third of a shorter run (none under iwae objectives), which "
        "won 1.8 to 3.9 nats on MNIST at 10 and 30 epochs (benchmarks/README.md)",
    )
    patience: int | None = _opt(
        None, "stop after this many epochs without a better val loss (counted after warm-up)"
    )
    checkpoint_every: int = _opt(0, "also checkpoint every N steps in an epoch (0: epoch ends)")
    skip_nonfinite: int = _opt(
        0, "skip up to N steps whose loss is not finite (no update); 0: stop at the first"
    )
    engine: str = _opt("fast", "fast: Pyro ELBO + one torch Adam; svi: pyro.infer.SVI", ENGINES)
    compile: str = _opt(
        "auto",
        "the fast engine's steps once Pyro's checks are off (from epoch 2): compile: traced "
        "once and compiled by torch.compile (equal to float rounding); trace: traced and "
        "replayed (equal to the bit); off: Pyro every step; auto: compile where an epoch has "
        "200 steps or more, the program has no convolution and a C++ compiler is found, "
        "else off",
        MODES,
    )
    denormals: str = _opt(
        "flush",
        "flush: on the CPU, floats below 1.2e-38 count as 0 while fit runs (flush-to-zero on "
        "torch's threads; the IWAE gradient makes them, and each costs x86 a hundred cycles "
        "or more); keep: leave the processor's setting as fit finds it (IEEE subnormals "
        "unless the caller flushes)",
        DENORMALS,
    )
    progress: bool = _opt(True, "show a progress bar and a line per epoch")
    eval_batch_size: int = _opt(1000, "data points per validation batch")


def kl_warmup(config: FitConfig) -> float:
    """The warm-up ``config`` asks for, in epochs: ``warmup`` when given; by default 3 epochs,
    or a third of a run shorter than 9 epochs, and none under the IWAE objectives (a KL weight
    inside their log-sum-exp is no bound)."""
    if config.warmup is not None:
        return float(config.warmup)
    if config.objective.startswith("iwae"):
        return 0.0
    return min(3.0, config.epochs / 3)


#: Settings that may change when a run is resumed; every other one must match. A changed lr
#: (lower it after a divergence) applies from the resumed step on, so that run is no longer
#: the same as an uninterrupted one.
RESUMABLE = (
    "epochs",
    "compile",
    "denormals",
    "patience",
    "progress",
    "checkpoint_every",
    "eval_batch_size",
    "lr",
    "skip_nonfinite",
)


def check_config(config: FitConfig) -> None:
    """A ``ValueError`` for a setting outside its range, naming the setting."""

    def need(ok: bool, name: str, rule: str) -> None:
        if not ok:
            value = getattr(config, name)
            raise ValueError(f"{name} must be {rule}, got {value!r} (--{name.replace('_', '-')})")

    def whole(name: str, low: int) -> None:
        value = getattr(config, name)
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= low
        need(ok, name, f"a whole number >= {low}")

    for name in ("epochs", "batch_size", "particles", "eval_batch_size"):
        whole(name, 1)
    for name in ("checkpoint_every", "skip_nonfinite"):
        whole(name, 0)
    if config.patience is not None:
        whole("patience", 1)
    for name in ("lr", "beta", "warmup"):
        value = getattr(config, name)
        if name == "warmup" and value is None:
            continue
        need(isinstance(value, (int, float)) and math.isfinite(value) and value >= 0, name, ">= 0")
    need(config.engine in ENGINES, "engine", f"one of {list(ENGINES)}")
    need(config.compile in MODES, "compile", f"one of {list(MODES)}")
    need(config.denormals in DENORMALS, "denormals", f"one of {list(DENORMALS)}")
    need(config.objective in OBJECTIVES, "objective", f"one of {list(OBJECTIVES)}")
    need(config.lr_schedule in SCHEDULES, "lr_schedule", f"one of {list(SCHEDULES)}")
    if config.engine == "svi" and config.lr_schedule != "constant":
        raise ValueError(
            "a learning-rate schedule steps fit's own optimizer; use it with --engine fast"
        )
    if config.objective.startswith("iwae") and (config.warmup or config.beta != 1.0):
        raise ValueError(
            "a KL weight (beta or warm-up) scales the latent sites, which inside the IWAE "
            "log-sum-exp is no bound; use beta=1 and warmup=0 with iwae objectives, or warm up "
            "with an ELBO objective first"
        )
