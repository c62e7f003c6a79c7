"""The polymodal latent: exact sampling, exact density, and a bound that is exact at the posterior.

With a polymodal prior, a linear-Gaussian likelihood and W with orthogonal columns, the exact
posterior factorizes over dimensions into per-dimension Gaussian mixtures, i.e. it *is* a
:class:`PolymodalPosterior`. With it as the guide every importance weight equals p(x).
"""

from __future__ import annotations

import io
import itertools
import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor, nn

from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.models.polymodal import PolymodalPosterior, PolymodalVAE, build_polymodal_vae
from ppl_vae.models.vae import VAE
from ppl_vae.priors.polymodal import PolymodalPrior

DTYPE = torch.float64
D_Z, D_X, MODES, S = 2, 4, 3, 0.6


class _LinearDecoder(nn.Module):
    def __init__(self, W: Tensor, b: Tensor) -> None:
        super().__init__()
        self.register_buffer("W", W)
        self.register_buffer("b", b)
        self.x_dim, self.z_dim = W.shape

    def forward(self, z: Tensor) -> dist.Distribution:
        return dist.Normal(z @ self.W.T + self.b, S).to_event(1)


class _ExactPosterior(nn.Module):
    """p(z|x) for the polymodal prior and the linear decoder, per dimension in closed form."""

    def __init__(self, prior: PolymodalPrior, W: Tensor, b: Tensor, shift: float = 0.0) -> None:
        super().__init__()
        self.prior, self.W, self.b, self.shift = prior, W, b, shift
        self.x_dim, self.z_dim = W.shape

    def forward(self, x: Tensor) -> PolymodalPosterior:
        norm2 = (self.W**2).sum(0)  # (d,)
        a = norm2 / S**2  # precision of the likelihood in z_d
        m = (x - self.b) @ self.W / norm2  # (..., d)
        mu, var = self.prior.loc, self.prior.log_scale.exp() ** 2  # (d, N)
        post_var = 1.0 / (1.0 / var + a[:, None])
        post_loc = post_var * (mu / var + (a * m)[..., None])  # (..., d, N)
        logits = torch.log_softmax(self.prior.logits, -1) + dist.Normal(
            mu, (var + 1.0 / a[:, None]).sqrt()
        ).log_prob(m[..., None])
        return PolymodalPosterior(
            logits + self.shift * torch.arange(MODES, dtype=DTYPE),
            post_loc,
            post_var.sqrt().expand_as(post_loc),
            relaxed=self.training,
        )


def _problem(shift: float = 0.0) -> tuple[VAE, Tensor, Tensor]:
    """The VAE whose guide is the exact posterior (or its logits shifted), data x, log p(x)."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D_X, D_Z, generator=g, dtype=DTYPE))
    W = q * torch.tensor([0.8, 1.5], dtype=DTYPE)
    b = torch.randn(D_X, generator=g, dtype=DTYPE)
    prior = PolymodalPrior(D_Z, MODES).double()
    with torch.no_grad():
        prior.loc.copy_(torch.tensor([[-3.0, 0.0, 2.5], [-1.5, 1.0, 4.0]], dtype=DTYPE))
        prior.logits.copy_(torch.tensor([[0.3, -0.5, 0.0], [0.0, 0.7, -0.2]], dtype=DTYPE))
        prior.log_scale.copy_(torch.log(torch.tensor([[0.5, 0.8, 0.3], [0.4, 0.6, 0.9]])))
    vae = VAE(_ExactPosterior(prior, W, b, shift), _LinearDecoder(W, b), prior)
    x = torch.randn(6, D_X, generator=g, dtype=DTYPE) * 2
    # exact log p(x): a mixture over the MODES**D_Z mode combinations
    w = torch.log_softmax(prior.logits, -1).detach()
    mu, sd = prior.loc.detach(), prior.log_scale.exp().detach()
    terms = []
    for combo in itertools.product(range(MODES), repeat=D_Z):
        idx = torch.arange(D_Z)
        cov = W @ torch.diag(sd[idx, combo] ** 2) @ W.T + S**2 * torch.eye(D_X, dtype=DTYPE)
        px = dist.MultivariateNormal(W @ mu[idx, combo] + b, covariance_matrix=cov)
        terms.append(w[idx, combo].sum() + px.log_prob(x))
    return vae, x, torch.logsumexp(torch.stack(terms), 0)


def test_bound_and_estimator_are_exact_when_the_guide_is_the_posterior() -> None:
    vae, x, log_px = _problem()
    vae.eval()
    est = log_likelihood(vae.model, vae.guide, x, num_samples=64)
    torch.testing.assert_close(est, log_px, rtol=0, atol=1e-8)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = Trace_ELBO().loss(vae.model, vae.guide, x)
        torch.testing.assert_close(loss, -log_px.sum().item(), rtol=0, atol=1e-8)


def test_bound_is_below_log_px_for_a_wrong_guide() -> None:
    vae, x, log_px = _problem(shift=1.5)
    vae.eval()
    res = log_likelihood(vae.model, vae.guide, x, num_samples=5000, diagnostics=True)
    assert ((res.log_px - log_px).abs() < 5 * res.stderr + 1e-3).all(), (res.log_px, log_px)
    elbo = -Trace_ELBO(num_particles=2000, vectorize_particles=True, max_plate_nesting=1).loss(
        vae.model, vae.guide, x
    )
    assert elbo < log_px.sum().item() - 0.1, (elbo, log_px.sum())


def test_samples_follow_the_mixture_density() -> None:
    logits = torch.tensor([[0.5, -1.0, 0.0], [0.0, 0.0, 1.0]])
    loc = torch.tensor([[-2.0, 0.0, 3.0], [-1.0, 0.5, 1.0]])
    scale = torch.tensor([[0.5, 1.0, 0.3], [0.2, 0.2, 0.7]])
    for relaxed in (True, False):
        q = PolymodalPosterior(logits, loc, scale, temperature=0.3, relaxed=relaxed)
        z = q.sample((40000,))  # (n, D)
        w = torch.softmax(logits, -1)
        for t in (-2.0, -0.5, 0.0, 1.0, 3.0):
            cdf = (w * dist.Normal(loc, scale).cdf(torch.tensor(t))).sum(-1)  # (D,)
            emp = (z <= t).double().mean(0).float()
            torch.testing.assert_close(emp, cdf, rtol=0, atol=0.012, msg=f"t={t}")
        expected = torch.log_softmax(logits, -1) + dist.Normal(loc, scale).log_prob(z[..., None])
        torch.testing.assert_close(
            q.log_prob(z), expected.logsumexp(-1).sum(-1), rtol=1e-5, atol=1e-5
        )
    torch.testing.assert_close(q.mean, (w * loc).sum(-1))


def test_relaxed_selection_passes_gradients_only_when_training() -> None:
    logits = torch.randn(5, 2, 3, requires_grad=True)
    loc = torch.randn(5, 2, 3, requires_grad=True)
    scale = torch.rand(5, 2, 3).add(0.5).requires_grad_()
    for relaxed in (True, False):
        q = PolymodalPosterior(logits, loc, scale, temperature=0.5, relaxed=relaxed)
        z = q.rsample((4,))
        assert z.shape == (4, 5, 2) and q.batch_shape == (5,) and q.event_shape == (2,)
        g_logits, g_loc = torch.autograd.grad(z.pow(2).sum(), (logits, loc), allow_unused=True)
        assert g_loc is not None and g_loc.abs().sum() > 0
        if relaxed:
            assert g_logits is not None and g_logits.abs().sum() > 0
        else:
            assert g_logits is None or g_logits.abs().sum() == 0
    expanded = q.expand((3, 5))
    assert expanded.rsample().shape == (3, 5, 2)
    assert expanded.log_prob(torch.zeros(3, 5, 2)).shape == (3, 5)


def test_polymodal_vae_trains_anneals_and_round_trips() -> None:
    vae = build_polymodal_vae(x_dim=6, z_dim=3, hidden=(16,), modes=4, components=7)
    assert isinstance(vae, PolymodalVAE) and isinstance(vae.prior, PolymodalPrior)
    x = torch.bernoulli(torch.full((20, 6), 0.3))
    for epoch, want in [(0, 1.0), (2, math.sqrt(0.5)), (4, 0.5)]:
        vae.on_epoch_start(epoch, 5)
        torch.testing.assert_close(vae.encoder.temperature.item(), want, rtol=1e-6, atol=0)
    elbo = Trace_ELBO(num_particles=3, vectorize_particles=True, max_plate_nesting=1)
    opt = torch.optim.Adam(vae.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = elbo.differentiable_loss(vae.model, vae.guide, x)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-5:]) < sum(losses[:5]), losses
    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    buffer.seek(0)
    twin = build_polymodal_vae(x_dim=6, z_dim=3, hidden=(16,), modes=4)
    twin.load_state_dict(torch.load(buffer))
    assert twin.encoder.temperature.item() == pytest.approx(0.5)
    vae.eval()
    twin.eval()
    z = torch.randn(5, 3)
    torch.testing.assert_close(
        twin.encoder(x).log_prob(z[:, None]), vae.encoder(x).log_prob(z[:, None])
    )
    torch.testing.assert_close(twin.prior().log_prob(z), vae.prior().log_prob(z))
    est = log_likelihood(vae.model, vae.guide, x, num_samples=100)
    assert est.shape == (20,) and torch.isfinite(est).all()
