"""The flow guide: q(z|x) as a Gaussian carried through inverse autoregressive flow steps."""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import pyro.distributions as dist
import torch
from pyro.distributions.transforms import ConditionalAffineAutoregressive
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import ConditionalAutoRegressiveNN
from torch import Tensor, nn

from ppl_vae.models.nets import MLP
from ppl_vae.priors.flow import _AffineAutoregressive

__all__ = ["FlowEncoder", "FlowPosterior"]


class FlowPosterior(dist.TransformedDistribution):
    """q(z|x) of :class:`FlowEncoder`: the base Gaussian through the IAF steps.

    Its ``mean`` is the point the flow carries the base Gaussian's mean to, ``f(mu(x))``: the
    flow's mean has no closed form, and this deterministic summary is what pictures and
    embeddings (``encode(x).mean``) use. ``log_prob`` is exact. On the guide's own draws it is
    one pass (each step caches its output); on other points each step is inverted, which
    costs ``z_dim`` network passes (Pyro's DReG and STL gradients, ELBO surgery).
    """

    arg_constraints: dict = {}
    #: log_prob away from the distribution's own draws costs z_dim passes per step: features
    #: that score q at many other points (ELBO surgery's aggregate posterior) skip it
    costly_rescoring: bool = True

    @property
    def mean(self) -> Tensor:
        point = self.base_dist.mean
        for t in self.transforms:  # not t(point): that would replace the draw t has cached
            shift, log_scale = t.arn(point)
            log_scale = clamp_preserve_gradients(
                log_scale, t.log_scale_min_clip, t.log_scale_max_clip
            )
            point = torch.exp(log_scale) * point + shift
        return point


class _ConditionalIAF(ConditionalAffineAutoregressive):
    """Pyro's conditional affine autoregressive step whose conditioned transform has the
    dtype-correct inverse of :class:`ppl_vae.priors.flow._AffineAutoregressive`."""

    def condition(self, context: Tensor) -> _AffineAutoregressive:
        cond_nn = partial(self.nn, context=context)
        cond_nn.permutation = cond_nn.func.permutation
        cond_nn.get_permutation = cond_nn.func.get_permutation
        return _AffineAutoregressive(cond_nn, **self.kwargs)


class FlowEncoder(nn.Module):
    """The flow guide q(z|x) of inverse autoregressive flow (Kingma et al. 2016).

    The network maps ``x`` to a Gaussian's ``mu``, ``log sigma^2`` and a context ``h``; a
    draw is the Gaussian's, carried through ``layers`` affine autoregressive steps conditioned
    on ``h``:

    .. math::

        z_0 = \\mu(x) + \\sigma(x) \\odot \\epsilon, \\qquad
        z_t = m_t(z_{t-1}, h) + s_t(z_{t-1}, h) \\odot z_{t-1},

        \\log q(z_T \\mid x) = \\log \\mathcal N(z_0; \\mu, \\sigma^2)
            - \\sum_{t=1}^{T} \\sum_i \\log s_{t,i}(z_{t-1}, h),

    with ``m_t`` and ``log s_t`` from a MADE whose outputs depend on earlier coordinates
    only (a different random order in each step), so each step's Jacobian is triangular.
    The steps start as the identity (zeroed output layers), so the guide starts as the
    Gaussian guide it extends. A drop-in for :class:`~ppl_vae.models.GaussianEncoder`.

    Args:
        x_dim: number of features of one data point.
        z_dim: number of latent dimensions.
        hidden: hidden widths of the encoder network.
        activation: its hidden nonlinearity.
        layers: number of IAF steps (at least 1).
        context_dim: size of ``h``; ``z_dim`` by default.
        flow_hidden: hidden widths of each step's MADE; ``(4 * z_dim,) * 2`` by default.
        net: the network from ``x`` to the ``2 * z_dim + context_dim`` numbers
            ``(mu, log sigma^2, h)`` in place of the MLP (a
            :class:`~ppl_vae.models.conv.ConvNet` for images).

    Cost: a draw and its ``log_prob`` add ``layers`` MADE passes to the Gaussian guide's
    encoder pass; ``log_prob`` of a point the guide did not draw costs ``z_dim`` passes per
    step (see :class:`FlowPosterior`).

    >>> q = FlowEncoder(4, 2, (8,), layers=2)(torch.zeros(5, 4))
    >>> z = q.rsample()
    >>> q.batch_shape, q.event_shape, q.log_prob(z).shape
    (torch.Size([5]), torch.Size([2]), torch.Size([5]))
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (300, 300),
        activation: str = "softplus",
        layers: int = 2,
        context_dim: int | None = None,
        flow_hidden: Sequence[int] | None = None,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if layers < 1:
            raise ValueError(f"a flow guide needs at least one step, got layers={layers}")
        self.x_dim, self.z_dim, self.layers = x_dim, z_dim, layers
        self.context_dim = context_dim if context_dim is not None else z_dim
        out = 2 * z_dim + self.context_dim
        self.net = net if net is not None else MLP(x_dim, hidden, out, activation)
        widths = list(flow_hidden) if flow_hidden is not None else [4 * z_dim] * 2
        self.steps = nn.ModuleList(
            _ConditionalIAF(ConditionalAutoRegressiveNN(z_dim, self.context_dim, widths))
            for _ in range(layers)
        )
        with torch.no_grad():  # each step starts as the identity map
            for step in self.steps:
                step.nn.layers[-1].weight.zero_()
                step.nn.layers[-1].bias.zero_()

    def _base_and_context(self, x: Tensor) -> tuple[dist.Distribution, Tensor]:
        loc, log_var, h = self.net(x).split([self.z_dim, self.z_dim, self.context_dim], -1)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1), h

    def gaussian(self, x: Tensor) -> dist.Distribution:
        """The base Gaussian N(mu(x), diag sigma(x)^2) before the flow; batch ``(...)``,
        event ``(z_dim,)``."""
        return self._base_and_context(x)[0]

    def forward(self, x: Tensor) -> FlowPosterior:
        base, h = self._base_and_context(x)
        return FlowPosterior(base, [step.condition(h) for step in self.steps])
