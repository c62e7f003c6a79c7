"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape (z_dim,)."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import pyro.distributions.transforms as T
import torch
from pyro.distributions.torch_transform import TransformModule
from pyro.distributions.transforms.utils import clamp_preserve_gradients
from pyro.nn import AutoRegressiveNN, ConditionalAutoRegressiveNN, ConditionalDenseNN
from torch import Tensor, nn
from torch.distributions import constraints

from .mixture import DiagonalNormalMixture

__all__ = [
    "FLOW_TYPES",
    "PRIORS",
    "FlowPrior",
    "MixturePrior",
    "NormalPrior",
    "PolymodalPrior",
    "VampPrior",
    "make_prior",
]


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


class MixturePrior(nn.Module):
    """A Gaussian mixture with learnable weights, means and diagonal scales.

    .. math::

        p(z) = \\sum_{c=1}^{C} \\pi_c\\, \\mathcal{N}(z; \\mu_c, \\operatorname{diag} \\sigma_c^2),
        \\qquad \\pi = \\operatorname{softmax}(\\text{logits}).

    The means start at ``randn`` draws so the components begin spread over the region the
    standard Normal covers; the scales start at 1 and the weights uniform. Scoring ``n`` points
    costs ``O(n C z_dim)``, as matrix products (:class:`~ppl_vae.mixture.DiagonalNormalMixture`).

    Args:
        z_dim: number of latent dimensions.
        components: number of mixture components ``C``.

    ``forward()`` returns a :class:`~ppl_vae.mixture.DiagonalNormalMixture` with batch shape
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


class VampPrior(nn.Module):
    """The VampPrior: the guide's posteriors at K learnable pseudo-inputs, mixed uniformly.

    .. math::

        p(z) = \\frac{1}{K} \\sum_{k=1}^{K} q_\\phi(z \\mid u_k)

    The optimal prior for a fixed encoder is the aggregated posterior
    ``(1/N) sum_n q(z|x_n)``; the VampPrior replaces the N data points by K learned
    pseudo-inputs ``u_k`` (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018).

    The encoder is *shared* with the guide (pass ``vae.encoder``): it is registered here as a
    submodule too, so ``state_dict`` lists its tensors under both names (the same storage; a
    load fills both) and ``named_parameters`` / ``pyro.module`` count them once. Each call of
    ``forward()`` encodes all K pseudo-inputs, so a training step costs an extra encoder pass
    over K rows.

    Args:
        encoder: module mapping ``u`` of shape ``(K, x_dim)`` to a distribution with batch shape
            ``(K,)`` and event shape ``(z_dim,)`` (e.g. :class:`~ppl_vae.nets.GaussianEncoder`).
        x_dim: number of features of one data point.
        pseudo_inputs: number of pseudo-inputs K (500 in the paper).
        init: optional ``(K, x_dim)`` starting values, e.g. K random training points; otherwise
            data-like values: uniform on [0, 1].

    >>> from ppl_vae.nets import GaussianEncoder
    >>> p = VampPrior(GaussianEncoder(4, 2, (8,)), x_dim=4, pseudo_inputs=3)()
    >>> p.batch_shape, p.event_shape
    (torch.Size([]), torch.Size([2]))
    """

    analytic_kl: bool = False

    def __init__(
        self,
        encoder: nn.Module,
        x_dim: int,
        pseudo_inputs: int = 500,
        init: Tensor | None = None,
    ) -> None:
        super().__init__()
        if pseudo_inputs < 1:
            raise ValueError(f"the VampPrior needs at least one pseudo-input, got {pseudo_inputs}")
        if init is None:
            init = torch.rand(pseudo_inputs, x_dim)
        elif tuple(init.shape) != (pseudo_inputs, x_dim):
            raise ValueError(
                f"init must have shape ({pseudo_inputs}, {x_dim}), got {tuple(init.shape)}"
            )
        self.encoder = encoder
        self.x_dim, self.pseudo_inputs = x_dim, pseudo_inputs
        self.z_dim: int = getattr(encoder, "z_dim", -1)
        self.u = nn.Parameter(init.detach().clone().to(torch.get_default_dtype()))

    def forward(self) -> dist.Distribution:
        # A flow guide's density away from its own draws costs z_dim passes per step, so the
        # components are its base Gaussians there: still a normalized mixture, tied to the guide
        encode = getattr(self.encoder, "gaussian", self.encoder)
        comp = encode(self.u)  # batch (K,), event (z_dim,)
        logits = self.u.new_zeros(self.pseudo_inputs)
        base = getattr(comp, "base_dist", None)
        if isinstance(base, torch.distributions.Normal) and comp.reinterpreted_batch_ndims == 1:
            return DiagonalNormalMixture(logits, base.loc, base.scale)  # matrix products
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), comp)


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


class PolymodalPrior(nn.Module):
    """A per-dimension mixture of N learnable Gaussians (the "polymodal" prior).

    .. math::

        p(z) = \\prod_{d=1}^{D} \\sum_{n=1}^{N} \\pi_{dn}\\, \\mathcal{N}(z_d; \\mu_{dn},
        \\sigma_{dn}^2)

    Unlike :class:`MixturePrior` (N components over the whole vector), every dimension picks
    its own mode, so D dimensions span ``N^D`` modes with ``3 N D`` parameters. The means start
    evenly spaced on [-2, 2] so the modes are distinct, the scales at ``4 / N`` (at most 1).
    Used by :func:`ppl_vae.polymodal.build_polymodal_vae`, whose guide is multimodal per
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


PRIORS = ("normal", "mixture", "vamp", "flow", "polymodal")


def make_prior(name: str, z_dim: int, **options: object) -> nn.Module:
    """Build the prior called ``name`` (one of :data:`PRIORS`) over ``z_dim`` dimensions.

    Options that a prior does not use are ignored, so the CLI can pass all of its prior flags:
    ``components`` (mixture), ``encoder``, ``x_dim``, ``pseudo_inputs``, ``pseudo_init``
    (vamp), ``flow_layers``, ``flow_type``, ``flow_hidden`` (flow), ``modes`` (polymodal).
    An option given as ``None`` takes the prior's default.

    >>> make_prior("mixture", 2, components=3, flow_layers=9).components
    3
    """
    opts = {k: v for k, v in options.items() if v is not None}
    if name == "normal":
        return NormalPrior(z_dim)
    if name == "mixture":
        return MixturePrior(z_dim, components=int(opts.get("components", 10)))
    if name == "vamp":
        if "encoder" not in opts or "x_dim" not in opts:
            raise ValueError("the VampPrior needs the guide's encoder=... and x_dim=...")
        return VampPrior(
            opts["encoder"],  # type: ignore[arg-type]
            int(opts["x_dim"]),  # type: ignore[call-overload]
            pseudo_inputs=int(opts.get("pseudo_inputs", 500)),  # type: ignore[call-overload]
            init=opts.get("pseudo_init"),  # type: ignore[arg-type]
        )
    if name == "flow":
        return FlowPrior(
            z_dim,
            flow_layers=int(opts.get("flow_layers", 4)),  # type: ignore[call-overload]
            flow_type=str(opts.get("flow_type", "affine-coupling")),
            hidden=opts.get("flow_hidden"),  # type: ignore[arg-type]
        )
    if name == "polymodal":
        return PolymodalPrior(z_dim, modes=int(opts.get("modes", 3)))  # type: ignore[call-overload]
    raise ValueError(f"unknown prior {name!r}; choose one of {list(PRIORS)}")
