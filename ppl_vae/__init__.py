"""ppl_vae: variational autoencoders as Pyro programs."""

from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Decoder,
    GaussianLikelihood,
)
from .model import PRESETS, VAE, build_vae
from .nets import MLP, GaussianEncoder
from .priors import NormalPrior, make_prior

__all__ = [
    "PRESETS",
    "VAE",
    "BernoulliLikelihood",
    "ContinuousBernoulliLikelihood",
    "Decoder",
    "GaussianEncoder",
    "GaussianLikelihood",
    "MLP",
    "NormalPrior",
    "build_vae",
    "make_prior",
]
