"""Objectives: the analytic-KL ELBO, STL, IWAE and DReG, and the KL-weight effect handler."""

from .analytic import AnalyticKLELBO, closed_form_kl_sites, kl_obstacles
from .factory import OBJECTIVES, make_objective, resolve
from .iwae import IWAE, DReGIWAE
from .stl import STLELBO, TensorTraceELBO
from .weights import KLWeight, kl_weight, warmup_weight

__all__ = [
    "AnalyticKLELBO",
    "DReGIWAE",
    "IWAE",
    "KLWeight",
    "OBJECTIVES",
    "STLELBO",
    "TensorTraceELBO",
    "closed_form_kl_sites",
    "kl_obstacles",
    "kl_weight",
    "make_objective",
    "resolve",
    "warmup_weight",
]
