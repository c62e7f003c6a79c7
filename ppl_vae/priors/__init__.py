"""Priors p(z): modules whose ``forward()`` returns a distribution with event shape (z_dim,)."""

from .diagonal_mixture import DiagonalNormalMixture
from .factory import PRIORS, make_prior
from .flow import FLOW_TYPES, FlowPrior
from .mixture import MixturePrior
from .normal import NormalPrior
from .polymodal import PolymodalPrior
from .vamp import VampPrior

__all__ = [
    "DiagonalNormalMixture",
    "FLOW_TYPES",
    "FlowPrior",
    "MixturePrior",
    "NormalPrior",
    "PRIORS",
    "PolymodalPrior",
    "VampPrior",
    "make_prior",
]
