"""A linear-Gaussian model whose log p(x), posterior and ELBO have closed forms, for exact tests.

.. math::

    p(z) = \\mathcal N(0, I_d), \\qquad p(x \\mid z) = \\mathcal N(Wz + b, s^2 I_D),

    \\log p(x) = \\log \\mathcal N(x;\\ b,\\ WW^\\top + s^2 I_D),

    p(z \\mid x) = \\mathcal N(A^* x + c^*, \\Sigma^*),\\quad
    \\Sigma^* = (I_d + W^\\top W / s^2)^{-1},\\quad A^* = \\Sigma^* W^\\top / s^2,\\quad
    c^* = -A^* b.

The exact posterior covariance is not diagonal for a general ``W``, so two guides are provided:
:class:`FullGuide` (``MultivariateNormal``; with :meth:`LinearGaussian.exact_guide` it *is* the
posterior, so every importance weight is the same number) and :class:`DiagGuide`
(``Normal(...).to_event(1)``, the mean-field family of a VAE encoder). The ELBO of either has the
closed form ``log p(x) - KL(q || p(z|x))`` (:meth:`LinearGaussian.elbo`).

Everything is float64 so exact comparisons hold to ~1e-10. Site names are ``"z"`` and ``"x"``,
inside ``pyro.plate("data", N)``; ``x`` has shape ``(N, D)``.

>>> lg = make_linear_gaussian(d=2, D=3)
>>> x = lg.sample(5)
>>> lg.log_px(x).shape, lg.elbo(lg.exact_guide(), x).shape
(torch.Size([5]), torch.Size([5]))
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro
import pyro.distributions as dist
import torch
from torch import Tensor

__all__ = [
    "DiagGuide",
    "FullGuide",
    "LinearGaussian",
    "gaussian_kl",
    "make_linear_gaussian",
]

DTYPE = torch.float64


@dataclass
class FullGuide:
    """q(z|x) = N(A x + c, L L^T), a full-covariance Gaussian guide (site ``"z"``).

    Args:
        A: mean map, shape ``(d, D)``.
        c: mean offset, shape ``(d,)``.
        scale_tril: lower Cholesky factor ``L`` of the covariance, shape ``(d, d)``.
    """

    A: Tensor
    c: Tensor
    scale_tril: Tensor

    def loc(self, x: Tensor) -> Tensor:
        """Mean of q(z|x), shape ``(N, d)``."""
        return x @ self.A.T + self.c

    def cov(self) -> Tensor:
        """Covariance of q(z|x), shape ``(d, d)`` (the same for every x)."""
        return self.scale_tril @ self.scale_tril.T

    def __call__(self, x: Tensor) -> Tensor:
        with pyro.plate("data", x.shape[0]):
            q = dist.MultivariateNormal(self.loc(x), scale_tril=self.scale_tril)
            return pyro.sample("z", q)


@dataclass
class DiagGuide:
    """q(z|x) = N(A x + c, diag(scale^2)), a mean-field Gaussian guide (site ``"z"``).

    Args:
        A: mean map, shape ``(d, D)``.
        c: mean offset, shape ``(d,)``.
        scale: standard deviations, shape ``(d,)``.
    """

    A: Tensor
    c: Tensor
    scale: Tensor

    def loc(self, x: Tensor) -> Tensor:
        """Mean of q(z|x), shape ``(N, d)``."""
        return x @ self.A.T + self.c

    def cov(self) -> Tensor:
        """Covariance of q(z|x), shape ``(d, d)``."""
        return torch.diag(self.scale**2)

    def __call__(self, x: Tensor) -> Tensor:
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", dist.Normal(self.loc(x), self.scale).to_event(1))


def gaussian_kl(m_q: Tensor, S_q: Tensor, m_p: Tensor, S_p: Tensor) -> Tensor:
    """KL(N(m_q, S_q) || N(m_p, S_p)) per row; means ``(N, d)``, covariances ``(d, d)``; ``(N,)``.

    .. math::

        \\tfrac12\\left[\\operatorname{tr}(S_p^{-1}S_q) + (m_p-m_q)^\\top S_p^{-1}(m_p-m_q) - d
        + \\log\\det S_p - \\log\\det S_q\\right]
    """
    d = S_q.shape[-1]
    S_p_inv = torch.linalg.inv(S_p)
    diff = m_p - m_q
    maha = torch.einsum("ni,ij,nj->n", diff, S_p_inv, diff)
    tr = torch.trace(S_p_inv @ S_q)
    logdet = torch.logdet(S_p) - torch.logdet(S_q)
    return 0.5 * (tr + maha - d + logdet)


@dataclass
class LinearGaussian:
    """p(z) = N(0, I_d), p(x|z) = N(W z + b, s^2 I_D) with closed-form answers.

    Args:
        W: loading matrix, shape ``(D, d)``.
        b: offset, shape ``(D,)``.
        s: observation noise standard deviation (a float or a 0-d tensor).
    """

    W: Tensor
    b: Tensor
    s: float | Tensor

    @property
    def d(self) -> int:
        return self.W.shape[1]

    @property
    def D(self) -> int:
        return self.W.shape[0]

    def model(self, x: Tensor) -> Tensor:
        """The Pyro model, sites ``"z"`` (``(N, d)``) and ``"x"`` (observed, ``(N, D)``)."""
        zeros = torch.zeros(self.d, dtype=x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(zeros, torch.ones_like(zeros)).to_event(1))
            pyro.sample("x", dist.Normal(z @ self.W.T + self.b, self.s).to_event(1), obs=x)
        return z

    def marginal(self) -> dist.MultivariateNormal:
        """p(x) = N(b, W W^T + s^2 I), event shape ``(D,)``."""
        cov = self.W @ self.W.T + self.s**2 * torch.eye(self.D, dtype=self.W.dtype)
        return dist.MultivariateNormal(self.b, covariance_matrix=cov)

    def log_px(self, x: Tensor) -> Tensor:
        """Exact log p(x) per data point; ``x`` ``(N, D)`` gives shape ``(N,)``."""
        return self.marginal().log_prob(x)

    def sample(self, n: int) -> Tensor:
        """``n`` draws of x from p(x), shape ``(n, D)``."""
        return self.marginal().sample((n,))

    def posterior(self) -> tuple[Tensor, Tensor, Tensor]:
        """The exact posterior p(z|x) = N(A x + c, cov) as ``(A (d, D), c (d,), cov (d, d))``."""
        eye = torch.eye(self.d, dtype=self.W.dtype)
        cov = torch.linalg.inv(eye + self.W.T @ self.W / self.s**2)
        A = cov @ self.W.T / self.s**2
        return A, -A @ self.b, cov

    def exact_guide(self) -> FullGuide:
        """The exact posterior as a :class:`FullGuide`."""
        A, c, cov = self.posterior()
        return FullGuide(A, c, torch.linalg.cholesky(cov))

    def perturbed_guide(self, noise: float = 0.3, seed: int = 1) -> DiagGuide:
        """A :class:`DiagGuide` near the posterior: its diagonal, mean map and scales jittered.

        Args:
            noise: relative size of the perturbation (0 gives the diagonal of the posterior).
            seed: seed of the perturbation's own generator (the global RNG is untouched).
        """
        g = torch.Generator().manual_seed(seed)
        A, c, cov = self.posterior()

        def jitter(t: Tensor) -> Tensor:
            return noise * torch.randn(t.shape, generator=g, dtype=t.dtype)

        scale = cov.diagonal().sqrt() * torch.exp(jitter(c))
        return DiagGuide(A + jitter(A), c + jitter(c), scale)

    def elbo(self, guide: FullGuide | DiagGuide, x: Tensor) -> Tensor:
        """Exact ELBO per data point, log p(x) - KL(q(z|x) || p(z|x)); shape ``(N,)``."""
        A, c, cov = self.posterior()
        kl = gaussian_kl(guide.loc(x), guide.cov(), x @ A.T + c, cov)
        return self.log_px(x) - kl


def make_linear_gaussian(
    d: int = 2, D: int = 3, s: float = 0.5, seed: int = 0, orthogonal: bool = False
) -> LinearGaussian:
    """A random :class:`LinearGaussian` in float64, drawn from its own generator.

    Args:
        d: latent dimensions.
        D: observed dimensions (``D >= d`` when ``orthogonal``).
        s: observation noise standard deviation.
        seed: seed of the generator.
        orthogonal: give ``W`` orthogonal columns (scaled), so the exact posterior covariance is
            diagonal and a :class:`DiagGuide` can be exact.
    """
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(D, d, generator=g, dtype=DTYPE)
    if orthogonal:
        q, _ = torch.linalg.qr(W)
        W = q * torch.linspace(0.5, 1.5, d, dtype=DTYPE)
    b = torch.randn(D, generator=g, dtype=DTYPE)
    return LinearGaussian(W, b, float(s))
