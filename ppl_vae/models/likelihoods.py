"""Decoder heads p(x|z): map the decoder network's output to a Pyro distribution over x."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ppl_vae.models.discretized import (
    DiscretizedGaussianLikelihood,
    DiscretizedLogisticLikelihood,
)
from ppl_vae.models.nets import MLP
from ppl_vae.runtime.kernels import FastBernoulli

__all__ = [
    "LIKELIHOODS",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "Decoder",
    "DiscretizedGaussianLikelihood",
    "DiscretizedLogisticLikelihood",
    "GaussianLikelihood",
    "make_likelihood",
]


class BernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d Bernoulli(x_d; sigmoid(h_d)) for binary data x in {0, 1}^D.

    ``forward(h)`` takes logits ``h`` of shape ``(..., D)`` and returns a distribution with
    event shape ``(D,)``.
    """

    binary: bool = True
    outputs_per_feature: int = 1

    def forward(self, h: Tensor) -> dist.Distribution:
        return FastBernoulli(logits=h).to_event(1)


class ContinuousBernoulliLikelihood(nn.Module):
    """p(x|z) = prod_d CB(x_d; sigmoid(h_d)) for grey levels in [0, 1].

    The continuous Bernoulli (Loaiza-Ganem & Cunningham 2019) adds the normalizing constant that
    the Bernoulli lacks on non-binary data, so its log-likelihood is a proper density.
    """

    binary: bool = False
    outputs_per_feature: int = 1

    def forward(self, h: Tensor) -> dist.Distribution:
        return dist.ContinuousBernoulli(logits=h).to_event(1)


class GaussianLikelihood(nn.Module):
    """p(x|z) = N(x; h, sigma^2 I) for real-valued data.

    Args:
        x_dim: number of features D.
        scale: the fixed standard deviation sigma, or the initial one if ``learn_scale``.
        learn_scale: learn one log-sigma per feature.
    """

    binary: bool = False
    outputs_per_feature: int = 1

    def __init__(self, x_dim: int, scale: float = 1.0, learn_scale: bool = False) -> None:
        super().__init__()
        if scale <= 0:
            raise ValueError(f"the Gaussian likelihood's scale must be positive, got {scale}")
        log_scale = torch.full((x_dim,), math.log(scale))
        if learn_scale:
            self.log_scale = nn.Parameter(log_scale)
        else:
            self.register_buffer("log_scale", log_scale)

    def forward(self, h: Tensor) -> dist.Distribution:
        return dist.Normal(h, self.log_scale.exp()).to_event(1)


LIKELIHOODS = (
    "bernoulli",
    "continuous-bernoulli",
    "gaussian",
    "discretized-logistic",
    "discretized-gaussian",
)


def make_likelihood(
    name: str,
    x_dim: int,
    scale: float = 1.0,
    learn_scale: bool = False,
    components: int = 5,
) -> nn.Module:
    """Build the likelihood head called ``name``, one of :data:`LIKELIHOODS`.

    ``scale`` and ``learn_scale`` are the Gaussian's; ``components`` is the number of
    logistics per feature of ``discretized-logistic`` (its decoder emits 3 per component and
    feature: :attr:`DiscretizedLogisticLikelihood.outputs_per_feature`).
    """
    if name == "bernoulli":
        return BernoulliLikelihood()
    if name == "continuous-bernoulli":
        return ContinuousBernoulliLikelihood()
    if name == "gaussian":
        return GaussianLikelihood(x_dim, scale, learn_scale)
    if name == "discretized-logistic":
        return DiscretizedLogisticLikelihood(components)
    if name == "discretized-gaussian":
        return DiscretizedGaussianLikelihood()
    raise ValueError(f"unknown likelihood {name!r}; choose one of {list(LIKELIHOODS)}")


class Decoder(nn.Module):
    """The generative network p(x|z): an MLP from z to the likelihood's parameters, ``x_dim``
    times the head's ``outputs_per_feature`` of them (1 when the head does not say), in the
    head's layout.

    Args:
        z_dim: number of latent dimensions.
        x_dim: number of features of one data point.
        hidden: hidden widths of the MLP.
        activation: hidden nonlinearity.
        likelihood: a likelihood head such as :class:`BernoulliLikelihood`.
        net: the network from z to the head's input in place of the MLP (a
            :class:`~ppl_vae.models.conv.DeconvNet` for images); ``hidden`` and
            ``activation`` then do not apply.

    Shapes:
        ``forward(z)``: ``z`` of shape ``(..., z_dim)`` gives a distribution with batch shape
        ``(...)`` and event shape ``(x_dim,)``.

    >>> p = Decoder(2, 4, (8,), likelihood=BernoulliLikelihood())(torch.zeros(5, 2))
    >>> p.batch_shape, p.event_shape
    (torch.Size([5]), torch.Size([4]))
    """

    def __init__(
        self,
        z_dim: int,
        x_dim: int,
        hidden: Sequence[int] = (300, 300),
        activation: str = "softplus",
        likelihood: nn.Module | None = None,
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.z_dim, self.x_dim = z_dim, x_dim
        head = likelihood if likelihood is not None else BernoulliLikelihood()
        if net is None:
            per_feature = getattr(head, "outputs_per_feature", 1)
            net = MLP(z_dim, tuple(reversed(hidden)), x_dim * per_feature, activation)
        self.net = net
        self.likelihood = head

    def forward(self, z: Tensor) -> dist.Distribution:
        return self.likelihood(self.net(z))
