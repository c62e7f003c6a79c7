"""The builder that knows every model: presets, ``build_vae`` and programs from recipes."""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ppl_vae.data.splits import chw
from ppl_vae.models import hierarchy
from ppl_vae.models.conv import (
    CONV_ACTIVATION,
    CONV_CHANNELS,
    CONV_HIDDEN,
    ConvNet,
    DeconvNet,
)
from ppl_vae.models.likelihoods import Decoder, make_likelihood
from ppl_vae.models.nets import GaussianEncoder
from ppl_vae.models.vae import VAE
from ppl_vae.priors.factory import make_prior
from ppl_vae.program import Program, ProgramError, as_program

__all__ = ["GUIDES", "NETS", "PRESETS", "build_vae", "build_program", "load_factory"]


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


#: Networks of :func:`build_vae` on x: ``mlp`` (on flat rows), ``conv`` (on images of a shape).
NETS = ("mlp", "conv")


#: Guides of :func:`build_vae`: ``gaussian`` (diagonal), ``flow`` (Gaussian and IAF steps).
GUIDES = ("gaussian", "flow")


def build_vae(
    x_dim: int,
    z_dim: int = 50,
    hidden: Sequence[int] | None = None,
    activation: str | None = None,
    likelihood: str = "bernoulli",
    prior: str = "normal",
    gaussian_scale: float = 1.0,
    learn_scale: bool = False,
    guide: str = "gaussian",
    guide_flow_layers: int = 2,
    top_z_dim: int | None = None,
    top_hidden: Sequence[int] | None = None,
    guide_direction: str = "bottom-up",
    net: str = "mlp",
    image_shape: Sequence[int] | None = None,
    channels: Sequence[int] | None = None,
    logistics: int = 5,
    name: str = "vae",
    **prior_options: object,
) -> VAE:
    """Build an MLP VAE; the defaults are the seed network (784-300-300-50, softplus, Bernoulli).

    ``guide="flow"`` makes q(z|x) a :class:`~ppl_vae.models.FlowEncoder` with
    ``guide_flow_layers`` IAF steps. ``top_z_dim`` adds a second stochastic layer of that size
    above the first (``z_dim``), with hidden widths ``top_hidden`` in its two networks: a
    :class:`~ppl_vae.models.TwoLayerVAE` whose prior is on the top layer; its guide is
    bottom-up, q(z1|x) q(z2|z1), or with ``guide_direction="top-down"`` q(z2|x) q(z1|x, z2) on
    features of x shared by both layers (:class:`~ppl_vae.models.TopDownTwoLayerVAE`).
    ``prior_options`` (components, pseudo-inputs, flow layers...) go to
    :func:`ppl_vae.priors.make_prior`; ``name`` prefixes the parameters in Pyro's param store.

    ``hidden`` and ``activation`` default to 300-300 softplus for MLPs, and for ``net="conv"``
    to one linear layer of 256 after the convolutions and ELU (softplus made the
    convolutional VAE ignore its code: the measurements are at
    :data:`ppl_vae.models.conv.CONV_HIDDEN`).

    ``net="conv"`` makes the networks that see x convolutional, for images of
    ``image_shape`` ((C, H, W) or (H, W); the rows of x are those images flattened): the
    encoder of x (or a top-down guide's shared features) is a :class:`~ppl_vae.models.ConvNet`
    with stride-2 convolutions of ``channels`` then linear layers of ``hidden``, and the
    decoder its mirror, a :class:`~ppl_vae.models.DeconvNet`. The layers between latent codes
    of a two-layer model stay MLPs, as in the VampPrior paper's convHVAE. ``logistics`` is the
    number of components in each pixel's mixture under ``likelihood="discretized-logistic"``.
    The arguments are kept as ``vae.recipe`` (plain numbers and strings; a tensor option such
    as ``pseudo_init`` is left out), which run folders record to rebuild the model.
    """
    if "beta" in prior_options:
        raise TypeError(
            "beta is not part of the model: pass it to fit(vae, data, beta=...) (--beta), or "
            "wrap model and guide with ppl_vae.kl_weight(fn, beta) for Pyro's SVI"
        )
    conv = net == "conv"
    if hidden is None:
        hidden = CONV_HIDDEN if conv else (300, 300)
    if activation is None:
        activation = CONV_ACTIVATION if conv else "softplus"
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
    if likelihood == "discretized-logistic":
        if logistics < 1:
            raise ValueError(f"the logistic mixture needs 1 or more logistics, got {logistics}")
        recipe["logistics"] = logistics
    if net not in NETS:
        raise ValueError(f"unknown net {net!r}; choose one of {list(NETS)}")
    if conv:
        if image_shape is None:
            raise ValueError(
                "a convolutional net needs the images' shape: give image_shape=(C, H, W) (the "
                "CLI takes it from an image dataset), or use --net mlp"
            )
        image_shape = chw(image_shape)
        if math.prod(image_shape) != x_dim:
            raise ValueError(
                f"images of shape {image_shape} have {math.prod(image_shape)} values "
                f"but the data have {x_dim} features per row"
            )
        channels = tuple(channels) if channels is not None else CONV_CHANNELS
        recipe.update(net=net, image_shape=list(image_shape), channels=list(channels))
        if prior == "polymodal":
            raise ValueError(
                "the polymodal latent brings its own MLP guide; drop --net conv or choose "
                "another prior"
            )
    if guide != "gaussian":
        recipe.update(guide=guide, guide_flow_layers=guide_flow_layers)
    if top_z_dim is not None:
        top_hidden = tuple(top_hidden) if top_hidden is not None else tuple(hidden)
        recipe.update(top_z_dim=top_z_dim, top_hidden=list(top_hidden))
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
        from ppl_vae.models.polymodal import build_polymodal_vae

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

    def make_encoder(
        n_in: int, n_out: int, widths: Sequence[int], on_x: bool = False
    ) -> nn.Module:
        def trunk(outputs: int) -> nn.Module | None:  # the network from the images, if any
            if not (on_x and conv):
                return None
            return ConvNet(image_shape, outputs, channels, widths, activation)

        if guide == "flow":
            from ppl_vae.models.guides import FlowEncoder

            return FlowEncoder(
                n_in, n_out, widths, activation, layers=guide_flow_layers, net=trunk(3 * n_out)
            )
        return GaussianEncoder(n_in, n_out, widths, activation, net=trunk(2 * n_out))

    # the networks are built (and so drawn from torch's generator) in the order of earlier
    # releases, so that a seed gives the same initial weights
    top_down = guide_direction == "top-down"
    if top_down and conv:  # h(x), shared by both layers
        if not hidden:
            raise ValueError("a top-down guide on images needs --hidden widths for h(x)")
        features = ConvNet(image_shape, hidden[-1], channels, hidden[:-1], activation, True)
    elif top_down:
        features = hierarchy.Features(x_dim, hidden, activation)
    else:
        encoder = make_encoder(x_dim, z_dim, hidden, on_x=True)
    head = make_likelihood(likelihood, x_dim, gaussian_scale, learn_scale, logistics)
    deconv = None
    if conv:
        k = getattr(head, "outputs_per_feature", 1)
        deconv = DeconvNet(z_dim, image_shape, k, channels, hidden, activation)
    decoder = Decoder(z_dim, x_dim, hidden, activation, head, net=deconv)
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


def factory_recipe(spec: str, kwargs: dict[str, Any] | None = None) -> dict[str, Any]:
    """The recipe of ``spec`` (``FILE.py:name`` or ``package.module:name``), with the file's
    absolute path kept so a run folder can be read from another working directory."""
    if ":" not in spec:
        raise ValueError(f"--model takes FILE.py:factory or package.module:factory, got {spec!r}")
    where, _ = spec.rsplit(":", 1)
    recipe: dict[str, Any] = {"builder": "factory", "spec": spec, "kwargs": dict(kwargs or {})}
    if where.endswith(".py"):
        recipe["path"] = str(Path(where).expanduser().resolve())
    return recipe


def _import_factory(recipe: dict[str, Any]) -> Any:
    where, name = recipe["spec"].rsplit(":", 1)
    if where.endswith(".py"):
        path = Path(where).expanduser()
        if not path.is_file() and recipe.get("path"):
            path = Path(recipe["path"])
        if not path.is_file():
            raise FileNotFoundError(f"no such model file: {where} (from --model {recipe['spec']})")
        module_name = f"_ppl_vae_user_{path.stem}"
        module_spec = importlib.util.spec_from_file_location(module_name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[module_name] = module
        module_spec.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(where)
        except ImportError as e:
            raise ValueError(f"cannot import {where} (from --model {recipe['spec']}): {e}") from e
    factory = getattr(module, name, None)
    if not callable(factory):
        raise ValueError(f"{where} has no function {name!r} (from --model {recipe['spec']})")
    return factory


def load_factory(spec: str, x_dim: int | None = None, **kwargs: Any) -> Program:
    """Build the program ``spec`` names (``FILE.py:factory`` or ``package.module:factory``):
    ``factory(**kwargs)``, given ``x_dim`` too when its signature has that parameter. The
    factory returns an object with ``model`` and ``guide`` methods, or a ``(model, guide)``
    pair. The program keeps its recipe, so a run folder written by ``fit`` can rebuild it."""
    return build_program(factory_recipe(spec, kwargs), x_dim)


def build_program(recipe: dict[str, Any], x_dim: int | None = None) -> Program:
    """The program a recipe describes (see :class:`~ppl_vae.program.Program`)."""
    if recipe.get("builder") == "build_vae":
        return as_program(build_vae(**recipe["kwargs"]))
    if recipe.get("builder") != "factory":
        raise ValueError(f"unknown program recipe {recipe!r}")
    factory = _import_factory(recipe)
    kwargs = dict(recipe.get("kwargs") or {})
    try:
        accepts_x_dim = "x_dim" in inspect.signature(factory).parameters
    except (TypeError, ValueError):
        accepts_x_dim = False
    if accepts_x_dim and x_dim is not None and "x_dim" not in kwargs:
        kwargs["x_dim"] = x_dim
        recipe = {**recipe, "kwargs": kwargs}
    try:
        obj = factory(**kwargs)
    except TypeError as e:
        raise ProgramError(f"calling {recipe['spec']} with {kwargs} failed: {e}") from e
    program = as_program(obj)
    program.recipe = recipe
    return program
