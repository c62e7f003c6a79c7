"""Objectives by name: what ``--objective`` chooses from."""

from __future__ import annotations

import warnings
from typing import Any

from pyro.infer import ELBO

from ppl_vae.objectives.analytic import AnalyticKLELBO, _ok_sites

__all__ = ["OBJECTIVES", "make_objective", "resolve"]


#: ``auto`` is ``stl`` (see :func:`resolve`).
OBJECTIVES = ("auto", "mean-field", "elbo", "stl", "iwae", "iwae-dreg")


def resolve(name: str) -> str:
    """The objective ``name`` stands for: ``auto`` is ``stl``; other names stand for
    themselves."""
    if name != "auto":
        return name
    # STL's guide gradient has no score term. It beat the analytic KL by 1.1 to 1.45 nats on
    # MNIST at 10 epochs and by 1.2 (0.4 with a KL warm-up) at 30 (benchmarks/README.md).
    return "stl"


def make_objective(
    name: str, particles: int = 1, closed_form_kl: dict[str, Any] | bool = True
) -> ELBO:
    """The Pyro ELBO called ``name`` (one of :data:`OBJECTIVES`) with ``particles`` draws.

    Args:
        name: ``mean-field`` (analytic KL, :class:`AnalyticKLELBO`), ``elbo`` (Monte Carlo KL,
            ``pyro.infer.Trace_ELBO``), ``stl`` (sticking the landing), ``iwae`` (importance
            weighted bound with K = ``particles``), ``iwae-dreg`` (IWAE with doubly
            reparameterized guide gradients), or ``auto``: ``stl``.
        particles: draws per data point (the K of the IWAE bound).
        closed_form_kl: per latent site, whether its KL has a closed form, as
            :func:`closed_form_kl_sites` reads it from the program (or one bool for all); or
            :func:`kl_obstacles`' reasons (None where it has one).
    """
    if particles < 1:
        raise ValueError(f"particles must be at least 1, got {particles}")
    name = resolve(name)
    if name == "mean-field":
        lacking = [site for site, ok in _ok_sites(closed_form_kl).items() if not ok]
        if lacking:
            why = closed_form_kl.get(lacking[0]) if isinstance(closed_form_kl, dict) else None
            where = (
                f"latent site {lacking[0]!r}" if isinstance(closed_form_kl, dict) else "the prior"
            )
            reason = why if isinstance(why, str) else "no kl_divergence is registered for it"
            raise ValueError(
                f"objective 'mean-field' needs a closed-form KL, which {where} lacks: {reason}; "
                "use 'elbo', 'stl', 'iwae' or 'iwae-dreg'"
            )
        return AnalyticKLELBO(num_particles=particles)
    if name == "elbo":
        from ppl_vae.objectives.stl import TensorTraceELBO

        return TensorTraceELBO(num_particles=particles, vectorize_particles=particles > 1)
    if name == "stl":
        from ppl_vae.objectives.stl import STLELBO

        return STLELBO(num_particles=particles)
    if name in ("iwae", "iwae-dreg"):
        from ppl_vae.objectives.iwae import IWAE, DReGIWAE

        if particles == 1:
            warnings.warn("an IWAE bound with 1 particle is the ELBO", stacklevel=2)
        return (IWAE if name == "iwae" else DReGIWAE)(num_particles=particles)
    raise ValueError(f"unknown objective {name!r}; choose one of {list(OBJECTIVES)}")
