"""ppl_vae: variational autoencoders as Pyro programs."""

from ppl_vae.cli.runs import open_run as load_run
from ppl_vae.data.datasets import load_dataset
from ppl_vae.data.splits import DataSplits
from ppl_vae.evaluation.bits import bits_per_dim
from ppl_vae.evaluation.loglik import LogLikelihood, elbo, log_likelihood
from ppl_vae.models.build import PRESETS, build_vae
from ppl_vae.models.conv import ConvNet, DeconvNet
from ppl_vae.models.discretized import (
    DiscretizedGaussian,
    DiscretizedGaussianLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
)
from ppl_vae.models.guides import FlowEncoder
from ppl_vae.models.hierarchy import TwoLayerVAE
from ppl_vae.models.likelihoods import (
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Decoder,
    GaussianLikelihood,
)
from ppl_vae.models.nets import MLP, GaussianEncoder
from ppl_vae.models.polymodal import PolymodalVAE
from ppl_vae.models.vae import VAE
from ppl_vae.objectives.analytic import AnalyticKLELBO, closed_form_kl_sites
from ppl_vae.objectives.factory import make_objective
from ppl_vae.objectives.stl import STLELBO
from ppl_vae.objectives.weights import KLWeight, kl_weight, warmup_weight
from ppl_vae.priors.factory import make_prior
from ppl_vae.priors.flow import FlowPrior
from ppl_vae.priors.mixture import MixturePrior
from ppl_vae.priors.normal import NormalPrior
from ppl_vae.priors.polymodal import PolymodalPrior
from ppl_vae.priors.vamp import VampPrior
from ppl_vae.program import Program, as_program
from ppl_vae.training.config import FitConfig
from ppl_vae.training.engines import negative_bound
from ppl_vae.training.trackers import CSVTracker, MLflowTracker, TensorBoardTracker
from ppl_vae.training.trainer import FitResult, fit

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
    "ConvNet",
    "DeconvNet",
    "DiscretizedGaussian",
    "DiscretizedGaussianLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "bits_per_dim",
    "load_run",
]
