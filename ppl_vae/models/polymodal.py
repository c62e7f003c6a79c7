"""The "polymodal" latent: every latent dimension selects one of N Gaussians, in q and in p.

The encoder emits, for each of the D latent dimensions, N means, N scales and N selection logits.
A one-hot choice per dimension picks one Gaussian; the prior is a per-dimension mixture of N
learnable Gaussians (:class:`~ppl_vae.priors.PolymodalPrior`).

How the bound is computed. The selection is *marginalized* in the guide's density, so ``z`` is
the only latent site and

.. math::

    q_\\phi(z \\mid x) = \\prod_{d=1}^{D} \\sum_{n=1}^{N} \\pi_{dn}(x)\\,
        \\mathcal{N}(z_d; \\mu_{dn}(x), \\sigma_{dn}(x)^2),
    \\qquad
    \\mathrm{ELBO}(x) = \\mathbb{E}_{q}[\\log p(z) + \\log p(x \\mid z) - \\log q(z \\mid x)].

Every draw is an *exact* sample of this mixture: the one-hot choice is Gumbel-max
``argmax(logits + g)``. The relaxation (Gumbel-softmax, Jang et al. 2017; Maddison et al.
2017) is used only for the gradient, as the straight-through estimator
``c = hard + soft - soft.detach()`` with ``soft = softmax((logits + g) / temperature)`` and a
temperature annealed over epochs. So every loss value the trainer reports is an unbiased
estimate of a true lower bound on log p(x) (the relaxation biases the gradient of the
selection logits, not the bound), and the importance-sampling estimator ``log_likelihood``
needs nothing special: z ~ q exactly and q(z|x) is the exact density, so
``mean_k p(x, z_k) / q(z_k|x)`` is unbiased for p(x).
In ``eval()`` mode the choice is hard in the backward pass too.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro.distributions.torch_distribution import TorchDistribution
from torch import Tensor, nn
from torch.distributions import constraints

from ppl_vae.models.likelihoods import Decoder, make_likelihood
from ppl_vae.models.nets import MLP
from ppl_vae.models.vae import VAE
from ppl_vae.priors.polymodal import PolymodalPrior

__all__ = ["PolymodalEncoder", "PolymodalPosterior", "PolymodalVAE", "build_polymodal_vae"]


class PolymodalPosterior(TorchDistribution):
    """Independent per-dimension Gaussian mixtures, sampled through a one-hot selection.

    .. math::

        q(z) = \\prod_d \\sum_n \\operatorname{softmax}(\\ell_d)_n\\,
            \\mathcal{N}(z_d; \\mu_{dn}, \\sigma_{dn}^2)

    ``rsample`` draws ``c_d = onehot(argmax(l_d + g_d))`` (Gumbel-max: exact) and
    ``z_d = sum_n c_dn (mu_dn + sigma_dn eps_dn)``; with ``relaxed=True`` the gradient of
    ``c`` is that of ``softmax((l + g) / temperature)`` (straight-through Gumbel-softmax).
    ``log_prob`` is the exact mixture density (log-sum-exp over the N modes).

    Args:
        logits: selection logits, shape ``batch + (D, N)``.
        loc: means, shape ``batch + (D, N)``.
        scale: standard deviations, shape ``batch + (D, N)``.
        temperature: Gumbel-softmax temperature of the straight-through gradient.
        relaxed: use the relaxed gradient for the selection (training); otherwise the choice
            passes no gradient to the logits.

    Batch shape ``batch``, event shape ``(D,)``.

    >>> q = PolymodalPosterior(torch.zeros(5, 3, 2), torch.zeros(5, 3, 2), torch.ones(5, 3, 2))
    >>> q.rsample((4,)).shape, q.log_prob(torch.zeros(5, 3)).shape
    (torch.Size([4, 5, 3]), torch.Size([5]))
    """

    arg_constraints = {
        "logits": constraints.real,
        "loc": constraints.real,
        "scale": constraints.positive,
    }
    support = constraints.real_vector
    has_rsample = True

    def __init__(
        self,
        logits: Tensor,
        loc: Tensor,
        scale: Tensor,
        temperature: float | Tensor = 1.0,
        relaxed: bool = True,
        validate_args: bool | None = None,
    ) -> None:
        logits, loc, scale = torch.broadcast_tensors(logits, loc, scale)
        self.logits = logits - logits.logsumexp(-1, keepdim=True)
        self.loc, self.scale = loc, scale
        self.temperature, self.relaxed = temperature, relaxed
        super().__init__(loc.shape[:-2], loc.shape[-2:-1], validate_args=validate_args)

    def expand(self, batch_shape, _instance=None) -> PolymodalPosterior:  # noqa: ANN001
        shape = torch.Size(batch_shape) + self.loc.shape[-2:]
        return PolymodalPosterior(
            self.logits.expand(shape),
            self.loc.expand(shape),
            self.scale.expand(shape),
            self.temperature,
            self.relaxed,
            validate_args=False,
        )

    @property
    def mean(self) -> Tensor:
        return (self.logits.exp() * self.loc).sum(-1)

    @property
    def variance(self) -> Tensor:
        w = self.logits.exp()
        second = (w * (self.scale**2 + self.loc**2)).sum(-1)
        return second - self.mean**2

    def rsample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        shape = self._extended_shape(sample_shape) + self.loc.shape[-1:]  # (..., D, N)
        u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device)
        gumbel = -torch.log(-torch.log(u.clamp_min(torch.finfo(u.dtype).tiny)))
        noisy = self.logits + gumbel
        hard = F.one_hot(noisy.argmax(-1), noisy.shape[-1]).to(noisy.dtype)
        if self.relaxed:
            soft = torch.softmax(noisy / self.temperature, dim=-1)
            hard = hard + soft - soft.detach()
        eps = torch.randn(shape, dtype=self.loc.dtype, device=self.loc.device)
        return (hard * (self.loc + self.scale * eps)).sum(-1)

    def sample(self, sample_shape: torch.Size = torch.Size()) -> Tensor:  # noqa: B008
        with torch.no_grad():
            return self.rsample(sample_shape)

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        comp = dist.Normal(self.loc, self.scale).log_prob(value.unsqueeze(-1))  # (..., D, N)
        return (self.logits + comp).logsumexp(-1).sum(-1)


class PolymodalEncoder(nn.Module):
    """q(z|x): an MLP emitting N means, N log-variances and N selection logits per dimension.

    The output layer's mean biases start evenly spaced on [-2, 2] (the prior's initial modes), so
    the modes start distinct. ``temperature`` is a buffer, so it is checkpointed and resumed.

    Args:
        x_dim: number of features of one data point.
        z_dim: number of latent dimensions D.
        hidden: hidden widths of the MLP.
        activation: hidden nonlinearity.
        modes: number of Gaussians N per dimension.

    Shapes:
        ``forward(x)``: ``x`` of shape ``(..., x_dim)`` gives a :class:`PolymodalPosterior` with
        batch shape ``(...)`` and event shape ``(z_dim,)``.
    """

    def __init__(
        self,
        x_dim: int,
        z_dim: int,
        hidden: Sequence[int] = (300, 300),
        activation: str = "softplus",
        modes: int = 3,
    ) -> None:
        super().__init__()
        self.x_dim, self.z_dim, self.modes = x_dim, z_dim, modes
        self.net = MLP(x_dim, hidden, 3 * z_dim * modes, activation)
        self.register_buffer("temperature", torch.tensor(1.0))
        if modes > 1:
            with torch.no_grad():
                bias = self.net[-1].bias.view(3, z_dim, modes)
                bias[1] += torch.linspace(-2.0, 2.0, modes)

    def forward(self, x: Tensor) -> PolymodalPosterior:
        h = self.net(x).unflatten(-1, (3, self.z_dim, self.modes))  # (..., 3, D, N)
        logits, loc, log_var = h.unbind(-3)
        return PolymodalPosterior(
            logits,
            loc,
            torch.exp(0.5 * log_var),
            temperature=self.temperature,
            relaxed=self.training,
        )


class PolymodalVAE(VAE):
    """A :class:`~ppl_vae.models.VAE` with the polymodal guide and prior.

    ``model`` and ``guide`` are the base class's (sites ``"z"`` and ``"x"`` in
    ``pyro.plate("data")``); only the encoder's distribution differs. The Gumbel-softmax
    temperature of the selection's gradient is annealed geometrically over training:

    .. math::

        \\tau_e = \\tau_0 (\\tau_1 / \\tau_0)^{e / (E - 1)}, \\qquad e = 0, \\dots, E - 1.

    Args:
        encoder: a :class:`PolymodalEncoder`.
        decoder: the decoder p(x|z).
        prior: the prior; a :class:`~ppl_vae.priors.PolymodalPrior` in :func:`build_polymodal_vae`.
        temperatures: ``(tau_0, tau_1)``, the first and the last epoch's temperatures.
    """

    def __init__(
        self,
        encoder: PolymodalEncoder,
        decoder: nn.Module,
        prior: nn.Module | None = None,
        temperatures: tuple[float, float] = (1.0, 0.5),
        name: str = "vae",
    ) -> None:
        super().__init__(encoder, decoder, prior, name=name)
        if min(temperatures) <= 0:
            raise ValueError(f"temperatures must be positive, got {temperatures}")
        self.temperatures = (float(temperatures[0]), float(temperatures[1]))
        self.encoder.temperature.fill_(self.temperatures[0])

    def on_epoch_start(self, epoch: int, num_epochs: int) -> None:
        """Set the temperature for ``epoch`` (counted from 0) of ``num_epochs``."""
        t0, t1 = self.temperatures
        frac = min(1.0, max(0.0, epoch / max(1, num_epochs - 1)))
        self.encoder.temperature.fill_(t0 * math.exp(frac * math.log(t1 / t0)))


def build_polymodal_vae(
    x_dim: int,
    z_dim: int = 50,
    hidden: Sequence[int] = (300, 300),
    activation: str = "softplus",
    likelihood: str = "bernoulli",
    modes: int = 3,
    gaussian_scale: float = 1.0,
    learn_scale: bool = False,
    temperatures: tuple[float, float] = (1.0, 0.5),
    name: str = "vae",
    **unused: object,
) -> PolymodalVAE:
    """Build an MLP VAE whose guide and prior are polymodal with ``modes`` Gaussians a dimension.

    Options meant for other priors (``components``, ``flow_layers``...) are ignored.

    >>> vae = build_polymodal_vae(x_dim=4, z_dim=2, hidden=(8,), modes=3)
    >>> x = torch.bernoulli(torch.full((3, 4), 0.5))
    >>> import pyro
    >>> pyro.infer.Trace_ELBO().differentiable_loss(vae.model, vae.guide, x).shape
    torch.Size([])
    """
    modes = int(modes) if modes is not None else 3
    encoder = PolymodalEncoder(x_dim, z_dim, hidden, activation, modes)
    head = make_likelihood(likelihood, x_dim, gaussian_scale, learn_scale)
    decoder = Decoder(z_dim, x_dim, hidden, activation, head)
    prior = PolymodalPrior(z_dim, modes)
    return PolymodalVAE(encoder, decoder, prior, temperatures=temperatures, name=name)
