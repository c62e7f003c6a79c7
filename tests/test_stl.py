"""STLELBO against closed forms on a linear-Gaussian model whose posterior is diagonal."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import Tensor

from ppl_vae.objectives.stl import STLELBO

DTYPE = torch.float64
N, D, d, S = 5, 4, 2, 0.5


def _problem() -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """W with orthogonal columns (so p(z|x) is diagonal), b, data x, posterior loc and scale."""
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(D, d, generator=g, dtype=DTYPE))
    W = q * torch.tensor([0.7, 1.6], dtype=DTYPE)
    b = torch.randn(D, generator=g, dtype=DTYPE)
    x = torch.randn(N, D, generator=g, dtype=DTYPE)
    var = 1.0 / (1.0 + (W**2).sum(0) / S**2)  # (d,)
    loc = (x - b) @ W * var / S**2  # (N, d)
    return W, b, x, loc, var.sqrt().expand(N, d)


def _model(W: Tensor, x: Tensor) -> None:
    b = pyro.param("b", torch.zeros(D, dtype=DTYPE))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(torch.zeros(d, dtype=DTYPE), 1.0).to_event(1))
        pyro.sample("x", dist.Normal(z @ W.T + b, S).to_event(1), obs=x)


def _guide(W: Tensor, x: Tensor) -> None:
    loc = pyro.param("loc", torch.zeros(N, d, dtype=DTYPE))
    log_scale = pyro.param("log_scale", torch.zeros(N, d, dtype=DTYPE))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


def _set_params(b: Tensor, loc: Tensor, scale: Tensor) -> None:
    pyro.clear_param_store()
    pyro.param("b", b.clone())
    pyro.param("loc", loc.clone())
    pyro.param("log_scale", scale.log())


def _grads(elbo: pyro.infer.ELBO, W: Tensor, x: Tensor, seed: int) -> dict[str, Tensor]:
    pyro.set_rng_seed(seed)
    loss = elbo.differentiable_loss(_model, _guide, W, x)
    names = ("b", "loc", "log_scale")
    params = [pyro.param(n).unconstrained() for n in names]
    return dict(zip(names, torch.autograd.grad(loss, params), strict=True), loss=loss.detach())


@pytest.mark.parametrize("particles,vectorize", [(1, False), (3, False), (4, True)])
def test_loss_equals_trace_elbo_on_the_same_draws(particles: int, vectorize: bool) -> None:
    W, b, x, loc, scale = _problem()
    _set_params(b + 0.3, loc + 0.4, scale * 1.5)
    kw = dict(num_particles=particles, vectorize_particles=vectorize, max_plate_nesting=1)
    for seed in range(3):
        ours, ref = _grads(STLELBO(**kw), W, x, seed), _grads(Trace_ELBO(**kw), W, x, seed)
        torch.testing.assert_close(ours["loss"], ref["loss"], rtol=1e-12, atol=1e-12)
        # the model's gradient is untouched; the guide's differs (it drops the score term)
        torch.testing.assert_close(ours["b"], ref["b"], rtol=1e-10, atol=1e-10)
        assert not torch.allclose(ours["loc"], ref["loc"]), "STL changed nothing in the guide"
        pyro.set_rng_seed(seed)
        value = STLELBO(**kw).loss(_model, _guide, W, x)
        torch.testing.assert_close(value, ref["loss"].item(), rtol=1e-12, atol=1e-12)


def test_loss_and_grads_matches_differentiable_loss() -> None:
    W, b, x, loc, scale = _problem()
    _set_params(b, loc + 0.4, scale * 1.5)
    expected = _grads(STLELBO(num_particles=2), W, x, seed=5)
    pyro.set_rng_seed(5)
    loss = STLELBO(num_particles=2).loss_and_grads(_model, _guide, W, x)
    torch.testing.assert_close(loss, expected["loss"].item(), rtol=1e-12, atol=1e-12)
    for name in ("b", "loc", "log_scale"):
        grad = pyro.param(name).unconstrained().grad
        torch.testing.assert_close(grad, expected[name], rtol=1e-10, atol=1e-12)


def test_guide_gradient_has_zero_variance_at_the_exact_posterior() -> None:
    W, b, x, loc, scale = _problem()
    _set_params(b, loc, scale)
    stl = [_grads(STLELBO(), W, x, seed) for seed in range(8)]
    ref = [_grads(Trace_ELBO(), W, x, seed) for seed in range(8)]
    for name in ("loc", "log_scale"):
        for g in stl:
            torch.testing.assert_close(g[name], torch.zeros_like(g[name]), rtol=0, atol=1e-10)
        spread = torch.stack([g[name] for g in ref]).std(0)
        assert (spread > 0.05).all(), f"Trace_ELBO's {name} gradient should be noisy: {spread}"


def test_guide_gradient_is_unbiased_away_from_the_posterior() -> None:
    W, b, x, post_loc, post_scale = _problem()
    q_loc, q_scale = post_loc + 0.5, post_scale * 1.4
    _set_params(b, q_loc, q_scale)
    elbo = STLELBO(num_particles=20000, vectorize_particles=True, max_plate_nesting=1)
    g = _grads(elbo, W, x, seed=0)
    # -ELBO = KL(q || posterior) - log p(x): the closed-form gradient in (loc, log_scale)
    loc = q_loc.clone().requires_grad_()
    log_scale = q_scale.log().requires_grad_()
    kl = torch.distributions.kl_divergence(
        dist.Normal(loc, log_scale.exp()), dist.Normal(post_loc, post_scale)
    ).sum()
    want_loc, want_log_scale = torch.autograd.grad(kl, (loc, log_scale))
    torch.testing.assert_close(g["loc"], want_loc, rtol=0, atol=0.03)
    torch.testing.assert_close(g["log_scale"], want_log_scale, rtol=0, atol=0.03)
