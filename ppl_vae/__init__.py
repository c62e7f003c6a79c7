"""ppl_vae: variational autoencoders as Pyro programs."""

from .data import DataSplits, load_dataset
from .estimators import LogLikelihood, elbo, log_likelihood
from .guides import FlowEncoder
from .handlers import KLWeight, kl_weight, warmup_weight
from .hierarchy import TwoLayerVAE
from .likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Decoder,
    GaussianLikelihood,
)
from .model import PRESETS, VAE, build_vae
from .nets import MLP, GaussianEncoder
from .objectives import AnalyticKLELBO, closed_form_kl_sites, make_objective
from .polymodal import PolymodalPrior, PolymodalVAE
from .priors import FlowPrior, MixturePrior, NormalPrior, VampPrior, make_prior
from .program import Program, as_program
from .stl import STLELBO
from .trackers import CSVTracker, MLflowTracker, TensorBoardTracker
from .train import FitConfig, FitResult, fit, negative_bound

__all__ = [
    "FlowEncoder",
    "TwoLayerVAE",
    "MLP",
    "PRESETS",
    "VAE",
    "AnalyticKLELBO",
    "BernoulliLikelihood",
    "CSVTracker",
    "ContinuousBernoulliLikelihood",
    "DataSplits",
    "Decoder",
    "FitConfig",
    "FitResult",
    "GaussianEncoder",
    "GaussianLikelihood",
    "KLWeight",
    "LogLikelihood",
    "MLflowTracker",
    "FlowPrior",
    "MixturePrior",
    "NormalPrior",
    "PolymodalPrior",
    "PolymodalVAE",
    "Program",
    "STLELBO",
    "TensorBoardTracker",
    "VampPrior",
    "as_program",
    "build_vae",
    "closed_form_kl_sites",
    "elbo",
    "fit",
    "kl_weight",
    "load_dataset",
    "log_likelihood",
    "make_objective",
    "make_prior",
    "negative_bound",
    "warmup_weight",
]
