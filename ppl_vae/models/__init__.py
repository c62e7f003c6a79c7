"""Pyro programs: the VAE, two-layer and polymodal models, their networks and likelihoods,
the flow guide, and the builder that knows every model."""

from .build import GUIDES, PRESETS, build_program, build_vae, load_factory
from .conv import ConvNet, DeconvNet
from .discretized import (
    DiscretizedGaussian,
    DiscretizedGaussianLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
)
from .guides import FlowEncoder, FlowPosterior
from .hierarchy import (
    GUIDE_DIRECTIONS,
    Features,
    StackedEncoder,
    TopDownEncoder,
    TopDownTwoLayerVAE,
    TwoLayerVAE,
)
from .likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Decoder,
    GaussianLikelihood,
    make_likelihood,
)
from .nets import ACTIVATIONS, MLP, GaussianEncoder
from .polymodal import PolymodalEncoder, PolymodalPosterior, PolymodalVAE, build_polymodal_vae
from .reference import plain_copy
from .vae import VAE

__all__ = [
    "ACTIVATIONS",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "ConvNet",
    "Decoder",
    "DeconvNet",
    "DiscretizedGaussian",
    "DiscretizedGaussianLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "Features",
    "FlowEncoder",
    "FlowPosterior",
    "GUIDES",
    "GUIDE_DIRECTIONS",
    "GaussianEncoder",
    "GaussianLikelihood",
    "LIKELIHOODS",
    "MLP",
    "PRESETS",
    "PolymodalEncoder",
    "PolymodalPosterior",
    "PolymodalVAE",
    "StackedEncoder",
    "TopDownEncoder",
    "TopDownTwoLayerVAE",
    "TwoLayerVAE",
    "VAE",
    "build_polymodal_vae",
    "build_program",
    "build_vae",
    "load_factory",
    "make_likelihood",
    "plain_copy",
]
