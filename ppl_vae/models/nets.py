"""Multilayer perceptrons and the Gaussian encoder q(z|x)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ppl_vae.runtime.kernels import Softplus

__all__ = ["ACTIVATIONS", "MLP", "GaussianEncoder"]


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "softplus": Softplus,  # nn.Softplus's numbers without its slow log1p (ppl_vae.runtime.kernels)
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
}


def hidden_layers(in_features: int, hidden: Sequence[int], activation: str) -> list[nn.Module]:
    """``Linear`` and activation for each width of ``hidden``, from ``in_features`` on: an
    MLP's hidden part, with no output layer."""
    if activation not in ACTIVATIONS:
        raise ValueError(f"unknown activation {activation!r}; choose one of {sorted(ACTIVATIONS)}")
    layers: list[nn.Module] = []
    widths = [in_features, *hidden]
    for w_in, w_out in zip(widths[:-1], widths[1:], strict=True):
        layers += [nn.Linear(w_in, w_out), ACTIVATIONS[activation]()]
    return layers


class MLP(nn.Sequential):
    """A fully connected network ``in -> hidden... -> out`` with no activation on the output.

    Args:
        in_features: size of the input's last dimension.
        hidden: widths of the hidden layers, e.g. ``(300, 300)``.
        out_features: size of the output's last dimension.
        activation: name of the hidden nonlinearity, one of :data:`ACTIVATIONS`.

    >>> MLP(4, (8, 8), 3)(torch.zeros(5, 4)).shape
    torch.Size([5, 3])
    """

    def __init__(
        self,
        in_features: int,
        hidden: Sequence[int],
        out_features: int,
        activation: str = "softplus",
    ) -> None:
        layers = hidden_layers(in_features, hidden, activation)
        layers.append(nn.Linear(hidden[-1] if hidden else in_features, out_features))
        super().__init__(*layers)
        self.in_features = in_features
        self.out_features = out_features


class GaussianEncoder(nn.Module):
    """The guide's distribution q(z|x) = N(z; mu(x), diag sigma(x)^2).

    The network outputs ``mu`` and ``log sigma^2``; ``sigma = exp(log sigma^2 / 2)``.

    Args:
        x_dim: number of features of one data point (784 for MNIST).
        z_dim: number of latent dimensions.
        hidden: hidden widths of the MLP.
        activation: hidden nonlinearity.
        net: the network from ``x`` to the ``2 * z_dim`` numbers ``(mu, log sigma^2)`` in
            place of the MLP (a :class:`~ppl_vae.models.conv.ConvNet` for images); ``hidden``
            and ``activation`` then do not apply.

    Shapes:
        ``forward(x)``: ``x`` of shape ``(..., x_dim)`` gives a distribution with batch shape
        ``(...)`` and event shape ``(z_dim,)``.

    >>> q = GaussianEncoder(4, 2, (8,))(torch.zeros(5, 4))
    >>> q.batch_shape, q.event_shape
    (torch.Size([5]), torch.Size([2]))
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (300, 300),
        activation: str = "softplus",
        net: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim = x_dim, z_dim
        self.net = net if net is not None else MLP(x_dim, hidden, 2 * z_dim, activation)

    def forward(self, x: Tensor) -> dist.Distribution:
        loc, log_var = self.net(x).chunk(2, dim=-1)
        return dist.Normal(loc, torch.exp(0.5 * log_var)).to_event(1)
