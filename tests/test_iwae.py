"""IWAE and DReG objectives: values against the estimator and closed forms, gradients compared."""

from __future__ import annotations

import math

import pyro
import pytest
import torch
from linear_gaussian import make_linear_gaussian

from ppl_vae import build_vae, kl_weight
from ppl_vae.evaluation.loglik import log_likelihood
from ppl_vae.objectives.iwae import IWAE, DReGIWAE


@pytest.mark.parametrize("cls", [IWAE, DReGIWAE])
def test_loss_is_minus_estimator_sum_on_same_draws(cls) -> None:
    lg = make_linear_gaussian()
    x = lg.sample(5)
    guide = lg.perturbed_guide(noise=0.1)
    pyro.set_rng_seed(3)
    loss = cls(num_particles=10).differentiable_loss(lg.model, guide, x)
    pyro.set_rng_seed(3)
    est = log_likelihood(lg.model, guide, x, num_samples=10)
    torch.testing.assert_close(loss, -est.sum(), atol=1e-10, rtol=0)
    pyro.set_rng_seed(3)
    assert math.isclose(cls(num_particles=10).loss(lg.model, guide, x), -est.sum().item())


@pytest.mark.parametrize("k", [1, 7])
def test_exact_guide_loss_is_minus_log_px(k: int) -> None:
    lg = make_linear_gaussian()
    x = lg.sample(4)
    for cls in (IWAE, DReGIWAE):
        loss = cls(num_particles=k).differentiable_loss(lg.model, lg.exact_guide(), x)
        torch.testing.assert_close(loss, -lg.log_px(x).sum(), atol=1e-10, rtol=0)


def _mean_grad(objective, lg, guide, x, params, calls: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean gradient per data point and its standard error, over ``calls`` batched calls."""
    grads = []
    for _ in range(calls):
        loss = objective.differentiable_loss(lg.model, guide, x)
        g = torch.autograd.grad(loss, params)
        grads.append(torch.cat([t.reshape(-1) for t in g]) / x.shape[0])
    grads = torch.stack(grads)
    return grads.mean(0), grads.std(0) / math.sqrt(calls)


def test_dreg_gradient_matches_iwae_in_expectation() -> None:
    lg = make_linear_gaussian()
    x = lg.sample(1).repeat(400, 1)  # 400 independent draws of one point's gradient per call
    guide = lg.perturbed_guide(noise=0.2)
    params = [guide.A, guide.c, guide.scale, lg.W, lg.b]
    for p in params:
        p.requires_grad_(True)
    m_iwae, se_iwae = _mean_grad(IWAE(num_particles=10), lg, guide, x, params, calls=30)
    m_dreg, se_dreg = _mean_grad(DReGIWAE(num_particles=10), lg, guide, x, params, calls=30)
    z = (m_iwae - m_dreg) / (se_iwae**2 + se_dreg**2).sqrt()
    assert z.abs().max() < 4.0, f"DReG and IWAE gradients differ by {z} standard errors"
    n_guide = guide.A.numel() + guide.c.numel() + guide.scale.numel()
    ratio = (se_dreg[:n_guide] / se_iwae[:n_guide]).median()
    assert ratio < 0.8, f"DReG should reduce the guide gradient's noise, ratio {ratio}"
    torch.testing.assert_close(se_dreg[n_guide:], se_iwae[n_guide:], rtol=0.5, atol=0)


def test_beta_vae_is_an_error_for_iwae() -> None:
    x = torch.bernoulli(torch.full((4, 6), 0.5))
    vae = build_vae(6, z_dim=2, hidden=(8,))
    model, guide = kl_weight(vae.model, 2.0), kl_weight(vae.guide, 2.0)
    with pytest.raises(ValueError, match="not a beta"):
        IWAE(num_particles=3).differentiable_loss(model, guide, x)


@pytest.mark.parametrize("cls", [IWAE, DReGIWAE])
def test_svi_trains_a_vae(cls) -> None:
    x = torch.bernoulli(torch.full((32, 12), 0.3))
    vae = build_vae(12, z_dim=2, hidden=(16,))
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-2}), cls(5))
    losses = [svi.step(x) for _ in range(30)]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-10:]) < sum(losses[:10]), "the IWAE loss should go down"
