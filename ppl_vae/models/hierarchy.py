"""Two stochastic layers as one Pyro program: z2 -> z1 -> x in the model, and in the guide either
x -> z1 -> z2 (bottom-up, the IWAE paper's two-layer VAE) or x -> z2 -> z1 on shared bottom-up
features (top-down, the order of the model, as in the ladder VAE)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch
from torch import Tensor, nn

from ppl_vae.models.nets import hidden_layers
from ppl_vae.models.vae import VAE

__all__ = [
    "GUIDE_DIRECTIONS",
    "Features",
    "StackedEncoder",
    "TopDownEncoder",
    "TopDownTwoLayerVAE",
    "TwoLayerVAE",
]


#: The orders of a two-layer guide: ``bottom-up`` q(z1|x) q(z2|z1), ``top-down``
#: q(z2|x) q(z1|x,z2).
GUIDE_DIRECTIONS = ("bottom-up", "top-down")


class Features(nn.Sequential):
    """The deterministic features ``h(x)`` a top-down guide shares between its two layers: the
    hidden layers of an MLP, each followed by its activation (no output layer); with no hidden
    widths, ``h(x) = x``.

    >>> Features(4, (8, 6))(torch.zeros(5, 4)).shape
    torch.Size([5, 6])
    """

    def __init__(
        self, in_features: int, hidden: Sequence[int], activation: str = "softplus"
    ) -> None:
        super().__init__(*hidden_layers(in_features, hidden, activation))
        self.in_features = in_features
        self.out_features = hidden[-1] if hidden else in_features


class TopDownEncoder(nn.Module):
    """The networks of a top-down two-layer guide: features ``h = h(x)``, q(z2|x) = ``top(h)``
    and q(z1|x, z2) = ``bottom([h, z2])``.

    Called on ``x`` it gives q(z1 | x, z2 = mean of q(z2|x)), a code with a ``mean`` for the
    pictures and the active units; the guide's q(z1|x) itself is the mixture over z2, which
    has no closed form. ``top`` and ``bottom`` are Gaussian or flow encoders.
    """

    def __init__(self, features: nn.Module, top: nn.Module, bottom: nn.Module) -> None:
        super().__init__()
        self.features, self.top, self.bottom = features, top, bottom
        self.z_dim: int = getattr(bottom, "z_dim", -1)

    @staticmethod
    def join(h: Tensor, z2: Tensor) -> Tensor:
        """``[h, z2]`` along the last dimension, ``h`` broadcast over z2's particle dims."""
        return torch.cat([h.expand(*z2.shape[:-1], h.shape[-1]), z2], dim=-1)

    def forward(self, x: Tensor):
        h = self.features(x)
        return self.bottom(self.join(h, self.top(h).mean))


class StackedEncoder(nn.Module):
    """``u -> q(z2 | E[z1 | u])``: the two guide layers as one encoder of the top code, for a
    prior built on the encoder (the VampPrior's components at pseudo-inputs ``u``). The exact
    q(z2|u) integrates over z1, which has no closed form; this uses z1's mean (for a flow
    guide, the flow's image of its base mean). With ``features=True`` ``bottom`` gives the
    top layer's input itself (a top-down guide's features of ``u``), and q(z2|u) is exact."""

    def __init__(self, bottom: nn.Module, top: nn.Module, features: bool = False) -> None:
        super().__init__()
        self.bottom, self.top, self.features = bottom, top, features
        self.z_dim: int = getattr(top, "z_dim", -1)

    def _below(self, u: Tensor) -> Tensor:
        below = self.bottom(u)
        return below if self.features else below.mean

    def forward(self, u: Tensor):
        return self.top(self._below(u))

    def gaussian(self, u: Tensor):
        """The top layer's Gaussian (before a flow guide's steps) at ``u``."""
        return getattr(self.top, "gaussian", self.top)(self._below(u))


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
        x = self._rows(x)
        self._register()
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", self.prior())
            z1 = pyro.sample("z1", self.upper(z2))
            pyro.sample("x", self.decoder(z1), obs=x)
        return z1

    def guide(self, x: Tensor, *labels: Tensor) -> Tensor:
        """q(z1|x) q(z2|z1) for ``x`` of shape ``(N, x_dim)``; returns z1."""
        x = self._rows(x)
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


class TopDownTwoLayerVAE(TwoLayerVAE):
    """:class:`TwoLayerVAE` with a top-down guide, drawn in the model's order:

    .. math::

        q(z_2, z_1 \\mid x) = q(z_2 \\mid h(x))\\, q(z_1 \\mid h(x), z_2),

    where ``h(x)`` are deterministic bottom-up features shared by both layers (the inference
    order of the ladder VAE, Sonderby et al. 2016, without its sharing of parameters between
    q(z1|x, z2) and p(z1|z2)). Its marginal q(z1|x) is a continuous mixture, where the
    bottom-up guide's is one Gaussian, and q(z2|x) reads the features of x instead of a noisy
    draw of z1. Since the guide draws z2 before z1, the per-site closed-form KL is a term of the
    ELBO at both layers (KL(q(z2|x) || p(z2)) and, at the drawn z2, KL(q(z1|x,z2) || p(z1|z2))),
    so ``mean-field`` applies too.

    ``encode(x)`` is q(z1 | x, z2 = mean of q(z2|x)) (see :class:`TopDownEncoder`).

    Args:
        encoder: the guide's networks.
        upper: module mapping z2 to p(z1|z2), event ``(z1_dim,)``.
        decoder: module mapping z1 to p(x|z1), event ``(x_dim,)``.
        prior: module whose ``forward()`` returns p(z2).
        name: prefix of the networks' parameters in Pyro's parameter store.

    >>> from ppl_vae import build_vae
    >>> vae = build_vae(x_dim=4, z_dim=3, hidden=(8,), top_z_dim=2, top_hidden=(8,),
    ...                 guide_direction="top-down")
    >>> x = torch.bernoulli(torch.full((5, 4), 0.5))
    >>> pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x).shape
    torch.Size([])
    """

    def __init__(
        self,
        encoder: TopDownEncoder,
        upper: nn.Module,
        decoder: nn.Module,
        prior: nn.Module,
        name: str = "vae",
    ) -> None:
        VAE.__init__(self, encoder, decoder, prior, name=name)
        self.upper = upper
        self.top_z_dim: int = getattr(encoder.top, "z_dim", -1)

    def guide(self, x: Tensor, *labels: Tensor) -> Tensor:
        """q(z2|x) q(z1|x, z2) for ``x`` of shape ``(N, x_dim)``; returns z1."""
        x = self._rows(x)
        self._register()
        net = self.encoder
        with pyro.plate("data", x.shape[0]):
            h = net.features(x)
            z2 = pyro.sample("z2", net.top(h))
            return pyro.sample("z1", net.bottom(net.join(h, z2)))
