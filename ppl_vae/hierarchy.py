"""Two stochastic layers as one Pyro program: z2 -> z1 -> x in the model, x -> z1 -> z2 in the
guide (the IWAE paper's two-layer VAE)."""

from __future__ import annotations

import pyro
import torch
from torch import Tensor, nn

from .model import VAE

__all__ = ["StackedEncoder", "TwoLayerVAE"]


class StackedEncoder(nn.Module):
    """``u -> q(z2 | E[z1 | u])``: the two guide layers as one encoder of the top code, for a
    prior built on the encoder (the VampPrior's components at pseudo-inputs ``u``). The exact
    q(z2|u) integrates over z1, which has no closed form; this uses z1's mean (for a flow
    guide, the flow's image of its base mean)."""

    def __init__(self, bottom: nn.Module, top: nn.Module) -> None:
        super().__init__()
        self.bottom, self.top = bottom, top
        self.z_dim: int = getattr(top, "z_dim", -1)

    def forward(self, u: Tensor):
        return self.top(self.bottom(u).mean)

    def gaussian(self, u: Tensor):
        """The top layer's Gaussian (before a flow guide's steps) at ``E[z1 | u]``."""
        return getattr(self.top, "gaussian", self.top)(self.bottom(u).mean)


class TwoLayerVAE(VAE):
    """A VAE with two stochastic layers (Burda, Grosse & Salakhutdinov 2016, section 5).

    .. math::

        p(x, z_1, z_2) = p(z_2)\\, p(z_1 \\mid z_2)\\, p(x \\mid z_1), \\qquad
        q(z_1, z_2 \\mid x) = q(z_1 \\mid x)\\, q(z_2 \\mid z_1).

    Site names ``"z2"``, ``"z1"`` and ``"x"``, all in ``pyro.plate("data")``, so every
    objective and estimator of the package applies as to any program. The prior is swappable
    on the top layer only (``prior`` is p(z2)). The guide is bottom-up while the model is
    top-down, so the per-site closed-form KL is no term of the ELBO at z1
    (:func:`ppl_vae.objectives.kl_obstacles` says so, and ``auto`` trains with STL).

    For pictures the code is the bottom layer: ``encode(x)`` is q(z1|x) and ``decode(z1)``
    the mean of p(x|z1); ``sample(n)`` decodes the mean of p(z1|z2) at draws z2 ~ p(z2).

    Args:
        encoder: module mapping x ``(N, x_dim)`` to q(z1|x), event ``(z1_dim,)``.
        top: module mapping z1 to q(z2|z1), event ``(z2_dim,)``.
        upper: module mapping z2 to p(z1|z2), event ``(z1_dim,)``.
        decoder: module mapping z1 to p(x|z1), event ``(x_dim,)``.
        prior: module whose ``forward()`` returns p(z2).
        name: prefix of the networks' parameters in Pyro's parameter store.

    >>> from ppl_vae import build_vae
    >>> vae = build_vae(x_dim=4, z_dim=3, hidden=(8,), top_z_dim=2, top_hidden=(8,))
    >>> x = torch.bernoulli(torch.full((5, 4), 0.5))
    >>> pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).shape
    torch.Size([])
    """

    def __init__(
        self,
        encoder: nn.Module,
        top: nn.Module,
        upper: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        name: str = "vae",
    ) -> None:
        super().__init__(encoder, decoder, prior, name=name)
        self.top, self.upper = top, upper
        self.top_z_dim: int = getattr(top, "z_dim", -1)

    def model(self, x: Tensor, *labels: Tensor) -> Tensor:
        """p(z2) p(z1|z2) p(x|z1) with ``x`` of shape ``(N, x_dim)`` observed; returns z1."""
        self._check(x)
        self._register()
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.upper(z2))
            pyro.sample("x", self.decoder(z1), obs=x)
        return z1

    def guide(self, x: Tensor, *labels: Tensor) -> Tensor:
        """q(z1|x) q(z2|z1) for ``x`` of shape ``(N, x_dim)``; returns z1."""
        self._check(x)
        self._register()
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", self.encoder(x))
            pyro.sample("z2", self.top(z1))
        return z1

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Means of p(x|z1) at z1 = mean of p(z1|z2), z2 ~ p(z2); shape ``(n, x_dim)``."""
        z2 = self.prior().sample((n,))
        return self.decode(self.upper(z2).mean)
