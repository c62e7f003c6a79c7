"""Training objectives: Pyro ELBOs selected by name, and a lean analytic-KL ELBO."""

from __future__ import annotations

import warnings
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import ELBO, Trace_ELBO
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match
from torch import Tensor

__all__ = ["OBJECTIVES", "AnalyticKLELBO", "make_objective"]

#: ``auto`` picks ``mean-field`` where every prior has an analytic KL, else ``stl``.
OBJECTIVES = ("auto", "mean-field", "elbo", "stl", "iwae", "iwae-dreg")


def _scaled_sum(value: Tensor, site: dict[str, Any]) -> Tensor:
    if site["mask"] is not None:
        value = value * site["mask"]
    return (value * site["scale"]).sum()


def _check_batch_shape(site: dict[str, Any]) -> None:
    """Every batch dimension of a site's distribution must be declared by a ``pyro.plate``."""
    shape = site["fn"].batch_shape
    plates = {f.dim: f for f in site["cond_indep_stack"] if f.vectorized and f.dim is not None}
    for dim in range(-len(shape), 0):
        frame = plates.get(dim)
        if shape[dim] != 1 and (frame is None or shape[dim] != frame.size):
            raise ValueError(
                f"site {site['name']!r} has batch shape {tuple(shape)}, but dimension {dim} "
                f"({shape[dim]}) is not a plate of that size; declare it with pyro.plate or "
                "move it into the event shape with .to_event(...)"
            )


class AnalyticKLELBO(ELBO):
    """The ELBO with every latent site's KL term in closed form.

    .. math::

        \\mathcal{L}(x) = \\mathbb{E}_{q(z|x)}[\\log p(x \\mid z)]
            - \\mathrm{KL}(q(z \\mid x) \\,\\|\\, p(z)),

    the expectation estimated with ``num_particles`` reparameterized draws. It computes what
    ``pyro.infer.TraceMeanField_ELBO`` computes, to rounding, for models whose latent sites all
    have a registered ``kl_divergence`` (a Normal guide against a Normal prior), with less
    per-step work: it scores only observed sites and skips the guide's score parts, which halves
    Pyro's overhead over a hand-written PyTorch step. A latent site without a closed-form KL is a
    ``ValueError`` (train such priors with ``objective="elbo"`` or ``"stl"``).

    Masks and scales (``poutine.scale``, ``poutine.mask``, subsampling plates) apply as in Pyro.
    Cost: one guide and one model pass per particle.
    """

    def _get_trace(self, model, guide, args, kwargs):
        """One guide trace and the model replayed on it, unscored."""
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace)
            for trace in (model_trace, guide_trace):
                for site in trace.nodes.values():
                    if site["type"] == "sample" and not site_is_subsample(site):
                        _check_batch_shape(site)
        return model_trace, guide_trace

    def _particle(self, model, guide, args, kwargs) -> Tensor:
        model_trace, guide_trace = self._get_trace(model, guide, args, kwargs)
        elbo: Tensor | float = 0.0
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample" or site_is_subsample(site):
                continue
            if site["is_observed"]:
                elbo = elbo + _scaled_sum(site["fn"].log_prob(site["value"]), site)
                continue
            guide_site = guide_trace.nodes[name]
            try:
                kl = kl_divergence(guide_site["fn"], site["fn"])
            except NotImplementedError:
                raise ValueError(
                    f"latent site {name!r}: no closed-form KL between the guide's "
                    f"{type(guide_site['fn']).__name__} and the model's "
                    f"{type(site['fn']).__name__}; use objective='elbo' (Monte Carlo KL) or "
                    "'stl' (its lower-variance gradient) for this prior"
                ) from None
            elbo = elbo - _scaled_sum(kl, guide_site)
        return -torch.as_tensor(elbo)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> Tensor:
        """Minus the ELBO summed over data points (a scalar with gradients)."""
        loss = self._particle(model, guide, args, kwargs)
        for _ in range(self.num_particles - 1):
            loss = loss + self._particle(model, guide, args, kwargs)
        return loss / self.num_particles

    def loss(self, model, guide, *args, **kwargs) -> float:
        with torch.no_grad():
            return torch_item(self.differentiable_loss(model, guide, *args, **kwargs))

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        loss.backward()
        return torch_item(loss)


def make_objective(name: str, particles: int = 1, analytic_kl: bool = True) -> ELBO:
    """The Pyro ELBO called ``name`` (one of :data:`OBJECTIVES`) with ``particles`` draws.

    Args:
        name: ``mean-field`` (analytic KL, :class:`AnalyticKLELBO`), ``elbo`` (Monte Carlo KL,
            ``pyro.infer.Trace_ELBO``), ``stl`` (sticking the landing), ``iwae`` (importance
            weighted bound with K = ``particles``), ``iwae-dreg`` (IWAE with doubly
            reparameterized guide gradients), or ``auto``.
        particles: draws per data point (the K of the IWAE bound).
        analytic_kl: whether the model's prior admits a closed-form KL.
    """
    if particles < 1:
        raise ValueError(f"particles must be at least 1, got {particles}")
    if name == "auto":
        # Without a closed-form KL, STL's gradient has no score term: on digits it turned the
        # Monte Carlo KL's +0.14 nats against the analytic KL into -0.08 (benchmarks/README.md).
        name = "mean-field" if analytic_kl else "stl"
    if name == "mean-field":
        if not analytic_kl:
            raise ValueError(
                "objective 'mean-field' needs a closed-form KL, which this prior lacks; "
                "use 'elbo', 'stl', 'iwae' or 'iwae-dreg'"
            )
        return AnalyticKLELBO(num_particles=particles)
    if name == "elbo":
        return Trace_ELBO(num_particles=particles, vectorize_particles=particles > 1)
    if name == "stl":
        from .stl import STLELBO

        return STLELBO(num_particles=particles)
    if name in ("iwae", "iwae-dreg"):
        from .iwae import IWAE, DReGIWAE

        if particles == 1:
            warnings.warn("an IWAE bound with 1 particle is the ELBO", stacklevel=2)
        return (IWAE if name == "iwae" else DReGIWAE)(num_particles=particles)
    raise ValueError(f"unknown objective {name!r}; choose one of {list(OBJECTIVES)}")
