"""Looking inside a trained VAE: ELBO surgery, active units, and the mutual information gap."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyro.poutine as poutine
import torch
from torch import Tensor

from ppl_vae.program import ProgramError, as_program

__all__ = ["Surgery", "active_units", "elbo_surgery", "mutual_information_gap"]


@dataclass(frozen=True)
class Surgery:
    """ELBO surgery of one latent site over a data set of ``num_points`` points; nats per
    point, each with its Monte Carlo standard error (``*_se``) over ``num_samples`` draws.

    ``average_kl = marginal_kl + mutual_information`` holds for every draw, so exactly for the
    estimates too; ``mutual_information <= log_n`` (the most a code can say about which of N
    points it came from).
    """

    average_kl: float
    average_kl_se: float
    marginal_kl: float
    marginal_kl_se: float
    mutual_information: float
    mutual_information_se: float
    log_n: float
    num_points: int
    num_samples: int


@torch.no_grad()
def elbo_surgery(
    program: Any,
    x: Tensor,
    site: str = "z",
    num_samples: int = 1000,
    chunk: int = 64,
    seed: int | None = 0,
) -> Surgery:
    """Split the average KL term of the ELBO (Hoffman & Johnson 2016):

    .. math::

        \\frac1N \\sum_n \\mathrm{KL}\\big(q(z \\mid x_n) \\,\\|\\, p(z)\\big)
        = \\mathrm{KL}\\big(q(z) \\,\\|\\, p(z)\\big) + I_q(n; z),
        \\qquad q(z) = \\frac1N \\sum_n q(z \\mid x_n),

    the marginal KL from the aggregated posterior to the prior (what a better prior can still
    win), and the mutual information between the index of a point and its code (at most
    log N). Estimated with ``M = num_samples`` draws: a point m drawn uniformly (without
    replacement when M <= N), z_m ~ q(z | x_m), and the three integrands
    ``log q(z_m|x_m) - log p(z_m)``, ``log q(z_m) - log p(z_m)``, ``log q(z_m|x_m) - log q(z_m)``,
    where ``log q(z_m)`` is the exact log of the N-component mixture.

    Needs the program's ``encode(x)`` (q(z|x) as a distribution with batch shape (N,)) and a
    prior of ``site`` that does not depend on x. Cost: one encoder pass over the N points and
    M x N density evaluations of q, in chunks of ``chunk`` draws (memory chunk x N x z_dim):
    O(N^2) when M = N, hence the subsample of M draws.

    Args:
        program: anything :func:`~ppl_vae.program.as_program` takes, with ``encode``.
        x: the data set, shape (N, ...), the first argument of ``encode``, model and guide.
        site: the latent site's name in the model.
        num_samples: M, the Monte Carlo draws.
        chunk: draws per pass over the N points.
        seed: seeds the draws (the global random state is left as it was); None: unseeded.
    """
    program = as_program(program)
    encode = program.require("encode", "ELBO surgery")
    n = len(x)
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        q_all = encode(x)
        m = num_samples
        idx = torch.randperm(n)[:m] if m <= n else torch.randint(n, (m,))
        q_m = encode(x[idx])
        z = q_m.sample()  # (M, D)
        log_q_own = q_m.log_prob(z)  # (M,)
        log_q_agg = torch.cat(
            [
                torch.logsumexp(q_all.log_prob(z[i : i + chunk].unsqueeze(1)), dim=1)
                for i in range(0, len(z), chunk)
            ]
        ) - math.log(n)  # (M,)
        log_p = _prior_log_prob(program, x[idx], site, z)  # (M,)
    terms = {
        "average_kl": log_q_own - log_p,
        "marginal_kl": log_q_agg - log_p,
        "mutual_information": log_q_own - log_q_agg,
    }
    values = {}
    for name, t in terms.items():
        t = t.double()
        values[name] = t.mean().item()
        values[f"{name}_se"] = (t.std() / math.sqrt(len(t))).item() if len(t) > 1 else math.nan
    return Surgery(**values, log_n=math.log(n), num_points=n, num_samples=len(z))


def _prior_log_prob(program: Any, x: Tensor, site: str, z: Tensor) -> Tensor:
    """log p(z) at the model's ``site``, the model run on ``x`` with ``site`` fixed to ``z``."""
    trace = poutine.trace(poutine.condition(program.model, data={site: z})).get_trace(x)
    if site not in trace.nodes:
        raise ProgramError(f"the model has no sample site {site!r}; pass site=<its name>")
    node = trace.nodes[site]
    return node["fn"].log_prob(node["value"])


@torch.no_grad()
def active_units(program: Any, x: Tensor, threshold: float = 0.01) -> tuple[int, Tensor]:
    """How many latent dimensions the encoder uses (Burda et al. 2016): dimension u is active
    when the posterior mean varies over the data, ``Var_x(E_q[z_u | x]) > threshold``.

    Returns the count and the variances, shape (z_dim,). Needs the program's ``encode``.
    """
    encode = as_program(program).require("encode", "active units")
    variances = encode(x).mean.var(0)
    return int((variances > threshold).sum()), variances


def mutual_information_gap(
    codes: Tensor | np.ndarray, factors: Tensor | np.ndarray, bins: int = 20
) -> tuple[float, np.ndarray]:
    """The mutual information gap (Chen et al. 2018) of codes against known discrete factors:

    .. math::

        \\mathrm{MIG} = \\frac1K \\sum_k \\frac{I(z_{j^{(k)}}; v_k)
            - \\max_{j \\ne j^{(k)}} I(z_j; v_k)}{H(v_k)},
        \\qquad j^{(k)} = \\arg\\max_j I(z_j; v_k),

    with each code dimension discretized into ``bins`` equal-width bins (the usual estimator;
    Locatello et al. 2019). 1: each factor is captured by one dimension alone; 0: no dimension
    stands out.

    Args:
        codes: latent means, shape (N, J).
        factors: factor values, shape (N, K) (any numbers; each distinct value is a class).
        bins: bins per code dimension.

    Returns:
        MIG, and the table of I(z_j; v_k) / H(v_k), shape (J, K).
    """
    from sklearn.metrics import mutual_info_score

    if isinstance(codes, Tensor):
        codes = codes.detach().cpu().numpy()
    if isinstance(factors, Tensor):
        factors = factors.detach().cpu().numpy()
    codes, factors = np.asarray(codes, dtype=float), np.asarray(factors)
    if codes.ndim != 2 or factors.ndim != 2 or len(codes) != len(factors):
        raise ValueError(
            f"codes (N, J) and factors (N, K) must have as many rows, got {codes.shape} and "
            f"{factors.shape}"
        )
    if codes.shape[1] < 2:
        raise ValueError("MIG needs at least two code dimensions (it is a gap between two)")
    binned = np.stack([_discretize(c, bins) for c in codes.T])
    table = np.zeros((codes.shape[1], factors.shape[1]))
    gaps = []
    for k, v in enumerate(factors.T):
        entropy = mutual_info_score(v, v)
        if entropy <= 0:
            raise ValueError(f"factor {k} takes one value only; it has no information to find")
        for j, c in enumerate(binned):
            table[j, k] = mutual_info_score(v, c) / entropy
        top = np.sort(table[:, k])[::-1]
        gaps.append(top[0] - top[1])
    return float(np.mean(gaps)), table


def _discretize(values: np.ndarray, bins: int) -> np.ndarray:
    edges = np.histogram_bin_edges(values, bins)
    return np.digitize(values, edges[1:-1])
