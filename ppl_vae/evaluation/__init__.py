"""Looking at a trained program: log p(x) and its diagnostics, ELBO surgery, active units,
MIG, latent walks and pictures. Nothing here trains."""

from .analysis import Surgery, active_units, elbo_surgery, mutual_information_gap
from .bits import bits_per_dim
from .loglik import LogLikelihood, elbo, log_likelihood
from .pictures import image_grid, interleave, plot_curves, plot_latents, save_image_grid
from .walks import INTERPOLATIONS, attribute_rows, interpolate, interpolation_rows, traversal_rows

__all__ = [
    "INTERPOLATIONS",
    "LogLikelihood",
    "Surgery",
    "active_units",
    "attribute_rows",
    "bits_per_dim",
    "elbo",
    "elbo_surgery",
    "image_grid",
    "interleave",
    "interpolate",
    "interpolation_rows",
    "log_likelihood",
    "mutual_information_gap",
    "plot_curves",
    "plot_latents",
    "save_image_grid",
    "traversal_rows",
]
