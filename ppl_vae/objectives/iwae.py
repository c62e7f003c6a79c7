"""The IWAE bound as a Pyro ELBO, with ordinary or doubly-reparameterized (DReG) gradients.

.. math::

    \\mathcal L_K = \\sum_n \\mathbb E\\Big[\\log \\frac1K \\sum_{k=1}^K w_{nk}\\Big],\\qquad
    w_{nk} = \\frac{p(x_n, z_{nk})}{q(z_{nk} \\mid x_n)},\\quad z_{nk} \\sim q(z \\mid x_n).

The log-mean-exp is taken **per data point** (every sample site must be inside the data plate,
``"data"`` by default), then summed over points. Particles are vectorized with a plate left of
the model's plates. Latent sites of the guide must be reparameterized (``has_rsample``).

Why not ``pyro.infer.RenyiELBO(alpha=0, vectorize_particles=True)``? Checked on the
linear-Gaussian model of ``tests/linear_gaussian.py`` (5 points, K = 10, perturbed diagonal
guide; exact sum of log p(x) = -25.928, exact ELBO sum = -29.857):

- With every site inside the data plate it *is* per point: with the same seed its loss equals
  minus our per-point sum exactly (-24.112371568 both), and over 2,000 seeds
  -26.925 +- 0.029 (Renyi) against -26.958 +- 0.030 (ours). The log-sum-exp of the batch-summed
  weights would be lower: -27.147 +- 0.031.
- It puts ``poutine.scale`` inside the log-sum-exp. A scale of 2 on every site (what
  subsampling does) gives -51.16 +- 0.09 where twice the bound is -53.92; here a scale common to
  all sites multiplies the per-point bound instead. A scale on the latent site only (the VAE's
  ``beta``) gives -38.89, which is no bound of anything; here it is an error.
- It has no DReG estimator, and its loss is not per point.

Cost per step: the guide once and the model once on K x N particles (DReG runs the guide two
more times on the same particles, which is cheap for an amortized encoder: N rows, not K x N).

References:
    Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR.
    Tucker, Lawson, Gu & Maddison (2019), Doubly Reparameterized Gradient Estimators for Monte
    Carlo Objectives, ICLR.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro.poutine as poutine
import torch
from pyro.infer import ELBO
from torch import Tensor

from ppl_vae.objectives.particles import (
    _sample_sites,
    _vectorize,
    point_log_prob,
    probe,
    site_scale,
    vectorized_traces,
)

__all__ = ["DReGIWAE", "IWAE"]


class IWAE(ELBO):
    """The IWAE bound with K vectorized particles and ordinary reparameterized gradients.

    ``differentiable_loss`` returns ``-sum_n (logsumexp_k log w_nk - log K)``, a scalar; its
    gradient is the IWAE gradient ``sum_k w~_k grad log w_k`` (normalized weights ``w~``). With
    K = 1 it is ``Trace_ELBO`` with one particle.

    A ``poutine.scale`` common to all sites of a data point (subsampling) multiplies that
    point's bound. A scale on the latent sites only (the VAE's ``beta``) is an error: inside a
    log-sum-exp it is not a beta; use beta with the ELBO objectives.

    Args:
        num_particles: K, importance samples per data point.
        plate: name of the data plate.
        max_plate_nesting: as in :class:`pyro.infer.ELBO`; guessed on the first call if not set.

    >>> import pyro, pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # the exact posterior: the bound is log N(x; 0, 2) for any K
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> round(IWAE(num_particles=8).loss(model, guide, torch.zeros(3)), 2)  # 3 x 1.2655
    3.8
    """

    def __init__(
        self,
        num_particles: int = 5,
        plate: str = "data",
        max_plate_nesting: int | float = float("inf"),
    ) -> None:
        if num_particles < 1:
            raise ValueError(f"num_particles must be at least 1, got {num_particles}")
        super().__init__(
            num_particles=num_particles,
            max_plate_nesting=max_plate_nesting,
            vectorize_particles=True,
        )
        self.plate = plate

    def _get_trace(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> Any:
        """Pyro's per-particle trace hook; unused, particles are always vectorized here."""
        nesting = self._nesting(model, guide, args, kwargs)
        return vectorized_traces(model, guide, args, kwargs, self.num_particles, nesting)

    def _nesting(self, model: Callable, guide: Callable, args: tuple, kwargs: dict) -> int:
        if self.max_plate_nesting == float("inf"):
            self.max_plate_nesting, _ = probe(model, guide, args, kwargs, self.plate)
        return int(self.max_plate_nesting)

    def _scale(self, model_trace: poutine.Trace, guide_trace: poutine.Trace) -> float:
        scales = {}
        for trace in (model_trace, guide_trace):
            for name, site in _sample_sites(trace):
                scales[name] = site_scale(name, site)
                if trace is guide_trace and not site["fn"].has_rsample:
                    raise NotImplementedError(
                        f"latent site {name!r} is not reparameterizable; IWAE here needs "
                        f"reparameterized guides (RenyiELBO(alpha=0) handles score functions)"
                    )
        if len(set(scales.values())) > 1:
            raise ValueError(
                f"the sites have different poutine.scale factors {scales}: a scale inside the "
                f"IWAE log-sum-exp is not a beta. Use beta with the ELBO objectives "
                f"(Trace_ELBO, TraceMeanField_ELBO), or beta = 1 with IWAE."
            )
        return next(iter(scales.values()))

    def _log_w(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[Tensor, Tensor, float]:
        """``(log w (K, N) with gradients, surrogate (K, N) for the gradient, scale)``."""
        nesting = self._nesting(model, guide, args, kwargs)
        model_trace, guide_trace = vectorized_traces(
            model, guide, args, kwargs, self.num_particles, nesting
        )
        scale = self._scale(model_trace, guide_trace)
        log_w = 0.0
        for name, site in _sample_sites(model_trace):
            log_w = log_w + point_log_prob(name, site, self.plate, nesting)
        for name, site in _sample_sites(guide_trace, latent_only=True):
            log_w = log_w - point_log_prob(name, site, self.plate, nesting)
        return log_w, log_w, scale

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """Minus the IWAE bound summed over data points: a scalar tensor to ``backward()``."""
        log_w, _, scale = self._log_w(model, guide, args, kwargs)
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)  # (N,)
        return -scale * bound.sum()

    def loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any) -> float:
        """Minus the IWAE bound summed over data points, as a float (no gradients)."""
        with torch.no_grad():
            return self.differentiable_loss(model, guide, *args, **kwargs).item()

    def loss_and_grads(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """Backpropagate :meth:`differentiable_loss` into the parameters; return it as a float."""
        loss = self.differentiable_loss(model, guide, *args, **kwargs)
        if loss.requires_grad:
            loss.backward()
        return loss.item()


class DReGIWAE(IWAE):
    """The IWAE bound with doubly-reparameterized gradients for the guide (Tucker et al. 2019).

    The loss value is the IWAE loss. The gradient is, per data point,

    .. math::

        \\nabla_\\theta:\\ \\sum_k \\tilde w_k \\nabla_\\theta \\log p_\\theta(x, z_k),\\qquad
        \\nabla_\\phi:\\ \\sum_k \\tilde w_k^2\\,
        \\frac{\\partial \\log w_k}{\\partial z_k} \\frac{\\partial z_k}{\\partial \\phi},

    i.e. the guide's score term ``d log q_phi(z) / d phi`` at fixed z is removed and the path
    term is weighted by squared normalized weights; model parameters get the IWAE gradient.
    Both have the expectation of the IWAE gradient, with far less variance for the guide as
    K grows (the IWAE guide gradient's signal-to-noise ratio decays like 1 / sqrt(K)).

    Implementation: z_k is drawn once; the model is replayed on copies of z_k whose incoming
    gradient is multiplied by w~_k (a backward hook), and log q is taken as
    ``log q_phi(z') - log q_phi(stop_grad z) + stop_grad(...)`` by replaying the guide twice, so
    only the path derivative through z reaches phi. This is exact for hierarchical guides too
    (z2 drawn given z1): each path from log w to phi is weighted once.

    Args:
        num_particles: K.
        plate: name of the data plate.
        max_plate_nesting: as in :class:`pyro.infer.ELBO`.
    """

    def _log_w(
        self, model: Callable, guide: Callable, args: tuple, kwargs: dict
    ) -> tuple[Tensor, Tensor, float]:
        nesting = self._nesting(model, guide, args, kwargs)
        k = self.num_particles
        guide_trace = poutine.trace(_vectorize(guide, k, nesting)).get_trace(*args, **kwargs)
        weights: list[Tensor] = []  # w~ (K, N), filled after the forward pass, read by the hooks

        def hooked(site: dict) -> Tensor:
            z = site["value"]
            if not z.requires_grad:
                return z
            z = z.view_as(z)
            nb = len(site["fn"].batch_shape)
            frame = next(f for f in site["cond_indep_stack"] if f.name == self.plate)
            shape = [1] * z.dim()
            shape[nb - nesting - 1], shape[nb + frame.dim] = k, frame.size
            z.register_hook(lambda grad: grad * weights[0].reshape(shape))
            return z

        latents = list(_sample_sites(guide_trace, latent_only=True))
        live, dead = guide_trace.copy(), guide_trace.copy()
        for name, site in latents:
            live.nodes[name] = dict(site, value=hooked(site))
            dead.nodes[name] = dict(site, value=site["value"].detach())

        def replay(fn: Callable, trace: poutine.Trace) -> poutine.Trace:
            vec = _vectorize(fn, k, nesting)
            return poutine.trace(poutine.replay(vec, trace=trace)).get_trace(*args, **kwargs)

        model_live = replay(model, live)
        guide_live, guide_dead = replay(guide, live), replay(guide, dead)
        scale = self._scale(model_live, guide_trace)

        # surrogate has the value of log w; its gradient is IWAE's for theta and the path
        # derivative only (score term cancelled) for phi, weighted once more by the hooks.
        surrogate = 0.0
        for name, site in _sample_sites(model_live):
            surrogate = surrogate + point_log_prob(name, site, self.plate, nesting)
        for name, _ in latents:
            score = point_log_prob(name, guide_dead.nodes[name], self.plate, nesting)
            log_q = point_log_prob(name, guide_live.nodes[name], self.plate, nesting)
            surrogate = surrogate - (log_q - score + score.detach())
        log_w = surrogate.detach()
        weights.append(torch.softmax(log_w, 0))
        return log_w, surrogate, scale

    def differentiable_loss(self, model: Callable, guide: Callable, *args: Any, **kwargs: Any):
        """Minus the IWAE bound (value) with the DReG gradient: a scalar tensor."""
        log_w, surrogate, scale = self._log_w(model, guide, args, kwargs)
        bound = torch.logsumexp(log_w, 0) - math.log(self.num_particles)  # (N,)
        w = torch.softmax(log_w, 0)
        grad_part = (w * surrogate).sum(0)  # (N,)
        return -scale * (bound + grad_part - grad_part.detach()).sum()
