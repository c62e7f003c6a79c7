"""A learned normalizing-flow prior (coupling, spline or autoregressive)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import Tensor, nn
from torch.distributions import constraints

__all__ = ["FLOW_TYPES", "FlowPrior"]


class _Permutation(TransformModule):
    """A fixed permutation of the last dimension, stored as a buffer so it follows ``.to()``."""

    domain = constraints.real_vector
    codomain = constraints.real_vector
    bijective = True
    volume_preserving = True

    def __init__(self, permutation: Tensor) -> None:
        super().__init__(cache_size=1)
        self.register_buffer("perm", permutation)
        self.register_buffer("inv_perm", torch.argsort(permutation))

    def _call(self, x: Tensor) -> Tensor:
        return x[..., self.perm]

    def _inverse(self, y: Tensor) -> Tensor:
        return y[..., self.inv_perm]

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        return x.new_zeros(x.shape[:-1])


def _start_near_identity(layer: nn.Module) -> nn.Module:
    """Zero the conditioner's output layer (and an element-wise spline's own parameters).

    An affine layer then starts as the identity and a spline as a smooth near-identity map
    (uniform bins, knot slopes ``softplus(0)``), so the flow prior starts close to N(0, I), as a
    standard VAE does; random output layers give spiky initial densities instead.
    """
    with torch.no_grad():
        for m in layer.modules():
            if isinstance(m, ConditionalDenseNN | ConditionalAutoRegressiveNN):
                m.layers[-1].weight.zero_()
                m.layers[-1].bias.zero_()
            elif isinstance(m, T.Spline):
                for p in m.parameters(recurse=False):
                    p.zero_()
    return layer


class _AffineAutoregressive(T.AffineAutoregressive):
    """Pyro's affine autoregressive layer with a dtype-correct inverse (Pyro 1.9 starts the
    inversion from float32 zeros, which breaks float64 flows). The inverse costs ``z_dim``
    passes; :class:`FlowPrior` uses it only for sampling."""

    def _inverse(self, y: Tensor) -> Tensor:
        x = [y.new_zeros(y.shape[:-1])] * y.shape[-1]
        for idx in self.arn.permutation.tolist():
            mean, log_scale = self.arn(torch.stack(x, dim=-1))
            log_scale = clamp_preserve_gradients(
                log_scale[..., idx], self.log_scale_min_clip, self.log_scale_max_clip
            )
            x[idx] = (y[..., idx] - mean[..., idx]) * torch.exp(-log_scale)
        x_all = torch.stack(x, dim=-1)
        _, log_scale = self.arn(x_all)
        self._cached_log_scale = clamp_preserve_gradients(
            log_scale, self.log_scale_min_clip, self.log_scale_max_clip
        )
        return x_all


#: Flow layers of :class:`FlowPrior`.
FLOW_TYPES = ("affine-coupling", "spline-coupling", "maf")


class FlowPrior(nn.Module):
    """A normalizing-flow prior p(z) = N(u; 0, I) |det du/dz| with z = f(u), learned jointly.

    .. math::

        \\log p(z) = \\log \\mathcal{N}(f^{-1}(z); 0, I)
            + \\log \\left| \\det \\frac{\\partial f^{-1}(z)}{\\partial z} \\right|

    In a VAE the prior is scored on the guide's z at every step, i.e. the flow runs in the
    inverse direction ``z -> u`` on points it did not generate; sampling from the prior is rare
    (pictures). The layers are chosen so that this inverse costs one network pass per layer:

    - ``"affine-coupling"`` (RealNVP, Dinh et al. 2017) and ``"spline-coupling"`` (rational
      linear splines, Durkan et al. 2019; Dolatabadi et al. 2020): either direction is one pass;
      a fixed random permutation between layers lets every coordinate be transformed.
    - ``"maf"``: affine autoregressive layers (Papamakarios et al. 2017) used *inverted*, so the
      data-to-noise direction (log_prob) is the single-pass one and sampling costs ``z_dim``
      passes. Pyro's ``AffineAutoregressive`` is an IAF (one-pass forward), hence the ``.inv``.

    Pyro transforms cache the last (x, y) pair by identity; ``forward()`` clears those caches so
    a z tensor scored before a parameter update (or a ``load_state_dict``) is scored afresh.

    Args:
        z_dim: number of latent dimensions (at least 2 for the coupling layers).
        flow_layers: number of flow layers.
        flow_type: one of :data:`FLOW_TYPES`.
        hidden: hidden widths of each layer's conditioner network; ``(4 * z_dim,) * 2`` by default.
        count_bins: number of spline segments (``"spline-coupling"`` only).
        bound: the splines act on ``[-bound, bound]`` and are the identity outside.

    >>> p = FlowPrior(2, flow_layers=2)()
    >>> p.log_prob(torch.zeros(4, 5, 2)).shape
    torch.Size([4, 5])
    """

    analytic_kl: bool = False

    def __init__(
        self,
        z_dim: int,
        flow_layers: int = 4,
        flow_type: str = "affine-coupling",
        hidden: Sequence[int] | None = None,
        count_bins: int = 8,
        bound: float = 5.0,
    ) -> None:
        super().__init__()
        if flow_type not in FLOW_TYPES:
            raise ValueError(f"unknown flow type {flow_type!r}; choose one of {list(FLOW_TYPES)}")
        if flow_type != "maf" and z_dim < 2:
            raise ValueError(f"coupling layers need z_dim >= 2, got {z_dim}; use flow_type='maf'")
        if flow_layers < 1:
            raise ValueError(f"a flow needs at least one layer, got {flow_layers}")
        self.z_dim, self.flow_layers, self.flow_type = z_dim, flow_layers, flow_type
        hidden_dims = list(hidden) if hidden is not None else [max(8, 4 * z_dim)] * 2
        self.register_buffer("loc", torch.zeros(z_dim))
        self.register_buffer("scale", torch.ones(z_dim))
        layers: list[nn.Module] = []
        for i in range(flow_layers):
            if i > 0 and flow_type != "maf":
                layers.append(_Permutation(torch.randperm(z_dim)))
            if flow_type == "affine-coupling":
                layers.append(T.affine_coupling(z_dim, hidden_dims=hidden_dims))
            elif flow_type == "spline-coupling":
                layers.append(
                    T.spline_coupling(
                        z_dim, hidden_dims=hidden_dims, count_bins=count_bins, bound=bound
                    )
                )
            else:  # the autoregressive net's own random order differs from layer to layer
                layers.append(_AffineAutoregressive(AutoRegressiveNN(z_dim, hidden_dims)))
        for layer in layers:
            _start_near_identity(layer)
        #: The trainable layers, in base-to-z order for coupling flows; for ``"maf"`` each is
        #: used through its inverse (see :attr:`transforms`).
        self.layers = nn.ModuleList(layers)

    @property
    def transforms(self) -> list[dist.transforms.Transform]:
        """The bijections u -> z in order, as handed to ``TransformedDistribution``."""
        if self.flow_type == "maf":
            return [t.inv for t in self.layers]
        return list(self.layers)

    def forward(self) -> dist.Distribution:
        for t in self.layers:
            t._cached_x_y = None, None
        base = dist.Normal(self.loc, self.scale).to_event(1)
        return dist.TransformedDistribution(base, self.transforms)
