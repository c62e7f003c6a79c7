"""The flow guide: its density is exact (against the Jacobian, a grid and importance sampling),
and it trains and is scored through every objective, prior and estimator."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch

from ppl_vae import build_vae, elbo, fit, log_likelihood
from ppl_vae.models.guides import FlowEncoder, FlowPosterior
from ppl_vae.objectives.factory import OBJECTIVES

DTYPE = torch.float64


def _random_flow(x_dim: int, z_dim: int, layers: int = 2, seed: int = 0) -> FlowEncoder:
    """A flow guide whose steps are far from the identity (they start as it)."""
    torch.manual_seed(seed)
    enc = FlowEncoder(x_dim, z_dim, (8,), layers=layers).to(DTYPE)
    with torch.no_grad():
        for step in enc.steps:
            last = step.nn.layers[-1]
            last.weight.normal_(0.0, 0.4)
            last.bias.normal_(0.0, 0.2)
    return enc


def test_flow_steps_start_as_the_identity() -> None:
    enc = FlowEncoder(5, 3, (8,), layers=3).to(DTYPE)
    x = torch.randn(4, 5, dtype=DTYPE)
    q, base = enc(x), enc.gaussian(x)
    z = q.rsample()
    torch.testing.assert_close(q.log_prob(z), base.log_prob(z), rtol=0, atol=1e-10)
    torch.testing.assert_close(q.mean, base.mean, rtol=0, atol=1e-12)


def test_log_q_against_the_jacobian_of_the_flow() -> None:
    enc = _random_flow(4, 3)
    x = torch.randn(5, 4, dtype=DTYPE)
    q = enc(x)
    z = q.rsample()
    cached = q.log_prob(z)  # each step's own draw: the cached, one-pass path
    inverted = q.log_prob(z.clone())  # a tensor the steps did not produce: inverted
    flow = dist.transforms.ComposeTransform(q.transforms)
    z0 = flow.inv(z.clone())
    torch.testing.assert_close(flow(z0), z, rtol=0, atol=1e-9, msg="the inverse is not exact")
    for i in range(len(x)):
        steps = enc(x[i : i + 1]).transforms  # the same network, conditioned on row i alone
        one = dist.transforms.ComposeTransform(steps)
        jac = torch.autograd.functional.jacobian(lambda v, f=one: f(v.unsqueeze(0))[0], z0[i])
        assert torch.count_nonzero(jac.triu(1)) >= 1 or torch.count_nonzero(jac.tril(-1)) >= 1
        log_q = enc.gaussian(x[i]).log_prob(z0[i]) - torch.linalg.slogdet(jac)[1]
        for name, value in (("cached", cached[i]), ("inverted", inverted[i])):
            msg = f"{name} log q, row {i}"
            torch.testing.assert_close(value, log_q, rtol=0, atol=1e-8, msg=msg)


def test_flow_density_integrates_to_one_and_matches_its_samples() -> None:
    enc = _random_flow(3, 2, layers=3, seed=1)
    x = torch.randn(1, 3, dtype=DTYPE)
    t = torch.linspace(-9, 9, 361, dtype=DTYPE)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 1, 2)
    cell = float((t[1] - t[0]) ** 2)
    with torch.no_grad():
        q = enc(x)
        density = q.log_prob(zz).exp()[:, 0]  # (G,)
        mass = float(density.sum() * cell)
        assert abs(mass - 1.0) < 5e-3, f"the flow guide's density integrates to {mass}"
        # the sampler draws from the density it scores: the mass of a half-plane
        n = 40000
        s = q.sample((n,))[:, 0]  # (n, 2)
        share = float((s[:, 0] > s[:, 1]).double().mean())
        grid = float(density[(zz[:, 0, 0] > zz[:, 0, 1])].sum() * cell)
        se = math.sqrt(grid * (1 - grid) / n)
        assert abs(share - grid) < 5 * se, (share, grid, se)


def test_flow_density_has_unit_mass_in_five_dimensions() -> None:
    """E_r[q(z) / r(z)] = 1 with z drawn from a wide Normal r: a log q wrong by a constant or
    by a z-dependent error shows up as a mass away from 1, in any dimension."""
    enc = _random_flow(6, 5, layers=2, seed=2)
    x = torch.randn(3, 6, dtype=DTYPE)
    with torch.no_grad():
        q = enc(x)
        r = dist.Normal(torch.zeros(5, dtype=DTYPE), 3.0).to_event(1)
        z = r.sample((200000, 3))  # (S, 3, 5)
        w = (q.log_prob(z) - r.log_prob(z)).exp()  # (S, 3)
        mean, se = w.mean(0), w.std(0) / math.sqrt(len(w))
    assert ((mean - 1).abs() < 5 * se).all() and (se < 0.05).all(), (mean, se)


def test_mean_does_not_disturb_the_cached_draw() -> None:
    enc = _random_flow(4, 3)
    x = torch.randn(5, 4, dtype=DTYPE)
    q = enc(x)
    z = q.rsample()
    before = q.log_prob(z.clone())
    _ = q.mean
    torch.testing.assert_close(q.log_prob(z), before, rtol=0, atol=1e-9)


@pytest.mark.parametrize("objective", [o for o in OBJECTIVES if o != "mean-field"])
def test_flow_guide_trains_with_every_objective(objective: str) -> None:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((40, 12), 0.3))
    vae = build_vae(x_dim=12, z_dim=3, hidden=(16,), guide="flow", guide_flow_layers=2)
    before = [p.detach().clone() for p in vae.encoder.steps.parameters()]
    particles = 3 if objective.startswith("iwae") else 1
    result = fit(
        vae, x, epochs=2, batch_size=20, objective=objective, particles=particles, progress=False
    )
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    after = list(vae.encoder.steps.parameters())
    moved = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert any(moved), f"{objective}: the IAF steps did not train"


def test_mean_field_is_refused_for_the_flow_guide_with_the_reason() -> None:
    x = torch.bernoulli(torch.full((20, 6), 0.3))
    vae = build_vae(x_dim=6, z_dim=2, hidden=(8,), guide="flow")
    with pytest.raises(ValueError, match="FlowPosterior"):
        fit(vae, x, epochs=1, objective="mean-field")


@pytest.mark.parametrize("prior", ["normal", "mixture", "vamp", "flow"])
def test_flow_guide_with_every_prior_gives_finite_estimates(prior: str) -> None:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((10, 8), 0.4))
    vae = build_vae(x_dim=8, z_dim=2, hidden=(8,), guide="flow", prior=prior, pseudo_inputs=4)
    fit(vae, x, epochs=1, batch_size=5, progress=False)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=200, diagnostics=True)
    bound = elbo(vae.model, vae.guide, x, num_samples=200)
    assert torch.isfinite(est.log_px).all() and torch.isfinite(bound).all()
    assert est.log_px.mean() > bound.mean(), f"{prior}: log p(x) {est.log_px} < ELBO {bound}"


def test_vamp_prior_on_a_flow_guide_mixes_its_base_gaussians() -> None:
    vae = build_vae(x_dim=6, z_dim=2, hidden=(8,), guide="flow", prior="vamp", pseudo_inputs=4)
    p = vae.prior()
    base = vae.encoder.gaussian(vae.prior.u)
    torch.testing.assert_close(p.loc, base.mean, rtol=0, atol=0)
    torch.testing.assert_close(p.scale, base.stddev, rtol=0, atol=0)


def test_flow_posterior_keeps_its_class_when_expanded_in_a_particle_plate() -> None:
    enc = _random_flow(4, 3)
    q = enc(torch.randn(5, 4, dtype=DTYPE)).expand((7, 5))
    assert isinstance(q, FlowPosterior)
    z = q.rsample()
    assert z.shape == (7, 5, 3) and q.mean.shape == (7, 5, 3)
    torch.testing.assert_close(q.log_prob(z), q.log_prob(z.clone()), rtol=0, atol=1e-8)


def test_flow_guide_rejects_no_steps_and_the_polymodal_latent() -> None:
    with pytest.raises(ValueError, match="at least one step"):
        FlowEncoder(4, 2, layers=0)
    with pytest.raises(ValueError, match="polymodal"):
        build_vae(x_dim=4, z_dim=2, guide="flow", prior="polymodal")
    with pytest.raises(ValueError, match="unknown guide"):
        build_vae(x_dim=4, z_dim=2, guide="iaf")
    pyro.clear_param_store()
