"""The standard Normal prior p(z) = N(0, I)."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import nn

__all__ = ["NormalPrior"]


class NormalPrior(nn.Module):
    """The standard Normal prior p(z) = N(0, I).

    Args:
        z_dim: number of latent dimensions.

    ``forward()`` returns ``Normal(0, 1).to_event(1)`` with batch shape ``()`` and event shape
    ``(z_dim,)``; its tensors are buffers, so the prior follows ``.to(device)``.

    >>> NormalPrior(3)().sample().shape
    torch.Size([3])
    """

    #: KL(q || p) has a closed form for a Normal guide, so TraceMeanField_ELBO applies.
    analytic_kl: bool = True

    def __init__(self, z_dim: int) -> None:
        super().__init__()
        self.z_dim = z_dim
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))

    def forward(self) -> dist.Distribution:
        return dist.Normal(self.loc, self.scale).to_event(1)
