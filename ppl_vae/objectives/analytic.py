"""Training objectives: Pyro ELBOs selected by name, and a lean analytic-KL ELBO."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.kl import kl_divergence
from pyro.infer import ELBO
from pyro.infer.inspect import get_dependencies
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.util import site_is_subsample
from pyro.util import check_model_guide_match
from torch import Tensor

from ppl_vae.program import traces

__all__ = ["AnalyticKLELBO", "closed_form_kl_sites", "kl_obstacles"]


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

    Like ``TraceMeanField_ELBO`` it is the ELBO only when the model's distribution at every
    latent site depends on no latent site that the guide draws after it (checked by
    :func:`closed_form_kl_sites`, which ``fit`` consults; this class does not check).

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


def _latent_names(trace: Any) -> list[str]:
    return [
        name
        for name, site in trace.nodes.items()
        if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
    ]


def _model_parents(model: Callable, args: tuple, kwargs: dict, latents: list[str]) -> dict:
    """Each latent site's latent parents in the model (Pyro's provenance tracking); where that
    cannot trace the program, every latent site the model draws before it (conservative)."""
    try:
        with torch.no_grad(), poutine.block(), pyro.validation_enabled(False):
            deps = get_dependencies(model, args, kwargs)["prior_dependencies"]
        return {s: {p for p in deps.get(s, {}) if p != s and p in latents} for s in latents}
    except Exception:  # provenance tracking does not follow every torch operation
        return {s: set(latents[:i]) for i, s in enumerate(latents)}


def closed_form_kl_sites(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> dict[str, bool]:
    """For every latent site of the program, whether its KL term has a closed form that the
    analytic-KL ELBO may use: ``kl_divergence(guide site, model site)`` is registered, and the
    model's distribution at the site depends on no latent site that the guide draws after it.

    The second condition is what a per-site KL needs: the ELBO's term
    ``E_q[log q(z1|.) - log p(z1 | z2)]`` is ``E_q[KL(q(z1|.) || p(z1 | z2))]`` only when z2 is
    drawn before z1 in the guide. A bottom-up guide q(z1|x) q(z2|z1) under a top-down model
    p(z2) p(z1|z2) (the IWAE paper's two layers) breaks it at z1: its closed-form terms would
    add up to a bound other than the guide's ELBO. Read from one guide trace, the model
    replayed on it, and the model's dependency structure.

    >>> import pyro, pyro.distributions as dist
    >>> def model():
    ...     pyro.sample("a", dist.Normal(0.0, 1.0))
    ...     pyro.sample("b", dist.Gamma(1.0, 1.0))
    >>> def guide():
    ...     pyro.sample("a", dist.Normal(1.0, 2.0))
    ...     pyro.sample("b", dist.LogNormal(0.0, 1.0))
    >>> closed_form_kl_sites(model, guide)
    {'a': True, 'b': False}
    """
    return {name: why is None for name, why in kl_obstacles(model, guide, *args, **kwargs).items()}


def kl_obstacles(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> dict[str, str | None]:
    """:func:`closed_form_kl_sites` with the reason: per latent site, None where the analytic
    KL applies, else why not (what ``mean-field``'s refusal says)."""
    model_trace, guide_trace = traces(model, guide, args, kwargs)
    drawn = {name: i for i, name in enumerate(_latent_names(guide_trace))}
    latents = _latent_names(model_trace)
    parents = _model_parents(model, args, kwargs, latents)
    found: dict[str, str | None] = {}
    for name in latents:
        site = model_trace.nodes[name]
        if name not in drawn:
            found[name] = "the guide does not sample it"
            continue
        later = sorted(p for p in parents[name] if drawn.get(p, -1) > drawn[name])
        if later:
            found[name] = (
                f"its model distribution depends on {', '.join(map(repr, later))}, which the "
                "guide draws after it, so a per-site KL is no term of the ELBO"
            )
            continue
        q = guide_trace.nodes[name]["fn"]
        try:
            kl_divergence(q, site["fn"])
            found[name] = None
        except NotImplementedError:
            found[name] = (
                f"no kl_divergence is registered for the guide's {type(q).__name__} and the "
                f"model's {type(site['fn']).__name__}"
            )
    return found


def _ok_sites(closed_form_kl: dict[str, Any] | bool) -> dict[str, bool]:
    """Site -> has a usable closed-form KL, from bools or from reasons (None: it has one)."""
    if not isinstance(closed_form_kl, dict):
        return {"z": bool(closed_form_kl)}
    return {s: v is True or v is None for s, v in closed_form_kl.items()}
