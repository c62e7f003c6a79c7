"""Vectorized particle traces and the per-point reduction, shared by the IWAE objectives and
the log p(x) estimator."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from ppl_vae.program import check_pair

__all__ = []


_PARTICLES = "_ppl_vae_particles"


def _vectorize(fn: Callable, num_particles: int, max_plate_nesting: int) -> Callable:
    """``fn`` run inside a particle plate at the dim left of all of its own plates."""

    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with pyro.plate(_PARTICLES, num_particles, dim=-max_plate_nesting - 1):
            return fn(*args, **kwargs)

    return wrapped


def _sample_sites(trace: poutine.Trace, latent_only: bool = False) -> Iterator[tuple[str, dict]]:
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site):
            continue
        if latent_only and site["is_observed"]:
            continue
        yield name, site


def _data_frame(name: str, site: dict, plate: str) -> Any:
    for frame in site["cond_indep_stack"]:
        if frame.name == plate:
            if frame.dim is None:
                raise ValueError(f"pyro.plate({plate!r}) must be vectorized (not a Python loop)")
            return frame
    raise ValueError(
        f"sample site {name!r} is not inside pyro.plate({plate!r}); log p(x) per data point "
        f"needs every sample site of the model and guide (latent and observed) inside the data "
        f"plate. Global latent variables are not supported; if your data plate has another "
        f"name, pass plate=..."
    )


def probe(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, plate: str = "data"
) -> tuple[int, int]:
    """Run and score guide and model once without gradients; ``(max_plate_nesting, N)``.

    Checks that every sample site is inside the data plate, and (under Pyro's validation)
    every parameter and value against its constraints. ``N`` is the data plate's size.
    """
    with torch.no_grad(), poutine.block():
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
        # scoring checks every value against its support (e.g. binary data under a
        # Bernoulli) when validation is on; the particle passes skip those checks
        guide_trace.compute_log_prob()
        model_trace.compute_log_prob()
    check_pair(model_trace, guide_trace)
    nesting, size = 0, None
    for trace in (guide_trace, model_trace):
        for name, site in _sample_sites(trace):
            size = _data_frame(name, site, plate).size
            dims = [f.dim for f in site["cond_indep_stack"] if f.dim is not None]
            nesting = max([nesting, *(-d for d in dims)])
    if size is None:
        raise ValueError("the model has no sample sites")
    return nesting, int(size)


def vectorized_traces(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_particles: int,
    max_plate_nesting: int,
) -> tuple[poutine.Trace, poutine.Trace]:
    """Trace the guide with ``num_particles`` vectorized particles and replay the model on it."""
    guide_trace = poutine.trace(_vectorize(guide, num_particles, max_plate_nesting)).get_trace(
        *args, **kwargs
    )
    model_trace = poutine.trace(
        poutine.replay(_vectorize(model, num_particles, max_plate_nesting), trace=guide_trace)
    ).get_trace(*args, **kwargs)
    return model_trace, guide_trace


def point_log_prob(
    name: str,
    site: dict,
    plate: str,
    max_plate_nesting: int,
    value: Tensor | None = None,
    fn: Any = None,
) -> Tensor:
    """Unscaled, masked log-density of one site summed to shape ``(K, N)``.

    ``K`` is the particle plate, ``N`` the data plate; every other plate and event dim is
    summed. ``value`` and ``fn`` replace the site's own (for DReG's detached copies).
    """
    frame = _data_frame(name, site, plate)
    fn = site["fn"] if fn is None else fn
    lp = fn.log_prob(site["value"] if value is None else value)
    lp = scale_and_mask(lp, 1.0, site["mask"])
    if not isinstance(lp, Tensor):
        lp = torch.as_tensor(lp)
    width = max_plate_nesting + 1
    lp = lp.reshape((1,) * (width - lp.dim()) + lp.shape)  # (K?, ..., N?, ...)
    data = width + frame.dim
    lp = lp.movedim(data, 1).flatten(2).sum(-1) if lp.dim() > 2 else lp.movedim(data, 1)
    return lp.expand(lp.shape[0], frame.size)


def site_scale(name: str, site: dict) -> float:
    """The site's scale as a float; a tensor scale (per-element weights) is an error."""
    scale = site["scale"]
    if isinstance(scale, Tensor):
        if scale.numel() != 1:
            raise ValueError(f"site {name!r} has a non-scalar poutine.scale; not supported")
        scale = scale.item()
    return float(scale)


def log_weights(
    model_trace: poutine.Trace, guide_trace: poutine.Trace, plate: str, max_plate_nesting: int
) -> Tensor:
    """log w = log p(x, z) - log q(z|x) per particle and data point, shape ``(K, N)``."""
    log_w = 0.0
    for name, site in _sample_sites(model_trace):
        log_w = log_w + point_log_prob(name, site, plate, max_plate_nesting)
    for name, site in _sample_sites(guide_trace, latent_only=True):
        log_w = log_w - point_log_prob(name, site, plate, max_plate_nesting)
    return log_w
