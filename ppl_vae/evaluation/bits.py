"""Bits per dimension: log p(x) in the unit that image likelihoods are compared in."""

from __future__ import annotations

import math

from torch import Tensor

__all__ = ["bits_per_dim"]


def bits_per_dim(
    log_px: Tensor | float, x_dim: int, discretization_bits: float = 0.0
) -> Tensor | float:
    """Minus log p(x) in bits, per dimension of x.

    .. math::

        \\mathrm{bpd}(x) = \\frac{-\\log p(x)}{D \\ln 2} + b

    with ``log_px`` in nats and ``b = discretization_bits``. Which ``b``:

    - ``0`` when the likelihood is a probability mass: on the 256 levels of 8-bit data (the
      discretized logistic and Gaussian heads) or on {0, 1} (Bernoulli). log p(x) is a
      log-probability as it stands (:func:`ppl_vae.program.observation_levels` says which
      programs these are).
    - ``8 = log2(256)`` for a density on [0, 1]^D (Gaussian, continuous Bernoulli) of 8-bit
      data, the usual convention (uniform dequantization, Theis et al. 2016, "A note on the
      evaluation of generative models"): a bin of width 1/256 holds about density / 256, so

      .. math::

          \\mathrm{bpd}(x) = \\frac{-\\log p(x) + D \\ln 256}{D \\ln 2}.

    Args:
        log_px: log p(x) in nats, a float or a tensor of any shape (e.g. ``(N,)``).
        x_dim: D, the number of dimensions of one data point.
        discretization_bits: ``b`` above, added to every entry.

    Returns:
        The same shape as ``log_px`` (a float for a float).

    >>> round(bits_per_dim(-784 * math.log(2), 784), 6)
    1.0
    >>> round(bits_per_dim(0.0, 784, discretization_bits=math.log2(256)), 6)
    8.0
    """
    if x_dim < 1:
        raise ValueError(f"bits per dimension need x_dim >= 1, got {x_dim}")
    return -log_px / (x_dim * math.log(2)) + discretization_bits
