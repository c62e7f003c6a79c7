"""log_likelihood and elbo against closed-form answers (linear-Gaussian, two sites, Bernoulli)."""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from linear_gaussian import LinearGaussian, make_linear_gaussian

from ppl_vae import build_vae, kl_weight
from ppl_vae.evaluation.loglik import LogLikelihood, elbo, log_likelihood


@pytest.fixture
def lg() -> LinearGaussian:
    return make_linear_gaussian(d=2, D=3, s=0.5)


def _data(lg: LinearGaussian, n: int = 5) -> torch.Tensor:
    return lg.marginal().sample((n,))


def _replicated(fn, x: torch.Tensor, reps: int, **kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean and standard error over ``reps`` independent estimates per point, each ``(N,)``."""
    est = fn(x.repeat(reps, 1), **kw).reshape(reps, -1)
    return est.mean(0), est.std(0) / math.sqrt(reps)


@pytest.mark.parametrize("k", [1, 2, 10, 100])
def test_exact_guide_gives_log_px_for_every_k(lg: LinearGaussian, k: int) -> None:
    x = _data(lg)
    exact = lg.log_px(x)
    est = log_likelihood(lg.model, lg.exact_guide(), x, num_samples=k)
    torch.testing.assert_close(est, exact, atol=1e-10, rtol=0, msg="IWAE_K != log p(x)")
    torch.testing.assert_close(elbo(lg.model, lg.exact_guide(), x), exact, atol=1e-10, rtol=0)


def test_bounds_are_ordered(lg: LinearGaussian) -> None:
    x = _data(lg, 4)
    guide = lg.perturbed_guide(noise=0.1)
    exact = lg.log_px(x)
    closed_elbo = lg.elbo(guide, x)
    gap = exact - closed_elbo
    assert (gap > 0.01).all(), f"the perturbed guide should be visibly off: {gap}"
    means, ses = [], []
    for k in (1, 10, 100):
        m, se = _replicated(
            lambda xx, k=k: log_likelihood(lg.model, guide, xx, num_samples=k), x, reps=300
        )
        means.append(m)
        ses.append(se)
    torch.testing.assert_close(means[0], closed_elbo, atol=4 * float(ses[0].max()), rtol=0)
    for lo, hi, se_lo, se_hi in zip(means, means[1:], ses, ses[1:], strict=False):
        assert (lo <= hi + 3 * (se_lo**2 + se_hi**2).sqrt()).all(), f"{lo} > {hi}"
    assert (means[-1] <= exact + 3 * ses[-1]).all(), f"IWAE_100 {means[-1]} > log p {exact}"
    closed = (means[-1] - means[0]).sum() / gap.sum()
    assert closed > 0.5, f"IWAE_100 should close most of the ELBO's gap, closes {closed}"


def _assert_within_stderr(res: LogLikelihood, exact: torch.Tensor, what: str) -> None:
    """The K=5000 estimate of sum_n log p(x_n) within 3 of its standard errors of the exact
    value; every point within 4 (with several points, 3 per point fails by chance too often)."""
    total = (res.log_px - exact).sum() / res.stderr.pow(2).sum().sqrt()
    assert total.abs() < 3, f"{what}: the sum is off by {total:.2f} standard errors (tol 3)"
    z = (res.log_px - exact) / res.stderr
    assert (z.abs() < 4).all(), f"{what}: points off by {z} standard errors (tol 4)"


def test_k5000_within_three_stderr(lg: LinearGaussian) -> None:
    x = _data(lg, 6)
    guide = lg.perturbed_guide(noise=0.05)
    res = log_likelihood(lg.model, guide, x, num_samples=5000, diagnostics=True)
    assert isinstance(res, LogLikelihood)
    _assert_within_stderr(res, lg.log_px(x), "one site")


def test_elbo_matches_closed_form(lg: LinearGaussian) -> None:
    x = _data(lg, 4)
    guide = lg.perturbed_guide(noise=0.05)
    est = elbo(lg.model, guide, x, num_samples=20000)
    torch.testing.assert_close(est, lg.elbo(guide, x), atol=0.05, rtol=0)


def test_chunked_equals_unchunked(lg: LinearGaussian) -> None:
    x = _data(lg, 7)
    exact = lg.log_px(x)
    for kw in ({}, {"chunk_size": 3}, {"batch_size": 2}, {"chunk_size": 7, "batch_size": 3}):
        est = log_likelihood(lg.model, lg.exact_guide(), x, num_samples=20, **kw)
        torch.testing.assert_close(est, exact, atol=1e-10, rtol=0, msg=f"chunking {kw}")
    guide = lg.perturbed_guide(noise=0.05)
    a = log_likelihood(guide=guide, model=lg.model, num_samples=3000, diagnostics=True, x=x)
    b = log_likelihood(
        lg.model, guide, x, num_samples=3000, chunk_size=700, batch_size=3, diagnostics=True
    )
    tol = 4 * (a.stderr**2 + b.stderr**2).sqrt()
    assert ((a.log_px - b.log_px).abs() < tol).all(), f"{a.log_px} vs {b.log_px}"
    # chunk boundaries in the streaming logsumexp lose nothing: same draws, same answer
    pyro.set_rng_seed(5)
    full = log_likelihood(lg.model, guide, x, num_samples=64, chunk_size=64)
    pyro.set_rng_seed(5)
    parts = log_likelihood(lg.model, guide, x, num_samples=64, chunk_size=64, diagnostics=True)
    torch.testing.assert_close(full, parts.log_px, atol=1e-12, rtol=0)


def test_diagnostics_shapes_and_pareto_k(lg: LinearGaussian) -> None:
    x = _data(lg, 5)
    good = log_likelihood(lg.model, lg.exact_guide(), x, num_samples=500, diagnostics=True)
    for field in ("log_px", "stderr", "ess", "pareto_k"):
        assert getattr(good, field).shape == (5,), field
    torch.testing.assert_close(good.ess, torch.full((5,), 500.0, dtype=x.dtype), atol=1e-6, rtol=0)
    assert (good.pareto_k < 0.5).all(), good.pareto_k
    near = log_likelihood(
        lg.model, lg.perturbed_guide(noise=0.01), x, num_samples=500, diagnostics=True
    )
    assert (near.pareto_k < 0.5).all(), near.pareto_k
    A, c, cov = lg.posterior()
    from linear_gaussian import DiagGuide

    terrible = DiagGuide(A, c + 1.0, 0.2 * cov.diagonal().sqrt())
    bad = log_likelihood(lg.model, terrible, x, num_samples=500, diagnostics=True)
    assert (bad.pareto_k > 0.7).float().mean() >= 0.8, bad.pareto_k
    summary = bad.summary()
    assert summary["share_k_above_0.7"] >= 0.8 and summary["num_samples"] == 500
    assert (bad.ess < 0.2 * 500).all(), bad.ess


def _two_site_model(C, t, W, b, s):
    def model(x):
        d1 = C.shape[1]
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.Normal(torch.zeros(d1, dtype=x.dtype), 1.0).to_event(1))
            z2 = pyro.sample("z2", dist.Normal(z1 @ C.T, t).to_event(1))
            pyro.sample("obs", dist.Normal(z2 @ W.T + b, s).to_event(1), obs=x)

    return model


def test_two_latent_sites_hierarchical_exact() -> None:
    """z1 -> z2 -> x with the exact hierarchical posterior q(z1|x) q(z2|z1,x) as the guide."""
    g = torch.Generator().manual_seed(3)
    d1, d2, D, t, s = 2, 3, 4, 0.7, 0.5
    C = torch.randn(d2, d1, generator=g, dtype=torch.float64)
    W = torch.randn(D, d2, generator=g, dtype=torch.float64)
    b = torch.randn(D, generator=g, dtype=torch.float64)
    prior_cov = torch.block_diag(torch.eye(d1), torch.zeros(d2, d2)).double()
    prior_cov[d1:, :d1], prior_cov[:d1, d1:] = C, C.T
    prior_cov[d1:, d1:] = C @ C.T + t**2 * torch.eye(d2, dtype=torch.float64)
    H = torch.cat([torch.zeros(D, d1, dtype=torch.float64), W], 1)
    post = torch.linalg.inv(torch.linalg.inv(prior_cov) + H.T @ H / s**2)
    gain = post @ H.T / s**2
    P11, P21, P22 = post[:d1, :d1], post[d1:, :d1], post[d1:, d1:]
    reg = P21 @ torch.linalg.inv(P11)

    def guide(x):
        m = (x - b) @ gain.T
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("z1", dist.MultivariateNormal(m[:, :d1], covariance_matrix=P11))
            loc2 = m[:, d1:] + (z1 - m[:, :d1]) @ reg.T
            pyro.sample("z2", dist.MultivariateNormal(loc2, covariance_matrix=P22 - reg @ P21.T))

    marg = dist.MultivariateNormal(b, H @ prior_cov @ H.T + s**2 * torch.eye(D).double())
    x = marg.sample((6,))
    model = _two_site_model(C, t, W, b, s)
    est = log_likelihood(model, guide, x, num_samples=50, chunk_size=20, batch_size=4)
    torch.testing.assert_close(est, marg.log_prob(x), atol=1e-9, rtol=0)


def test_two_independent_sites_perturbed() -> None:
    """x = W1 z1 + W2 z2 + b + noise, mean-field guide over two sites: K=5000 vs exact."""
    lg = make_linear_gaussian(d=3, D=4, s=0.6, seed=2)
    x = lg.sample(5)
    guide3 = lg.perturbed_guide(noise=0.05)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z1 = pyro.sample("a", dist.Normal(torch.zeros(2, dtype=x.dtype), 1.0).to_event(1))
            z2 = pyro.sample("b", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            loc = z1 @ lg.W[:, :2].T + z2.unsqueeze(-1) * lg.W[:, 2] + lg.b
            pyro.sample("x", dist.Normal(loc, lg.s).to_event(1), obs=x)

    def guide(x):
        loc = guide3.loc(x)
        with pyro.plate("data", x.shape[0]):
            pyro.sample("a", dist.Normal(loc[:, :2], guide3.scale[:2]).to_event(1))
            pyro.sample("b", dist.Normal(loc[:, 2], guide3.scale[2]))

    res = log_likelihood(model, guide, x, num_samples=5000, diagnostics=True)
    _assert_within_stderr(res, lg.log_px(x), "two sites")
    # the same guide written as one site gives the same ELBO in closed form
    torch.testing.assert_close(
        elbo(model, guide, x, num_samples=20000), lg.elbo(guide3, x), atol=0.05, rtol=0
    )


def test_bernoulli_likelihood_against_quadrature() -> None:
    """z ~ N(0, 1), x_d ~ Bernoulli(sigmoid(a_d z + c_d)); log p(x) by quadrature on a grid."""
    a = torch.tensor([2.0, -1.5, 0.5, 3.0], dtype=torch.float64)
    c = torch.tensor([0.1, 0.3, -0.4, 0.0], dtype=torch.float64)
    x = torch.tensor([[1, 0, 1, 1], [0, 1, 0, 0], [1, 1, 1, 0]], dtype=torch.float64)

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            logits = z.unsqueeze(-1) * a + c
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(0.5 * (x @ a.sign()) - 0.5, 1.0))

    z = torch.linspace(-10, 10, 20001, dtype=torch.float64)
    joint = dist.Normal(0.0, 1.0).log_prob(z)[:, None] + dist.Bernoulli(
        logits=z[:, None, None] * a + c
    ).log_prob(x).sum(-1)
    exact = torch.logsumexp(joint, 0) + math.log(float(z[1] - z[0]))
    res = log_likelihood(model, guide, x, num_samples=5000, diagnostics=True)
    zs = (res.log_px - exact) / res.stderr
    assert (zs.abs() < 3.5).all(), f"Bernoulli: off by {zs} standard errors"


def test_vae_and_scales_are_ignored() -> None:
    """build_vae works; a beta-VAE is scored as its plain VAE (scales ignored)."""
    x = torch.bernoulli(torch.full((6, 10), 0.4))
    vae = build_vae(10, z_dim=2, hidden=(8,))
    plain = log_likelihood(vae.model, vae.guide, x, num_samples=30, batch_size=4)
    assert plain.shape == (6,) and torch.isfinite(plain).all()
    pyro.set_rng_seed(1)
    scaled = log_likelihood(
        kl_weight(vae.model, 3.0), kl_weight(vae.guide, 3.0), x, num_samples=30
    )
    pyro.set_rng_seed(1)
    torch.testing.assert_close(scaled, log_likelihood(vae.model, vae.guide, x, num_samples=30))


def test_global_latent_is_a_clear_error() -> None:
    def model(x):
        mu = pyro.sample("mu", dist.Normal(0.0, 1.0))
        with pyro.plate("data", len(x)):
            pyro.sample("x", dist.Normal(mu, 1.0), obs=x)

    def guide(x):
        pyro.sample("mu", dist.Normal(0.0, 1.0))

    with pytest.raises(ValueError, match="'mu' is not inside pyro.plate"):
        log_likelihood(model, guide, torch.zeros(3), num_samples=4)


def test_progress_bar_runs(lg: LinearGaussian) -> None:
    x = _data(lg, 3)
    est = log_likelihood(lg.model, lg.exact_guide(), x, num_samples=4, progress=True)
    torch.testing.assert_close(est, lg.log_px(x), atol=1e-10, rtol=0)


def test_nan_log_density_names_the_points() -> None:
    """A NaN in the particle passes (validation is off there) is an error, not a silent NaN."""

    def model(x):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            # NaN for point 1 only in the vectorized passes (z is (K, N)), not in the probe
            loc = torch.where(x == 1.0, torch.nan, z) if z.dim() > 1 else z
            pyro.sample("x", dist.Normal(loc, 1.0), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros_like(x), 1.0))

    x = torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64)
    with pytest.raises(ValueError, match=r"NaN for 1 of 3 data points \(indices \[1\]\)"):
        log_likelihood(model, guide, x, num_samples=10)
    with pytest.raises(ValueError, match=r"the ELBO is NaN for 1 of 3"):
        elbo(model, guide, x, num_samples=10)


@pytest.mark.parametrize("k", [1, 10, 20])
def test_too_few_samples_for_psis_give_nan_pareto_k(lg: LinearGaussian, k: int) -> None:
    """arviz cannot fit a tail below 21 weights (and crashes at 1): k is NaN, not inf."""
    res = log_likelihood(
        lg.model, lg.perturbed_guide(0.3), _data(lg, 3), num_samples=k, diagnostics=True
    )
    assert torch.isnan(res.pareto_k).all(), res.pareto_k
    summary = res.summary()
    assert math.isnan(summary["pareto_k"]) and math.isnan(summary["share_k_above_0.7"])
    assert math.isfinite(summary["log_px"])
    at_21 = log_likelihood(
        lg.model, lg.perturbed_guide(0.3), _data(lg, 3), num_samples=21, diagnostics=True
    )
    assert torch.isfinite(at_21.pareto_k).all(), at_21.pareto_k


def _bernoulli_pair():
    def model(x, w=None):
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(torch.zeros((), dtype=x.dtype), 1.0))
            logits = z.unsqueeze(-1) + (0.0 if w is None else w.sum())
            logits = logits.expand(*z.shape, x.shape[-1])
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x, w=None):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(torch.zeros(x.shape[0], dtype=x.dtype), 1.0))

    return model, guide


def test_every_point_is_validated_though_the_particle_passes_are_not() -> None:
    """Point 300 is not binary: the blockwise probe (256 rows a block) must reach it."""
    model, guide = _bernoulli_pair()
    x = torch.bernoulli(torch.full((400, 3), 0.5))
    x[300, 1] = 0.5
    with pyro.validation_enabled(True), pytest.raises(ValueError, match="support"):
        log_likelihood(model, guide, x, num_samples=10)


def test_tensor_arguments_that_are_not_the_data_are_left_whole() -> None:
    """w (300 rows) is not split: slicing it does not shrink the data plate of 5 points."""
    model, guide = _bernoulli_pair()
    x = torch.bernoulli(torch.full((5, 3), 0.5))
    w = torch.full((300, 2), 0.001)
    est = log_likelihood(model, guide, x, w, num_samples=50)
    pyro.set_rng_seed(0)
    assert est.shape == (5,) and torch.isfinite(est).all()


@pytest.mark.parametrize("mismatch", ["missing", "extra"])
def test_a_guide_that_does_not_match_the_model_is_refused(mismatch) -> None:
    """Unchecked, a missing site is drawn from the prior on replay and an extra one enters
    log q only: the estimate was off by 1.2 to 2.4 nats without a word."""
    from ppl_vae import fit
    from ppl_vae.program import ProgramError

    lg = make_linear_gaussian(d=2, D=3)
    x = lg.sample(5)
    guide = lg.perturbed_guide(0.3)

    zeros = torch.zeros(len(x), dtype=x.dtype)

    def model(x):  # lg.model with one more latent site, "w"
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(torch.zeros_like(x[:, :2]), 1.0).to_event(1))
            pyro.sample("w", dist.Normal(zeros, 1.0))
            pyro.sample("x", dist.Normal(z @ lg.W.T + lg.b, lg.s).to_event(1), obs=x)

    def other_guide(x):  # the perturbed guide with one more site, "v"
        with pyro.plate("data", len(x)):
            pyro.sample("z", dist.Normal(guide.loc(x), guide.scale).to_event(1))
            pyro.sample("v", dist.Normal(zeros, 1.0))

    pair = (model, guide) if mismatch == "missing" else (lg.model, other_guide)
    text = "does not sample the model's latent site.*'w'" if mismatch == "missing" else "'v'"
    with pytest.raises(ProgramError, match=text):
        log_likelihood(*pair, x, num_samples=10)
    with pytest.raises(ProgramError, match=text):
        elbo(*pair, x)

    def with_param(fn):
        def wrapped(x):
            pyro.param("p", torch.zeros(1, dtype=x.dtype))
            return fn(x)

        return wrapped

    with pytest.raises(ProgramError, match=text):
        fit(with_param(pair[0]), with_param(pair[1]), x, epochs=1, progress=False)
