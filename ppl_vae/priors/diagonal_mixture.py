"""A mixture of diagonal Gaussians scored with matrix products (mixture and VampPrior priors)."""

from __future__ import annotations

import math

import torch
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor
from torch.distributions import constraints

__all__ = ["DiagonalNormalMixture"]


class DiagonalNormalMixture(TorchDistribution):
    """p(z) = sum_c pi_c N(z; mu_c, diag sigma_c^2), with log_prob as three matrix products.

    .. math::

        \\log \\mathcal{N}(z; \\mu_c, \\operatorname{diag}\\sigma_c^2) =
        -\\tfrac12 \\Big[ (z \\odot z)^\\top \\sigma_c^{-2} - 2 z^\\top (\\mu_c \\odot
        \\sigma_c^{-2}) + \\mu_c^\\top (\\mu_c \\odot \\sigma_c^{-2}) \\Big]
        - \\textstyle\\sum_d \\log \\sigma_{cd} - \\tfrac{D}{2} \\log 2\\pi

    Scoring M points against C components costs two ``(M, D) x (D, C)`` matrix products and a
    log-sum-exp over ``(M, C)``, instead of ``MixtureSameFamily``'s ``(M, C, D)`` temporaries:
    on the VampPrior's 2048 x 500 x 50 that is 7x faster (measured; 0.68 s against 0.09 s).
    The expansion cancels large terms when ``|z - mu| << |z|`` and ``sigma`` is small, so it is
    computed in float64 (for float32 inputs too) and the result cast back to ``z``'s dtype.

    Args:
        logits: unnormalized log weights, shape ``(C,)``.
        loc: means, shape ``(C, D)``.
        scale: standard deviations, shape ``(C, D)``.

    Batch shape ``()`` (``expand`` gives any other), event shape ``(D,)``. ``log_prob`` takes
    ``z`` of shape ``(..., D)`` and returns shape ``(...)``; ``sample`` draws a component, then
    the Gaussian (no ``rsample``: a prior's draws need no reparameterized gradient).

    >>> p = DiagonalNormalMixture(torch.zeros(3), torch.randn(3, 2), torch.ones(3, 2))
    >>> p.log_prob(torch.zeros(4, 5, 2)).shape, p.sample((7,)).shape
    (torch.Size([4, 5]), torch.Size([7, 2]))
    """

    arg_constraints = {
        "logits": constraints.real_vector,
        "loc": constraints.independent(constraints.real, 2),
        "scale": constraints.independent(constraints.positive, 2),
    }
    support = constraints.real_vector
    has_rsample = False

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor,
        batch_shape: torch.Size = torch.Size(),  # noqa: B008
        validate_args: bool | None = None,
    ) -> None:
        if loc.dim() != 2 or scale.shape != loc.shape or logits.shape != loc.shape[:1]:
            raise ValueError(
                f"expected logits (C,), loc and scale (C, D); got {tuple(logits.shape)}, "
                f"{tuple(loc.shape)}, {tuple(scale.shape)}"
            )
        self.logits, self.loc, self.scale = logits, loc, scale
        super().__init__(torch.Size(batch_shape), loc.shape[-1:], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> DiagonalNormalMixture:  # noqa: ANN001
        return DiagonalNormalMixture(
            self.logits, self.loc, self.scale, torch.Size(batch_shape), validate_args=False
        )

    @property
    def mean(self) -> Tensor:
        mean = (torch.softmax(self.logits, -1)[:, None] * self.loc).sum(0)
        return mean.expand(self.batch_shape + self.event_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        work = torch.promote_types(value.dtype, torch.float64)
        z = value.reshape(-1, value.shape[-1]).to(work)  # (M, D)
        loc, scale = self.loc.to(work), self.scale.to(work)
        prec = scale.pow(-2)  # (C, D)
        quad = torch.addmm((loc * loc * prec).sum(-1), z * z, prec.T)  # (M, C)
        quad = torch.addmm(quad, z, (loc * prec).T, alpha=-2.0)
        log_norm = -scale.log().sum(-1) - 0.5 * loc.shape[-1] * math.log(2 * math.pi)  # (C,)
        log_w = torch.log_softmax(self.logits.to(work), -1)
        lp = torch.logsumexp(log_w + log_norm - 0.5 * quad, -1).to(value.dtype)
        lp = lp.reshape(value.shape[:-1])
        return lp.expand(torch.broadcast_shapes(lp.shape, self.batch_shape))

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape)[:-1]
        with torch.no_grad():
            c = torch.distributions.Categorical(logits=self.logits).sample(shape)
            eps = torch.randn(shape + self.event_shape, dtype=self.loc.dtype, device=c.device)
            return self.loc[c] + self.scale[c] * eps
