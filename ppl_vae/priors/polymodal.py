"""The polymodal latent: each dimension picks one of N Gaussians."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["PolymodalPrior"]


class PolymodalPrior(nn.Module):
    """A per-dimension mixture of N learnable Gaussians (the "polymodal" prior).

    .. math::

        p(z) = \\prod_{d=1}^{D} \\sum_{n=1}^{N} \\pi_{dn}\\, \\mathcal{N}(z_d; \\mu_{dn},
        \\sigma_{dn}^2)

    Unlike :class:`MixturePrior` (N components over the whole vector), every dimension picks
    its own mode, so D dimensions span ``N^D`` modes with ``3 N D`` parameters. The means start
    evenly spaced on [-2, 2] so the modes are distinct, the scales at ``4 / N`` (at most 1).
    Used by :func:`ppl_vae.models.build_polymodal_vae`, whose guide is multimodal per
    dimension too; it also works with the Gaussian guide.

    Args:
        z_dim: number of latent dimensions D.
        modes: number of Gaussians N per dimension.

    >>> PolymodalPrior(3, modes=4)().log_prob(torch.zeros(7, 3)).shape
    torch.Size([7])
    """

    analytic_kl: bool = False

    def __init__(self, z_dim: int, modes: int = 3) -> None:
        super().__init__()
        if modes < 1:
            raise ValueError(f"the polymodal prior needs at least one mode, got {modes}")
        self.z_dim, self.modes = z_dim, modes
        loc = torch.linspace(-2.0, 2.0, modes) if modes > 1 else torch.zeros(1)
        self.logits = nn.Parameter(torch.zeros(z_dim, modes))
        self.loc = nn.Parameter(loc.expand(z_dim, modes).clone())
        self.log_scale = nn.Parameter(torch.full((z_dim, modes), math.log(min(1.0, 4.0 / modes))))

    def forward(self) -> dist.Distribution:
        mix = dist.Categorical(logits=self.logits)  # batch (D,)
        comp = dist.Normal(self.loc, self.log_scale.exp())  # batch (D, N)
        return dist.MixtureSameFamily(mix, comp).to_event(1)
