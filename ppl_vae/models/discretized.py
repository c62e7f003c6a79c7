"""Discretized logistic-mixture and Gaussian likelihoods: probability masses on 8-bit levels."""

from __future__ import annotations

import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints
from torch.special import erfcx, ndtr

__all__ = [
    "DiscretizedGaussian",
    "DiscretizedGaussianLikelihood",
    "DiscretizedLogistic",
    "DiscretizedLogisticLikelihood",
    "UnitLevels",
]


class UnitLevels(constraints.Constraint):
    """The ``levels`` values ``k / (levels - 1)``, ``k = 0 .. levels - 1``, in [0, 1]: a
    discrete support (``is_discrete``), so a reader of a program can tell a probability mass
    on these levels from a density on [0, 1]. ``check`` allows 1e-3 of a level's spacing for
    the rounding of ``k / 255`` in float32."""

    is_discrete = True
    event_dim = 0

    def __init__(self, levels: int = 256) -> None:
        super().__init__()
        self.levels, self.lower_bound, self.upper_bound = levels, 0.0, 1.0

    def check(self, value: Tensor) -> Tensor:
        k = value * (self.levels - 1)
        return (value >= 0) & (value <= 1) & ((k - k.round()).abs() <= 1e-3)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(levels={self.levels})"


def _log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(x))`` for ``x < 0``: ``expm1`` near 0 and ``log1p`` in the tail (Maechler
    2012), each branch on inputs clamped to where it is accurate, so the branch ``where`` drops
    has a finite gradient (an infinite one times 0 would be NaN)."""
    x = x.clamp(max=-torch.finfo(x.dtype).tiny)
    near = torch.log(-torch.expm1(x.clamp(min=-math.log(2))))
    far = torch.log1p(-torch.exp(x.clamp(max=-math.log(2))))
    return torch.where(x > -math.log(2), near, far)


class _LogNdtr(torch.autograd.Function):
    """``log Phi(x)`` with its derivative, the inverse Mills ratio ``phi(x) / Phi(x)``, as
    ``sqrt(2 / pi) / erfcx(-x / sqrt(2))`` below 0: the derivative torch gives ``log_ndtr`` is
    4% off at x = -1000 in float32 and NaN or 0 beyond -1e5 (torch 2.14)."""

    @staticmethod
    def forward(ctx: object, x: Tensor) -> Tensor:
        ctx.save_for_backward(x)
        return torch.special.log_ndtr(x)

    @staticmethod
    def backward(ctx: object, grad: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        below = math.sqrt(2 / math.pi) / erfcx(-x.clamp(max=0) / math.sqrt(2))
        above = torch.exp(-0.5 * x.clamp(min=0) ** 2) / (math.sqrt(2 * math.pi) * ndtr(x))
        return grad * torch.where(x < 0, below, above)


def _log_ndtr(x: Tensor) -> Tensor:
    """``torch.special.log_ndtr`` with a derivative that holds in the far lower tail."""
    return _LogNdtr.apply(x)


class _Discretized(dist.TorchDistribution):
    """A continuous distribution of x rounded to the nearest of ``levels`` values in [0, 1]:
    bin k covers ``[(k - 1/2) / (L - 1), (k + 1/2) / (L - 1)]``, the first and last extended
    to -inf and +inf, so the L masses sum to 1. Subclasses give the log-mass of level k
    (:meth:`_log_mass`), the survival function (:meth:`_survival`) and a continuous draw."""

    levels: int = 256
    loc: Tensor
    has_rsample = False
    has_enumerate_support = True

    @property
    def support(self) -> UnitLevels:
        """The ``levels`` values in [0, 1], a discrete support."""
        return UnitLevels(self.levels)

    def _log_mass(self, k: Tensor) -> Tensor:
        raise NotImplementedError

    def _survival(self, t: float) -> Tensor:
        raise NotImplementedError

    def _continuous_sample(self, shape: torch.Size) -> Tensor:
        raise NotImplementedError

    def log_prob(self, value: Tensor) -> Tensor:
        """log P(X = x) at the level nearest each ``value``; shape: ``value``'s shape
        broadcast with the batch shape."""
        if self._validate_args:
            self._validate_sample(value)
        top = self.levels - 1
        return self._log_mass((value * top).round().clamp(0, top))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """Draws on the levels, shape ``sample_shape + batch_shape``: a continuous draw rounded
        to the nearest level (the bins above), so no draw depends on the masses' rounding."""
        top = self.levels - 1
        with torch.no_grad():
            x = self._continuous_sample(self._extended_shape(torch.Size(sample_shape)))
            return (x * top).round().clamp(0, top) / top

    def enumerate_support(self, expand: bool = True) -> Tensor:
        """The L levels, shape ``(L,) + batch_shape`` (``(L,) + (1,) * len(batch_shape)``
        unexpanded)."""
        levels = torch.arange(self.levels, dtype=self.loc.dtype, device=self.loc.device)
        values = levels / (self.levels - 1)
        values = values.reshape((-1,) + (1,) * len(self.batch_shape))
        return values.expand((-1,) + self.batch_shape) if expand else values

    def _moments(self) -> tuple[Tensor, Tensor]:
        """E[K] and E[K^2] of the level index K, from P(K >= k) = S((k - 1/2) / (L - 1)):
        :math:`E[K] = \\sum_{k \\ge 1} P(K \\ge k)`, :math:`E[K^2] = \\sum_{k \\ge 1}
        (2k - 1) P(K \\ge k)`. One survival evaluation a level, without keeping all L."""
        top = self.levels - 1
        first = second = torch.zeros(
            self.batch_shape, dtype=self.loc.dtype, device=self.loc.device
        )
        for k in range(1, self.levels):
            tail = self._survival((k - 0.5) / top)
            first, second = first + tail, second + (2 * k - 1) * tail
        return first, second

    @property
    def mean(self) -> Tensor:
        """The mean of the discretized distribution, :math:`\\sum_k (k / (L-1)) P(X = k/(L-1))`
        (not the clamped continuous mean); shape ``batch_shape``. Cost: L survival-function
        evaluations of the batch."""
        return self._moments()[0] / (self.levels - 1)

    @property
    def variance(self) -> Tensor:
        """The variance of the discretized distribution; shape ``batch_shape``."""
        first, second = self._moments()
        return (second - first**2).clamp(min=0) / (self.levels - 1) ** 2


class DiscretizedLogistic(_Discretized):
    """A mixture of M logistics per feature, discretized to the 256 levels of 8-bit data.

    .. math::

        P(X = x_k) = \\sum_m \\pi_m \\bigl[
        \\sigma\\bigl(\\tfrac{x_k + \\delta - \\mu_m}{s_m}\\bigr)
        - \\sigma\\bigl(\\tfrac{x_k - \\delta - \\mu_m}{s_m}\\bigr)\\bigr],
        \\qquad x_k = k / 255,\\ \\delta = 1 / 510,

    with :math:`\\sigma(\\cdot)` read as 0 below the first bin and 1 above the last. Each
    difference is computed in log space, exactly, as
    :math:`\\log\\sigma(a) + \\log\\sigma(-b) + \\log(1 - e^{-(a - b)})` (from
    :math:`\\sigma(a) - \\sigma(b) = \\sigma(a)\\,\\sigma(-b)\\,(1 - e^{b - a})`), with
    :math:`a - b = 2\\delta / s` formed directly: no mass underflows to a log of 0 and none
    needs PixelCNN++'s midpoint-density fallback. Salimans et al. (2017), PixelCNN++; Kingma
    et al. (2016), IAF.

    Args:
        loc: the components' means, shape ``batch_shape + (M,)`` (any real; heads keep them
            in [0, 1]).
        log_scale: the components' log scales, shape ``batch_shape + (M,)``.
        logits: unnormalized log mixture weights, shape ``batch_shape + (M,)``; None for
            equal weights (M = 1: one logistic).

    >>> p = DiscretizedLogistic(torch.tensor([[0.3, 0.7]]), torch.tensor([[-3.0, -2.0]]))
    >>> p.batch_shape, p.log_prob(p.enumerate_support()).exp().sum().item() == 1.0
    (torch.Size([1]), True)
    """

    arg_constraints = {
        "loc": constraints.real,
        "log_scale": constraints.real,
        "logits": constraints.real,
    }

    def __init__(
        self,
        loc: Tensor,
        log_scale: Tensor,
        logits: Tensor | None = None,
        validate_args: bool | None = None,
    ) -> None:
        if logits is None:
            logits = torch.zeros_like(loc)
        loc, log_scale, logits = torch.broadcast_tensors(loc, log_scale, logits)
        self.loc, self.log_scale, self.logits = loc, log_scale, logits
        super().__init__(loc.shape[:-1], validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> DiscretizedLogistic:
        new = self._get_checked_instance(DiscretizedLogistic, _instance)
        shape = torch.Size(batch_shape) + self.loc.shape[-1:]
        new.loc, new.log_scale = self.loc.expand(shape), self.log_scale.expand(shape)
        new.logits = self.logits.expand(shape)
        super(DiscretizedLogistic, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _log_mass(self, k: Tensor) -> Tensor:
        top = self.levels - 1
        k = k.unsqueeze(-1)  # (..., 1) against the components' (..., M)
        inv_scale = torch.exp(-self.log_scale)
        # each edge from one expression, so that neighbouring bins share it to the last bit
        upper = ((k + 0.5) / top - self.loc) * inv_scale
        lower = ((k - 0.5) / top - self.loc) * inv_scale
        below, above = F.logsigmoid(upper), F.logsigmoid(-lower)  # log F(upper), log S(lower)
        inner = below + above + _log1mexp(-inv_scale / top)
        mass = torch.where(k == 0, below, torch.where(k == top, above, inner))
        return torch.logsumexp(mass + self.logits.log_softmax(-1), dim=-1)

    def _survival(self, t: float) -> Tensor:
        weights = self.logits.softmax(-1)
        return (weights * torch.sigmoid((self.loc - t) * torch.exp(-self.log_scale))).sum(-1)

    def _continuous_sample(self, shape: torch.Size) -> Tensor:
        m = self.loc.shape[-1]
        loc, log_scale = self.loc.expand(shape + (m,)), self.log_scale.expand(shape + (m,))
        if m > 1:
            sample_shape = shape[: len(shape) - len(self.batch_shape)]
            pick = dist.Categorical(logits=self.logits).sample(sample_shape)  # (*shape)
            loc = loc.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
            log_scale = log_scale.gather(-1, pick.unsqueeze(-1)).squeeze(-1)
        else:
            loc, log_scale = loc.squeeze(-1), log_scale.squeeze(-1)
        u = torch.rand(shape, dtype=loc.dtype, device=loc.device)
        u = u.clamp(min=torch.finfo(u.dtype).tiny)
        return loc + log_scale.exp() * (u.log() - (-u).log1p())


class DiscretizedGaussian(_Discretized):
    """A Gaussian discretized to the 256 levels of 8-bit data.

    .. math::

        P(X = x_k) = \\Phi\\bigl(\\tfrac{x_k + \\delta - \\mu}{\\sigma}\\bigr)
        - \\Phi\\bigl(\\tfrac{x_k - \\delta - \\mu}{\\sigma}\\bigr),
        \\qquad x_k = k / 255,\\ \\delta = 1 / 510,

    with :math:`\\Phi` read as 0 below the first bin and 1 above the last. With the bin's edges
    :math:`a < b` in standard units, mirrored to :math:`(-b, -a)` when the bin lies above the
    mean (the same mass, on the tail where ``log_ndtr`` keeps its digits), the log-mass is
    :math:`\\log\\Phi(b) + \\log(1 - e^{\\log\\Phi(a) - \\log\\Phi(b)})`, exact and finite
    however small; its derivative is the inverse Mills ratio through ``erfcx``, which holds
    in the far tail where torch's ``log_ndtr`` derivative does not. Where the bin is narrow
    against the scale,
    :math:`w (1 + |m|) < 0.05` in standard units (:math:`w = 2\\delta/\\sigma`,
    :math:`m = (x_k - \\mu)/\\sigma`), that difference would cancel, and the mass is the
    density at the midpoint times the width with its Taylor correction,
    :math:`w\\,\\varphi(m)\\,(1 + \\mathrm{He}_2(m) w^2/24 + \\mathrm{He}_4(m) w^4/1920)`
    (PixelCNN++'s midpoint fallback, two orders further; the next term is below 1e-12).

    Args:
        loc: the means, shape ``batch_shape``.
        log_scale: the log standard deviations, shape ``batch_shape``.

    >>> p = DiscretizedGaussian(torch.tensor([0.2]), torch.tensor([-9.0]))  # 0.2 = 51 / 255
    >>> round(p.log_prob(torch.tensor([51 / 255])).exp().item(), 4)
    1.0
    """

    arg_constraints = {"loc": constraints.real, "log_scale": constraints.real}

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: bool | None = None) -> None:
        self.loc, self.log_scale = torch.broadcast_tensors(loc, log_scale)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def expand(self, batch_shape: torch.Size, _instance: object = None) -> DiscretizedGaussian:
        new = self._get_checked_instance(DiscretizedGaussian, _instance)
        new.loc, new.log_scale = self.loc.expand(batch_shape), self.log_scale.expand(batch_shape)
        super(DiscretizedGaussian, new).__init__(torch.Size(batch_shape), validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _log_mass(self, k: Tensor) -> Tensor:
        top = self.levels - 1
        inv_scale = torch.exp(-self.log_scale)
        # each edge from one expression, (k +- 0.5) / top, so that neighbouring bins share it
        # to the last bit and their masses add up where a tiny scale splits them
        upper = ((k + 0.5) / top - self.loc) * inv_scale
        lower = ((k - 0.5) / top - self.loc) * inv_scale
        flip = upper + lower > 0  # the mirror bin on the lower tail holds the same mass
        high, low = torch.where(flip, -lower, upper), torch.where(flip, -upper, lower)
        log_high = _log_ndtr(high)
        exact = log_high + _log1mexp(_log_ndtr(low) - log_high)
        mid, width = (k / top - self.loc) * inv_scale, inv_scale / top  # standard units
        is_narrow = width * (1 + mid.abs()) < 0.05
        # the series on inputs clamped to the region where it is used, which leaves them as
        # they are there and keeps the powers finite (and their gradients) elsewhere
        width = width.clamp(max=0.05)
        mid = mid.clamp(-0.05 / width, 0.05 / width)
        w2, m2 = width**2, mid**2
        series = w2 * (m2 - 1) / 24 + w2**2 * (m2**2 - 6 * m2 + 3) / 1920
        narrow = -0.5 * m2 - 0.5 * math.log(2 * math.pi) + torch.log(width) + series.log1p()
        inner = torch.where(is_narrow, narrow, exact)
        first, last = _log_ndtr(upper), _log_ndtr(-lower)
        return torch.where(k == 0, first, torch.where(k == top, last, inner))

    def _survival(self, t: float) -> Tensor:
        return ndtr((self.loc - t) * torch.exp(-self.log_scale))

    def _continuous_sample(self, shape: torch.Size) -> Tensor:
        noise = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return self.loc + self.log_scale.exp() * noise


def _bounded_below(raw: Tensor, low: float) -> Tensor:
    """``low + softplus(raw - low)``: about ``raw`` above ``low``, never below it, and with a
    gradient everywhere (a clamp would strand a unit below the bound)."""
    return low + F.softplus(raw - low)


def _parameters(h: Tensor, k: int, head: str) -> Tensor:
    """``h`` of shape ``(..., k * D)`` read parameter-major as ``(..., k, D)``."""
    if h.shape[-1] % k:
        raise ValueError(
            f"the {head} head reads {k} numbers per feature, parameter-major, but the network "
            f"gave {h.shape[-1]}, not a multiple of {k}; build the decoder's output layer with "
            "x_dim * head.outputs_per_feature units"
        )
    return h.unflatten(-1, (k, h.shape[-1] // k))


class DiscretizedLogisticLikelihood(nn.Module):
    """p(x|z) = prod_d DiscretizedLogistic(x_d; mixture of M logistics) for 8-bit data in [0, 1].

    ``forward(h)`` reads ``h`` of shape ``(..., 3 M D)`` parameter-major, as
    ``h.unflatten(-1, (3 M, D))``: rows ``0..M-1`` the mixture logits, ``M..2M-1`` the means
    (through a sigmoid, into [0, 1]), ``2M..3M-1`` the log scales (bounded below by
    ``min_log_scale``, softly). It returns a distribution with event shape ``(D,)``.

    Args:
        components: M, logistics per feature.
        min_log_scale: the lower bound of the log scales (-7, as PixelCNN++).

    >>> head = DiscretizedLogisticLikelihood(components=2)
    >>> head(torch.zeros(5, 6 * 4)).event_shape
    torch.Size([4])
    """

    binary: bool = False

    def __init__(self, components: int = 1, min_log_scale: float = -7.0) -> None:
        super().__init__()
        if components < 1:
            raise ValueError(f"a logistic mixture needs components >= 1, got {components}")
        self.components, self.min_log_scale = components, min_log_scale
        self.outputs_per_feature = 3 * components

    def forward(self, h: Tensor) -> dist.Distribution:
        params = _parameters(h, self.outputs_per_feature, "discretized-logistic")  # (..., 3M, D)
        logits, loc, log_scale = params.movedim(-2, -1).chunk(3, dim=-1)  # each (..., D, M)
        log_scale = _bounded_below(log_scale, self.min_log_scale)
        return DiscretizedLogistic(torch.sigmoid(loc), log_scale, logits).to_event(1)


class DiscretizedGaussianLikelihood(nn.Module):
    """p(x|z) = prod_d DiscretizedGaussian(x_d; mu_d, sigma_d) for 8-bit data in [0, 1].

    ``forward(h)`` reads ``h`` of shape ``(..., 2 D)`` parameter-major, as
    ``h.unflatten(-1, (2, D))``: row 0 the means (through a sigmoid, into [0, 1]), row 1 the
    log standard deviations (bounded below by ``min_log_scale``, softly). It returns a
    distribution with event shape ``(D,)``.

    >>> DiscretizedGaussianLikelihood()(torch.zeros(5, 2 * 4)).event_shape
    torch.Size([4])
    """

    binary: bool = False
    outputs_per_feature: int = 2

    def __init__(self, min_log_scale: float = -7.0) -> None:
        super().__init__()
        self.min_log_scale = min_log_scale

    def forward(self, h: Tensor) -> dist.Distribution:
        loc, log_scale = _parameters(h, 2, "discretized-gaussian").unbind(-2)  # (..., D) each
        log_scale = _bounded_below(log_scale, self.min_log_scale)
        return DiscretizedGaussian(torch.sigmoid(loc), log_scale).to_event(1)
