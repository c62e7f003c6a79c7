"""A learned Gaussian-mixture prior."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

from ppl_vae.priors.diagonal_mixture import DiagonalNormalMixture

__all__ = ["MixturePrior"]


class MixturePrior(nn.Module):
    """A Gaussian mixture with learnable weights, means and diagonal scales.

    .. math::

        p(z) = \\sum_{c=1}^{C} \\pi_c\\, \\mathcal{N}(z; \\mu_c, \\operatorname{diag} \\sigma_c^2),
        \\qquad \\pi = \\operatorname{softmax}(\\text{logits}).

    The means start at ``randn`` draws so the components begin spread over the region the
    standard Normal covers; the scales start at 1 and the weights uniform. Scoring ``n`` points
    costs ``O(n C z_dim)``, as matrix products (:class:`~ppl_vae.priors.DiagonalNormalMixture`).

    Args:
        z_dim: number of latent dimensions.
        components: number of mixture components ``C``.

    ``forward()`` returns a :class:`~ppl_vae.priors.DiagonalNormalMixture` with batch shape
    ``()`` and event shape ``(z_dim,)``; it scores any batch of z such as ``(K, N, z_dim)``.

    >>> p = MixturePrior(2, components=3)()
    >>> p.log_prob(torch.zeros(4, 5, 2)).shape
    torch.Size([4, 5])
    """

    analytic_kl: bool = False

    def __init__(self, z_dim: int, components: int = 10) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"a mixture needs at least one component, got {components}")
        self.z_dim, self.components = z_dim, components
        self.logits = nn.Parameter(torch.zeros(components))
        self.loc = nn.Parameter(torch.randn(components, z_dim))
        self.log_scale = nn.Parameter(torch.zeros(components, z_dim))

    def forward(self) -> dist.Distribution:
        return DiagonalNormalMixture(self.logits, self.loc, self.log_scale.exp())
