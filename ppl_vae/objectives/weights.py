"""Effect handlers that :func:`ppl_vae.fit` applies to any Pyro program: the KL weight, and
cheap parameter registration."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor

__all__ = ["KLWeight", "kl_weight", "warmup_weight"]


class KLWeight(Messenger):
    """Multiply the log-density of every latent sample site by ``weight`` (beta).

    Applied to both the model and the guide, it turns any ELBO objective into

    .. math::

        \\mathcal L_\\beta(x) = \\mathbb E_q[\\log p(x \\mid z)]
            - \\beta\\, \\mathbb E_q\\big[\\log q(z \\mid x) - \\log p(z)\\big],

    the beta-VAE bound (Higgins et al. 2017): with an analytic KL the KL term is scaled, with a
    Monte Carlo ELBO the terms ``log p(z)`` and ``log q(z|x)`` are. *Latent* means unobserved and
    not a plate's subsample site; observed sites keep their scale. The weight is an attribute,
    so a trainer changes it between steps (KL warm-up) without rebuilding anything.

    Inside an importance-weighted bound a weight on the latent sites is no beta (the scale
    lands inside the log-sum-exp); :class:`ppl_vae.objectives.IWAE` refuses it.

    Args:
        weight: beta; 1 leaves the program as it is.

    >>> import pyro, pyro.distributions as dist, pyro.poutine as poutine, torch
    >>> def model(x):
    ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> trace = poutine.trace(kl_weight(model, 4.0)).get_trace(torch.tensor(0.0))
    >>> trace.nodes["z"]["scale"], trace.nodes["x"]["scale"]
    (4.0, 1.0)
    """

    def __init__(self, weight: float = 1.0) -> None:
        super().__init__()
        self.weight = float(weight)

    def _pyro_sample(self, msg: dict[str, Any]) -> None:
        # a tensor weight: a traced step's input (ppl_vae.training.traced), multiplied in even at 1
        one = not isinstance(self.weight, Tensor) and self.weight == 1.0
        if one or msg["is_observed"] or site_is_subsample(msg):
            return
        msg["scale"] = self.weight * msg["scale"]


def kl_weight(fn: Callable, weight: float) -> Callable:
    """``fn`` (a model or a guide) with its latent sites weighted by ``weight``; see
    :class:`KLWeight`. Wrap both the model and the guide."""
    return KLWeight(weight)(fn)


def warmup_weight(beta: float, warmup: float, epoch: int, step: int, steps: int | None) -> float:
    """The KL weight at ``step`` (from 0) of ``steps`` in ``epoch`` (from 0) under a linear
    warm-up over ``warmup`` epochs (Bowman et al. 2016; Sønderby et al. 2016):

    .. math::

        w = \\beta \\min\\Big(1, \\frac{e + (s + 1) / S}{W}\\Big).

    With ``steps`` unknown (a loader without a length) the weight moves once an epoch, as if
    ``S = 1``.

    >>> [warmup_weight(2.0, 2, e, s, 2) for e in range(3) for s in range(2)]
    [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    """
    if not warmup:
        return beta
    done = epoch + (step + 1) / steps if steps else epoch + 1
    return beta * min(1.0, done / warmup)
