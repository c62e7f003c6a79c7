"""The VAE as a pair of Pyro programs: ``model(x)`` for p(z) p(x|z) and ``guide(x)`` for q(z|x)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pyro
import torch
from torch import Tensor, nn

from .handlers import parameters_held
from .likelihoods import Decoder, make_likelihood
from .nets import GaussianEncoder
from .priors import make_prior

__all__ = ["GUIDES", "PRESETS", "VAE", "build_vae"]


class VAE(nn.Module):
    """A variational autoencoder whose generative model and guide are Pyro programs.

    .. math::

        p_\\theta(x, z) = p(z)\\, p_\\theta(x \\mid z), \\qquad q_\\phi(z \\mid x).

    Site names are fixed: ``"z"`` (latent), ``"x"`` (observation), in ``pyro.plate("data")``.
    Any Pyro objective (``Trace_ELBO``, ``TraceMeanField_ELBO``, the IWAE bound) and every
    estimator in this package work on ``vae.model`` / ``vae.guide``; to :func:`ppl_vae.fit` it
    is one program among others (:mod:`ppl_vae.program`). The KL weight (beta) is not part of
    the model: ``fit(vae, data, beta=4)`` applies it, and so does
    :func:`ppl_vae.handlers.kl_weight` around ``model`` and ``guide`` for Pyro's own SVI.

    Args:
        encoder: module mapping ``x`` of shape ``(N, x_dim)`` to q(z|x), event shape ``(z_dim,)``.
        decoder: module mapping ``z`` of shape ``(..., z_dim)`` to p(x|z), event ``(x_dim,)``.
        prior: module whose ``forward()`` returns p(z); the standard Normal by default.
        name: prefix of the networks' parameters in Pyro's parameter store.

    >>> vae = build_vae(x_dim=4, z_dim=2, hidden=(8,))
    >>> x = torch.bernoulli(torch.full((3, 4), 0.5))
    >>> loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    >>> loss.shape
    torch.Size([])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module | None = None,
        name: str = "vae",
    ) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.x_dim: int = decoder.x_dim
        self.z_dim: int = decoder.z_dim
        self.prior = prior if prior is not None else make_prior("normal", self.z_dim)
        self.name = name
        #: How to build this model again (``build_vae`` and its arguments), which run folders
        #: record so that ``ppl-vae evaluate`` can rebuild it; None for a model built by hand.
        self.recipe: dict[str, Any] | None = None

    def _register(self) -> None:
        """``pyro.module(self.name, self)``, taking the name over from another module.

        Pyro's param store keeps the first module registered under a name and would hand this
        model that module's tensors as its param sites; ``SVI`` would then step tensors the
        loss does not depend on, and nothing would train. So a model called after another one
        with the same name (two VAEs in one session, both named ``"vae"``) replaces the
        other's entries: the model being run is always the one trained.
        """
        if parameters_held():  # the trainer steps the parameters itself (ppl_vae.fit)
            return
        first_name, first = next(iter(self.named_parameters()))
        store = pyro.get_param_store()
        held = store._params.get(f"{self.name}$$${first_name}")
        if held is not None and held is not first:
            for key in [k for k in store.keys() if k.startswith(f"{self.name}$$$")]:
                del store[key]
        pyro.module(self.name, self)

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"the model expects data of shape (N, {self.x_dim}), got {tuple(x.shape)}; "
                "flatten images to rows, and use the dataset the model was trained on"
            )

    def model(self, x: Tensor, *labels: Tensor) -> Tensor:
        """p(z) p(x|z) with ``x`` of shape ``(N, x_dim)`` observed; returns ``z``. Further
        arguments (labels that travel with the data) are ignored."""
        self._check(x)
        self._register()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decoder(z), obs=x)
        return z

    def guide(self, x: Tensor, *labels: Tensor) -> Tensor:
        """q(z|x) for ``x`` of shape ``(N, x_dim)``; returns ``z`` of shape ``(N, z_dim)``."""
        self._check(x)
        self._register()
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.encoder(x))

    def encode(self, x: Tensor) -> torch.distributions.Distribution:
        """The posterior q(z|x) for ``x`` of shape ``(N, x_dim)``: a distribution with batch
        shape ``(N,)`` and event shape ``(z_dim,)``; its ``mean`` is the embedding."""
        self._check(x)
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Mean of p(x|z) for codes ``z`` of shape ``(N, z_dim)``; shape ``(N, x_dim)``."""
        return self.decoder(z).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of p(x | z = mean of q(z|x)); shape ``(N, x_dim)``."""
        return self.decoder(self.encode(x).mean).mean

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Means of p(x|z) at ``n`` draws z ~ p(z); shape ``(n, x_dim)``."""
        z = self.prior().sample((n,))
        return self.decoder(z).mean


#: Named networks. ``seed``: the seed experiment's 784-300-300-50 softplus net, Bernoulli output.
PRESETS: dict[str, dict[str, object]] = {
    "seed": {"hidden": (300, 300), "z_dim": 50, "activation": "softplus"},
    "iwae": {"hidden": (200, 200), "z_dim": 50, "activation": "tanh"},
    "small": {"hidden": (128, 128), "z_dim": 8, "activation": "softplus"},
    # the IWAE paper's two stochastic layers: 784-200-200-100 and 100-100-50, tanh
    "iwae2": {
        "hidden": (200, 200),
        "z_dim": 100,
        "activation": "tanh",
        "top_hidden": (100, 100),
        "top_z_dim": 50,
    },
}

#: Guides of :func:`build_vae`: ``gaussian`` (diagonal), ``flow`` (Gaussian and IAF steps).
GUIDES = ("gaussian", "flow")


def build_vae(
    x_dim: int,
    z_dim: int = 50,
    hidden: Sequence[int] = (300, 300),
    activation: str = "softplus",
    likelihood: str = "bernoulli",
    prior: str = "normal",
    gaussian_scale: float = 1.0,
    learn_scale: bool = False,
    guide: str = "gaussian",
    guide_flow_layers: int = 2,
    top_z_dim: int | None = None,
    top_hidden: Sequence[int] | None = None,
    guide_direction: str = "bottom-up",
    name: str = "vae",
    **prior_options: object,
) -> VAE:
    """Build an MLP VAE; the defaults are the seed network (784-300-300-50, softplus, Bernoulli).

    ``guide="flow"`` makes q(z|x) a :class:`~ppl_vae.guides.FlowEncoder` with
    ``guide_flow_layers`` IAF steps. ``top_z_dim`` adds a second stochastic layer of that size
    above the first (``z_dim``), with hidden widths ``top_hidden`` in its two networks: a
    :class:`~ppl_vae.hierarchy.TwoLayerVAE` whose prior is on the top layer; its guide is
    bottom-up, q(z1|x) q(z2|z1), or with ``guide_direction="top-down"`` q(z2|x) q(z1|x, z2) on
    features of x shared by both layers (:class:`~ppl_vae.hierarchy.TopDownTwoLayerVAE`).
    ``prior_options`` (components, pseudo-inputs, flow layers...) go to
    :func:`ppl_vae.priors.make_prior`; ``name`` prefixes the parameters in Pyro's param store.
    The arguments are kept as ``vae.recipe`` (plain numbers and strings; a tensor option such
    as ``pseudo_init`` is left out), which run folders record to rebuild the model.
    """
    if "beta" in prior_options:
        raise TypeError(
            "beta is not part of the model: pass it to fit(vae, data, beta=...) (--beta), or "
            "wrap model and guide with ppl_vae.kl_weight(fn, beta) for Pyro's SVI"
        )
    recipe = {
        "x_dim": x_dim,
        "z_dim": z_dim,
        "hidden": list(hidden),
        "activation": activation,
        "likelihood": likelihood,
        "prior": prior,
        "gaussian_scale": gaussian_scale,
        "learn_scale": learn_scale,
        **{k: v for k, v in prior_options.items() if isinstance(v, (int, float, str, bool))},
    }
    if guide not in GUIDES:
        raise ValueError(f"unknown guide {guide!r}; choose one of {list(GUIDES)}")
    if guide != "gaussian":
        recipe.update(guide=guide, guide_flow_layers=guide_flow_layers)
    if top_z_dim is not None:
        top_hidden = tuple(top_hidden) if top_hidden is not None else tuple(hidden)
        recipe.update(top_z_dim=top_z_dim, top_hidden=list(top_hidden))
    from . import hierarchy  # it builds on this module

    if guide_direction not in hierarchy.GUIDE_DIRECTIONS:
        raise ValueError(
            f"unknown guide direction {guide_direction!r}; choose one of "
            f"{list(hierarchy.GUIDE_DIRECTIONS)}"
        )
    if guide_direction != "bottom-up":
        if top_z_dim is None:
            raise ValueError(
                "a top-down guide orders two stochastic layers: give top_z_dim (the CLI's "
                "--preset iwae2), or drop --guide-direction"
            )
        recipe.update(guide_direction=guide_direction)
    if prior == "polymodal" and (guide != "gaussian" or top_z_dim is not None):
        raise ValueError(
            "the polymodal latent brings its own guide and one layer; drop --guide flow and "
            "the two-layer preset, or choose another prior"
        )
    if prior == "polymodal":  # its guide differs too, so it is a VAE subclass of its own
        from .polymodal import build_polymodal_vae

        vae = build_polymodal_vae(
            x_dim,
            z_dim,
            hidden,
            activation,
            likelihood,
            gaussian_scale=gaussian_scale,
            learn_scale=learn_scale,
            name=name,
            **prior_options,
        )
        vae.recipe = {"builder": "build_vae", "kwargs": recipe}
        return vae

    def make_encoder(n_in: int, n_out: int, widths: Sequence[int]) -> nn.Module:
        if guide == "flow":
            from .guides import FlowEncoder

            return FlowEncoder(n_in, n_out, widths, activation, layers=guide_flow_layers)
        return GaussianEncoder(n_in, n_out, widths, activation)

    # the networks are built (and so drawn from torch's generator) in the order of earlier
    # releases, so that a seed gives the same initial weights
    top_down = guide_direction == "top-down"
    if top_down:
        features = hierarchy.Features(x_dim, hidden, activation)  # h(x), shared by both layers
    else:
        encoder = make_encoder(x_dim, z_dim, hidden)
    head = make_likelihood(likelihood, x_dim, gaussian_scale, learn_scale)
    decoder = Decoder(z_dim, x_dim, hidden, activation, head)
    if top_z_dim is None:
        p = make_prior(prior, z_dim, encoder=encoder, x_dim=x_dim, **prior_options)
        vae = VAE(encoder, decoder, p, name=name)
    elif top_down:
        h_dim = features.out_features
        top = make_encoder(h_dim, top_z_dim, top_hidden)  # q(z2 | h)
        # p(z1|z2): the same Gaussian network shape, from the top code down
        upper = GaussianEncoder(top_z_dim, z_dim, tuple(reversed(top_hidden)), activation)
        bottom = make_encoder(h_dim + top_z_dim, z_dim, tuple(reversed(top_hidden)))
        down = hierarchy.TopDownEncoder(features, top, bottom)
        code = hierarchy.StackedEncoder(features, top, features=True)  # q(z2|u), exact
        p = make_prior(prior, top_z_dim, encoder=code, x_dim=x_dim, **prior_options)
        vae = hierarchy.TopDownTwoLayerVAE(down, upper, decoder, p, name=name)
    else:
        top = make_encoder(z_dim, top_z_dim, top_hidden)
        # p(z1|z2): the same Gaussian network shape, from the top code down
        upper = GaussianEncoder(top_z_dim, z_dim, tuple(reversed(top_hidden)), activation)
        stacked = hierarchy.StackedEncoder(encoder, top)
        p = make_prior(prior, top_z_dim, encoder=stacked, x_dim=x_dim, **prior_options)
        vae = hierarchy.TwoLayerVAE(encoder, top, upper, decoder, p, name=name)
    vae.recipe = {"builder": "build_vae", "kwargs": recipe}
    return vae
