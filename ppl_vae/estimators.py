"""Importance-sampled log p(x) per data point, with its standard error, ESS and PSIS Pareto k.

Works for any Pyro model/guide pair whose sample sites all sit inside one data plate (its name
is the ``plate`` argument, ``"data"`` by default): user site names, several latent sites,
any likelihood. The machinery here (vectorized particle traces and the per-point reduction) is
shared with the IWAE and DReG objectives in :mod:`ppl_vae.iwae`.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.distributions.util import scale_and_mask
from pyro.poutine.util import site_is_subsample
from torch import Tensor

from .distributed import World, gather_objects, shard_rows, world
from .fastmath import fused_elementwise
from .program import check_pair

__all__ = ["LogLikelihood", "elbo", "log_likelihood"]

#: Particles x data points per pass when neither chunk_size nor batch_size is given. Measured on
#: the seed network (784-300-300-50) at K = 5000: 2048 rows (a 6 MB logits block) ran 0.89x the
#: time of one 5000-row pass per image, 4096 rows 1.2x and 16384 rows 1.9x; past the CPU caches,
#: bigger passes are slower, not faster (benchmarks/README.md).
DEFAULT_ROWS = 2**11

_PARTICLES = "_ppl_vae_particles"

ONE = World()  # a single process

#: Fewest importance samples for a Pareto k: arviz fits the tail to the largest
#: ceil(min(K / 5, 3 sqrt(K))) weights and gives up (k = inf) below 5 of them, i.e. for K < 21.
MIN_PSIS_SAMPLES = 21


# --------------------------------------------------------------------------------------------
# Shared machinery (also used by ppl_vae.iwae)
# --------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------
# Chunking over particles and data points
# --------------------------------------------------------------------------------------------


#: Data points per block of the one-particle probe that checks every site of every point.
PROBE_ROWS = 256


def _probe_in_blocks(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, plate: str
) -> tuple[int, int]:
    """:func:`probe` over all data points, ``PROBE_ROWS`` at a time; ``(max_plate_nesting, N)``.

    Every point's sites are checked once under the caller's validation setting, with memory
    for one block, not for all N (the particle passes then run without validation). If
    slicing the largest tensor arguments does not shrink the data plate, the data are not
    split along their first dimension and the probe runs once on everything.
    """
    firsts = [a.shape[0] for a in (*args, *kwargs.values()) if isinstance(a, Tensor) and a.dim()]
    m = max(firsts, default=0)
    if m > PROBE_ROWS:
        nesting = 0
        for lo, hi in _chunks(m, PROBE_ROWS):
            block_nesting, size = probe(model, guide, *_rows(args, kwargs, m, lo, hi), plate)
            if size != hi - lo:
                break
            nesting = max(nesting, block_nesting)
        else:
            return nesting, m
    return probe(model, guide, args, kwargs, plate)


def _split(obj: Any, n: int, start: int, stop: int) -> Any:
    if isinstance(obj, Tensor) and obj.dim() > 0 and obj.shape[0] == n:
        return obj[start:stop]
    return obj


def _rows(args: tuple, kwargs: dict, n: int, start: int, stop: int) -> tuple[tuple, dict]:
    """``args`` and ``kwargs`` with every tensor whose first dimension is ``n`` sliced."""
    return (
        tuple(_split(x, n, start, stop) for x in args),
        {k: _split(v, n, start, stop) for k, v in kwargs.items()},
    )


def _chunks(total: int, size: int) -> list[tuple[int, int]]:
    return [(i, min(i + size, total)) for i in range(0, total, size)]


def _batches(
    model: Callable,
    guide: Callable,
    args: tuple,
    kwargs: dict,
    num_samples: int,
    chunk_size: int | None,
    batch_size: int | None,
    plate: str,
    progress: bool,
    seed: int | None = None,
    where: World = ONE,
) -> Iterator[tuple[int, int, int, Iterator[Tensor]]]:
    """Yield ``(start, stop, n, chunks)``; ``chunks`` yields log weights ``(k_chunk, stop-start)``
    and ``n`` is the data plate's size.

    With ``seed``, each batch draws from its own stream, seeded by ``seed`` and its first row,
    so a point's estimate does not depend on which batches ran before it (nor on which
    process ran them); the global random state is left as it was. With ``where`` a world of
    several processes, this process yields only its contiguous share of the batches."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    nesting, n = _probe_in_blocks(model, guide, args, kwargs, plate)
    chunk_size = chunk_size or min(num_samples, DEFAULT_ROWS)
    batch_size = batch_size or max(1, DEFAULT_ROWS // chunk_size)
    splittable = any(
        isinstance(a, Tensor) and a.dim() > 0 and a.shape[0] == n
        for a in (*args, *kwargs.values())
    )
    if not splittable:
        batch_size = n
    batches = _chunks(n, batch_size)
    batches = batches[shard_rows(len(batches), where)]
    bar = None
    if progress and where.root:
        from tqdm import tqdm

        total = sum(stop - start for start, stop in batches)
        bar = tqdm(total=total, unit="point", desc=f"log p(x), K={num_samples}")

    def chunks(a: tuple, kw: dict, size: int, start: int) -> Iterator[Tensor]:
        if seed is None:
            yield from passes(a, kw, size)
            return
        with torch.random.fork_rng():
            torch.manual_seed(hash((seed, start)) % 2**63)  # ints hash alike in every process
            yield from passes(a, kw, size)

    def passes(a: tuple, kw: dict, size: int) -> Iterator[Tensor]:
        for lo, hi in _chunks(num_samples, chunk_size):
            # _probe_in_blocks() has run every site of every point once under the caller's
            # validation setting; checking K x N particles again costs ~7% of a pass (measured).
            with pyro.validation_enabled(False):
                model_trace, guide_trace = vectorized_traces(model, guide, a, kw, hi - lo, nesting)
            log_w = log_weights(model_trace, guide_trace, plate, nesting)
            if log_w.shape[1] != size:
                raise ValueError(
                    f"pyro.plate({plate!r}) has size {log_w.shape[1]} on a batch of {size} "
                    f"points: the data are not split along their first dimension; "
                    f"pass batch_size={n} to turn batching off"
                )
            yield log_w

    for start, stop in batches:
        a, kw = _rows(args, kwargs, n, start, stop)
        yield start, stop, n, chunks(a, kw, stop - start, start)
        if bar is not None:
            bar.update(stop - start)
    if bar is not None:
        bar.close()


# --------------------------------------------------------------------------------------------
# Public estimators
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LogLikelihood:
    """Importance-sampled log p(x) with per-point diagnostics; every field has shape ``(N,)``.

    Attributes:
        log_px: the estimate log p̂(x_n) = logsumexp_k log w_nk - log K.
        stderr: delta-method standard error of log p̂(x_n), std(w) / (sqrt(K) mean(w)).
        ess: effective sample size (sum w)^2 / sum w^2, between 1 and K.
        pareto_k: PSIS shape estimate k̂ (Vehtari et al.); above 0.7 the estimate is unreliable.
            Points whose K weights are all equal (an exact guide) get 0, not arviz's inf; with
            K < 21 there is too little tail to fit and every point gets NaN.
        num_samples: K.
    """

    log_px: Tensor
    stderr: Tensor
    ess: Tensor
    pareto_k: Tensor
    num_samples: int

    def summary(self) -> dict[str, float]:
        """Means over data points, and the share of points with k̂ > 0.7 (and > 1); the k̂
        entries are NaN when no point has one (K < 21)."""
        k = self.pareto_k[~torch.isnan(self.pareto_k)]

        def share(threshold: float) -> float:
            return (k > threshold).double().mean().item() if len(k) else math.nan

        return {
            "log_px": self.log_px.mean().item(),
            "nll": -self.log_px.mean().item(),
            "stderr_of_mean": (self.stderr.pow(2).sum().sqrt() / len(self.stderr)).item(),
            "stderr": self.stderr.mean().item(),
            "ess": self.ess.mean().item(),
            "ess_fraction": self.ess.mean().item() / self.num_samples,
            "pareto_k": k.mean().item() if len(k) else math.nan,
            "share_k_above_0.7": share(0.7),
            "share_k_above_1": share(1.0),
            "num_samples": float(self.num_samples),
        }


def _gather(
    batches: Iterator[tuple[int, int, int, Iterator[Tensor]]],
    reduce: Callable[[Iterator[Tensor]], tuple[Tensor, ...]],
    where: World = ONE,
) -> list[Tensor]:
    """Write ``reduce(chunks)`` of every batch into preallocated ``(N,)`` tensors; over several
    processes, each computes its contiguous rows and every one gets all of them, in order.

    Not a list of per-batch pieces joined at the end: with one point per batch (K >= 2048),
    thousands of tiny tensors allocated between large temporaries pinned about 60 KB of heap
    each (600 MB over the 10,000 MNIST test images, measured); slices of one tensor pin nothing.
    """
    out: list[Tensor] = []
    lo = hi = None
    for start, stop, n, chunks in batches:
        values = reduce(chunks)
        if not out:
            out, lo = [v.new_empty(n) for v in values], start
        for o, v in zip(out, values, strict=True):
            o[start:stop] = v
        hi = stop
    if not where.active:
        return out
    mine = (lo, hi, [o[lo:hi].cpu() for o in out]) if out else None
    pieces = [p for p in gather_objects(mine) if p is not None]
    if not out:  # this process had no batch (more processes than batches)
        n = max(stop for _, stop, _ in pieces)
        out = [v.new_empty(n) for v in pieces[0][2]]
    for start, stop, values in pieces:
        for o, v in zip(out, values, strict=True):
            o[start:stop] = v.to(o.device)
    return out


def _per_point(
    model: Callable, guide: Callable, args: tuple, kwargs: dict, reduce: Callable, options: tuple
) -> list[Tensor]:
    """``reduce`` of every batch's log-weight chunks, as ``(N,)`` tensors; ``options`` are the
    public estimators' ``(num_samples, chunk_size, batch_size, plate, progress, seed,
    distributed)``."""
    *passes, distributed = options
    where = world() if distributed else ONE
    return _gather(_batches(model, guide, args, kwargs, *passes, where), reduce, where)


def _no_nan(values: Tensor, what: str) -> Tensor:
    """``values`` unchanged, or a ValueError naming the points whose estimate is NaN."""
    bad = torch.isnan(values).nonzero().flatten()
    if len(bad):
        raise ValueError(
            f"{what} is NaN for {len(bad)} of {len(values)} data points (indices "
            f"{bad[:10].tolist()}{' ...' if len(bad) > 10 else ''}): the model or guide gave a "
            f"NaN log-density for some particles, e.g. a network output that overflowed. "
            f"Evaluate those points with fewer particles under pyro.enable_validation(True) "
            f"to find the site."
        )
    return values


def _diagnose(log_w: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """log p̂, stderr, ESS and Pareto k from all log weights ``(K, B)``; each ``(B,)``."""
    k = log_w.shape[0]
    lw = log_w.double()
    lse = torch.logsumexp(lw, 0)
    log_px = lse - math.log(k)
    w = torch.exp(lw - log_px)  # normalized to mean 1 per point, (K, B)
    stderr = w.std(0) / math.sqrt(k) if k > 1 else torch.full_like(lse, math.nan)
    ess = torch.exp(2 * lse - torch.logsumexp(2 * lw, 0))
    if k < MIN_PSIS_SAMPLES:
        pareto_k = torch.full_like(lse, math.nan)
    else:
        import arviz

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            _, kss = arviz.psislw(lw.T.cpu().numpy())
        pareto_k = torch.as_tensor(kss, dtype=torch.float64).reshape(-1).to(lw.device)
    # arviz gives k = inf when all weights are equal (an exact guide); no tail at all is k = 0.
    flat = (lw.max(0).values - lw.min(0).values) <= 1e-9 * lw.abs().max(0).values.clamp(min=1)
    flat &= k > 1
    pareto_k = torch.where(flat, torch.zeros_like(pareto_k), pareto_k)
    dtype = log_w.dtype
    return log_px.to(dtype), stderr.to(dtype), ess.to(dtype), pareto_k.to(dtype)


@torch.no_grad()
def log_likelihood(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1000,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    plate: str = "data",
    diagnostics: bool = False,
    progress: bool = False,
    seed: int | None = None,
    distributed: bool = False,
    compile: bool | None = None,
    **kwargs: Any,
) -> Tensor | LogLikelihood:
    """Importance-sampled log p(x) for every data point, with the guide as proposal.

    .. math::

        \\log \\hat p(x_n) = \\log \\frac1K \\sum_{k=1}^K
        \\frac{p(x_n, z_{nk})}{q(z_{nk} \\mid x_n)}, \\qquad z_{nk} \\sim q(z \\mid x_n).

    This is the IWAE bound of Burda, Grosse & Salakhutdinov (2016): a lower bound in
    expectation that tightens to log p(x_n) as K grows. ``log p(x_n, z)`` sums every sample
    site of the model (latent and observed) inside the data plate, ``log q`` every latent site
    of the guide. Scales (``poutine.scale``, subsampling) are ignored: the estimate is of the
    unscaled model, so a beta-VAE is scored as the plain VAE it defines.

    Particles are vectorized with a plate left of the model's plates and processed
    ``chunk_size`` at a time; data points ``batch_size`` at a time. **Batching rule:** every
    tensor in ``args``/``kwargs`` whose first dimension equals N (the data plate's size, found
    by running guide and model once) is sliced along it; other arguments pass unchanged. If no
    argument qualifies, batching is off. Chunks combine by a streaming logsumexp (all K log
    weights per point are kept only when ``diagnostics=True``; that is K x batch_size numbers).

    Cost: K x N evaluations of model and guide, in ``ceil(K / chunk_size) x ceil(N /
    batch_size)`` passes; memory is about ``chunk_size x batch_size`` rows of activations.
    Defaults: ``chunk_size = min(K, 2048)``, ``batch_size = max(1, 2048 // chunk_size)``.

    **Reproducible and sharded.** With ``seed``, every batch of points draws from a stream of
    its own (seeded by ``seed`` and the batch's first row), so a point's estimate depends only
    on ``seed`` and the batching, not on what ran before it. ``distributed=True`` under an
    initialized ``torch.distributed`` process group splits the batches over the processes and
    gathers the per-point results, in order, on every one of them: P processes take 1/P of the
    time and, with ``seed``, give exactly what one process gives. Every process must make the
    same call.

    Args:
        model: Pyro model; all of its sample sites inside ``pyro.plate(plate, N)``.
        guide: Pyro guide over the model's latent sites, in the same plate.
        *args: arguments of model and guide, e.g. ``x`` of shape ``(N, D)``.
        num_samples: K, the number of importance samples per data point.
        chunk_size: particles per pass.
        batch_size: data points per pass.
        plate: name of the data plate.
        diagnostics: return a :class:`LogLikelihood` with stderr, ESS and Pareto k.
        progress: show a tqdm progress bar over data points.
        seed: draw each batch of points from its own seeded stream (global state untouched).
        distributed: split the points over the processes of torch.distributed's group.
        compile: run the built-in networks' softplus and Bernoulli likelihood as compiled
            kernels (:func:`ppl_vae.fastmath.fused_elementwise`; equal to float rounding,
            seconds to build once per process). None: where N x K is at least 5 million
            (1,000 points at K = 5000) and a C++ compiler is found.
        **kwargs: keyword arguments of model and guide.

    Returns:
        log p̂(x), shape ``(N,)``; or a :class:`LogLikelihood` if ``diagnostics``.

    References:
        Burda, Grosse & Salakhutdinov (2016), Importance Weighted Autoencoders, ICLR.
        Vehtari, Simpson, Gelman, Yao & Gabry (2024), Pareto Smoothed Importance Sampling, JMLR.

    >>> import pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):  # the exact posterior N(x/2, 1/2)
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> x = torch.tensor([0.0, 1.0, -2.0])
    >>> log_likelihood(model, guide, x, num_samples=10)  # log N(x; 0, 2)
    tensor([-1.2655, -1.5155, -2.2655])
    """
    options = (num_samples, chunk_size, batch_size, plate, progress, seed, distributed)
    if compile is None:
        from .traced import compiler_available

        rows = next((len(a) for a in args if isinstance(a, Tensor) and a.dim() > 0), 0)
        compile = rows * num_samples >= 5_000_000 and compiler_available()

    def streamed(chunks: Iterator[Tensor]) -> tuple[Tensor]:
        acc = None
        for log_w in chunks:
            lse = torch.logsumexp(log_w, 0)
            acc = lse if acc is None else torch.logaddexp(acc, lse)
        return (acc - math.log(num_samples),)

    with fused_elementwise() if compile else nullcontext():
        if diagnostics:
            reduce = lambda chunks: _diagnose(torch.cat(list(chunks), 0))  # noqa: E731
            fields = _per_point(model, guide, args, kwargs, reduce, options)
            _no_nan(fields[0], "log p(x)")
            return LogLikelihood(*fields, num_samples=num_samples)
        return _no_nan(_per_point(model, guide, args, kwargs, streamed, options)[0], "log p(x)")


@torch.no_grad()
def elbo(
    model: Callable,
    guide: Callable,
    *args: Any,
    num_samples: int = 1,
    chunk_size: int | None = None,
    batch_size: int | None = None,
    plate: str = "data",
    progress: bool = False,
    seed: int | None = None,
    distributed: bool = False,
    **kwargs: Any,
) -> Tensor:
    """Monte Carlo ELBO per data point, the mean of the log weights; shape ``(N,)``.

    .. math::

        \\mathrm{ELBO}(x_n) \\approx \\frac1K \\sum_{k=1}^K
        \\log \\frac{p(x_n, z_{nk})}{q(z_{nk} \\mid x_n)}, \\qquad z_{nk} \\sim q(z \\mid x_n).

    Same sites, scales, chunking, batching, ``seed`` and ``distributed`` rules as
    :func:`log_likelihood`; K = ``num_samples``. Unlike ``Trace_ELBO().loss`` this is per
    point and unscaled (beta = 1).

    >>> import pyro.distributions as dist
    >>> def model(x):
    ...     with pyro.plate("data", len(x)):
    ...         z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...         pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     with pyro.plate("data", len(x)):
    ...         pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))
    >>> elbo(model, guide, torch.zeros(4)).shape
    torch.Size([4])
    """
    options = (num_samples, chunk_size, batch_size, plate, progress, seed, distributed)
    reduce = lambda chunks: (sum(log_w.sum(0) for log_w in chunks) / num_samples,)  # noqa: E731
    out = _per_point(model, guide, args, kwargs, reduce, options)
    return _no_nan(out[0], "the ELBO")
