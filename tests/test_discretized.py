"""Discretized logistic-mixture and Gaussian likelihoods on 8-bit levels, and bits per dimension:
masses that sum to 1, log-probabilities against a brute-force CDF difference in mpmath, draws
on the levels, heads and decoders, and a short training run."""

from __future__ import annotations

import math

import mpmath
import pyro
import pyro.distributions as dist
import pytest
import torch
from scipy import stats

from ppl_vae import build_vae, fit
from ppl_vae.evaluation import bits_per_dim
from ppl_vae.models.discretized import (
    DiscretizedGaussian,
    DiscretizedGaussianLikelihood,
    DiscretizedLogistic,
    DiscretizedLogisticLikelihood,
    _log_ndtr,
)
from ppl_vae.models.likelihoods import (
    LIKELIHOODS,
    BernoulliLikelihood,
    ContinuousBernoulliLikelihood,
    Decoder,
    GaussianLikelihood,
    make_likelihood,
)
from ppl_vae.models.nets import MLP
from ppl_vae.program import observation_levels

LEVELS = torch.arange(256, dtype=torch.float64) / 255
SUM_TOL = {torch.float32: 1e-5, torch.float64: 1e-10}


def _random_parameters(n: int, m: int, dtype: torch.dtype, seed: int = 0) -> tuple:
    """``n`` sets of M components: means over [-0.5, 1.5] with the edges 0 and 1 exactly, log
    scales over [-14, 6] with tiny (-25) and huge (+12) ones, random mixture logits."""
    g = torch.Generator().manual_seed(seed)
    loc = torch.rand(n, m, generator=g, dtype=torch.float64) * 2 - 0.5
    log_scale = torch.rand(n, m, generator=g, dtype=torch.float64) * 20 - 14
    loc[:8], log_scale[:8] = torch.tensor([0.0, 1.0]).repeat(4)[:, None], -25.0
    loc[8:12], log_scale[8:12] = torch.tensor([0.0, 1.0, 0.3, 128 / 255])[:, None], 12.0
    loc[12:16] = torch.tensor([0.0, 1.0, 0.5, 76.5 / 255])[:, None]  # 76.5: on a bin's edge
    log_scale[12:16] = -7.0
    logits = torch.randn(n, m, generator=g, dtype=torch.float64) * 3
    return loc.to(dtype), log_scale.to(dtype), logits.to(dtype)


def _make(kind: str, loc: torch.Tensor, log_scale: torch.Tensor, logits: torch.Tensor):
    if kind == "gaussian":
        return DiscretizedGaussian(loc[..., 0], log_scale[..., 0])
    return DiscretizedLogistic(loc, log_scale, logits)


def _masses(d: dist.Distribution) -> torch.Tensor:
    """P(X = k/255) for every level, shape ``(256,) + batch_shape``."""
    return d.log_prob(d.enumerate_support()).exp()


KINDS = [("gaussian", 1), ("logistic", 1), ("logistic", 4)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("kind, m", KINDS, ids=["gaussian", "logistic", "mixture4"])
def test_the_masses_over_the_256_levels_sum_to_one(kind, m, dtype):
    d = _make(kind, *_random_parameters(400, m, dtype))
    lp = d.log_prob(d.enumerate_support())
    assert lp.shape == (256, 400) and lp.dtype == dtype
    assert torch.isfinite(lp).all(), "a log-mass is not finite"
    assert (lp <= 1e-6).all(), f"a log-mass above 0: {lp.max().item()}"
    total = lp.exp().sum(0)
    err = (total - 1).abs()
    worst = err.argmax()
    assert err.max() <= SUM_TOL[dtype], (
        f"masses sum to {total[worst].item()!r} (tolerance {SUM_TOL[dtype]:g}) for loc "
        f"{d.loc[worst].tolist()}, log scale {d.log_scale[worst].tolist()}"
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_a_gaussian_with_a_tiny_scale_puts_its_mass_on_the_nearest_level(dtype):
    g = torch.Generator().manual_seed(1)
    k = torch.randint(0, 256, (200,), generator=g)
    offset = (torch.rand(200, generator=g) - 0.5) * 0.8  # at most 0.4 of a level off
    loc = ((k + offset) / 255).to(dtype)
    d = DiscretizedGaussian(loc, torch.full_like(loc, -10.0))  # sigma = 4.5e-5 = 0.012 level
    nearest = d.log_prob(k.to(dtype) / 255).exp()
    assert nearest.min() > 1 - 1e-6, f"smallest mass on the nearest level {nearest.min():.8f}"
    means = d.mean
    torch.testing.assert_close(means, k.to(dtype) / 255, atol=1e-6, rtol=0)


def _reference(kind: str, loc: list, log_scale: list, logits: list) -> torch.Tensor:
    """log P(X = k/255) for every level, float64, as a sum over components of CDF differences
    at 60 digits (mpmath), each taken on the side of the component's mean where the bin lies
    (a survival-function difference above it), so that no difference cancels."""
    mpmath.mp.dps = 60
    weights = [mpmath.exp(mpmath.mpf(v)) for v in logits]
    edges = [-mpmath.inf] + [(mpmath.mpf(k) + 0.5) / 255 for k in range(255)] + [mpmath.inf]

    def lower_tail(z):  # P(Z <= z) of the standard Gaussian or logistic
        if kind == "gaussian":
            return mpmath.ncdf(z)
        if mpmath.isinf(z):
            return mpmath.mpf(z > 0)
        return 1 / (1 + mpmath.exp(-z))

    out = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        mass = mpmath.mpf(0)
        for w, mu, ls in zip(weights, loc, log_scale, strict=True):
            mu, s = mpmath.mpf(mu), mpmath.exp(mpmath.mpf(ls))
            za, zb = (a - mu) / s, (b - mu) / s
            # the last bin reaches +inf, the first -inf: each on its own side
            above = b == mpmath.inf or (a != -mpmath.inf and (a + b) / 2 > mu)
            part = lower_tail(-za) - lower_tail(-zb) if above else lower_tail(zb) - lower_tail(za)
            mass += w * part
        out.append(float(mpmath.log(mass / sum(weights))))
    return torch.tensor(out, dtype=torch.float64)


CASES = {  # (loc, log scale): the exact and the series branches, far tails, the edges
    "mid": (0.37, -6.0),
    "narrow-bins": (0.5, 1.0),
    "medium": (0.8, -3.5),
    "edge-0-tiny": (0.0, -8.0),
    "edge-1": (1.0, -5.0),
    "outside": (-0.7, -2.0),
}


@pytest.mark.parametrize("kind", ["gaussian", "logistic", "mixture"])
@pytest.mark.parametrize("case", list(CASES))
def test_log_prob_matches_a_brute_force_cdf_difference(kind, case):
    loc, log_scale = CASES[case]
    loc, log_scale, logits = [loc], [log_scale], [0.0]
    if kind == "mixture":
        loc, log_scale, logits = loc + [0.1, 0.95], log_scale + [-4.0, -1.0], [0.5, -1.0, 2.0]
    ref = _reference("gaussian" if kind == "gaussian" else "logistic", loc, log_scale, logits)
    for dtype, rtol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        params = [torch.tensor(v, dtype=dtype) for v in (loc, log_scale, logits)]
        if kind == "gaussian":
            d = DiscretizedGaussian(params[0][0], params[1][0])
        else:
            d = DiscretizedLogistic(*params)
        got = d.log_prob(LEVELS.to(dtype)).double()
        # a float's rounding of the standardized edges is relative to their size, so far
        # tails (log-masses of -1e5) have an absolute error that grows with them
        tol = rtol * (1 + ref.abs())
        bad = (got - ref).abs() > tol
        levels = bad.nonzero().flatten().tolist()[:3]
        assert not bad.any(), (
            f"{kind} {case} in {dtype} (rtol {rtol:g}): log-mass off at levels {levels}: got "
            f"{got[levels].tolist()}, mpmath {ref[levels].tolist()}"
        )


def test_the_gaussian_log_cdf_has_the_inverse_mills_ratio_as_derivative():
    x = torch.tensor([-1e9, -1e6, -1e3, -30.0, -2.0, 0.0, 3.0, 40.0], dtype=torch.float64)
    mpmath.mp.dps = 40
    ratio = [float(mpmath.npdf(v) / mpmath.ncdf(v)) for v in x.tolist()]
    for dtype in (torch.float64, torch.float32):
        t = x.to(dtype).detach().clone().requires_grad_()
        _log_ndtr(t).sum().backward()
        torch.testing.assert_close(
            t.grad.double(),
            torch.tensor(ratio, dtype=torch.float64),
            rtol=1e-5 if dtype == torch.float32 else 1e-12,
            atol=1e-30,
        )


@pytest.mark.parametrize("kind, m", KINDS, ids=["gaussian", "logistic", "mixture4"])
def test_draws_sit_on_the_levels_with_the_masses_frequencies(kind, m):
    loc = torch.tensor([[0.2, 0.9, 0.5, 0.02][:m]], dtype=torch.float64)
    log_scale = torch.tensor([[-3.0, -4.5, -2.0, -6.0][:m]], dtype=torch.float64)
    logits = torch.tensor([[0.3, -0.5, 0.0, 1.0][:m]], dtype=torch.float64)
    d = _make(kind, loc, log_scale, logits)
    torch.manual_seed(0)
    n = 40_000
    x = d.sample((n,))
    assert x.shape == (n, 1) and x.dtype == torch.float64
    k = x * 255
    assert ((k - k.round()).abs() < 1e-9).all() and x.min() >= 0 and x.max() <= 1, "off levels"
    counts = torch.bincount(k.round().long().flatten(), minlength=256).double()
    expected = n * _masses(d)[:, 0]
    keep = expected >= 5  # the chi-square approximation holds where bins expect 5 or more
    pooled_obs = torch.cat([counts[keep], counts[~keep].sum().reshape(1)])
    pooled_exp = torch.cat([expected[keep], expected[~keep].sum().reshape(1)])
    chi2 = ((pooled_obs - pooled_exp) ** 2 / pooled_exp.clamp(min=1e-12)).sum().item()
    limit = stats.chi2.ppf(0.999, int(keep.sum()))
    assert chi2 < limit, f"chi-square {chi2:.1f} over {int(keep.sum())} bins, limit {limit:.1f}"
    torch.testing.assert_close(
        x.mean(0), d.mean, atol=4 * d.variance.sqrt().item() / n**0.5, rtol=0
    )


@pytest.mark.parametrize("kind, m", KINDS, ids=["gaussian", "logistic", "mixture4"])
def test_mean_and_variance_are_those_of_the_levels(kind, m):
    d = _make(kind, *_random_parameters(64, m, torch.float64, seed=3))
    p = _masses(d)  # (256, 64)
    mean = (LEVELS[:, None] * p).sum(0)
    torch.testing.assert_close(d.mean, mean, atol=1e-12, rtol=0)
    var = ((LEVELS[:, None] - mean) ** 2 * p).sum(0)
    torch.testing.assert_close(d.variance, var, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kind, m", KINDS, ids=["gaussian", "logistic", "mixture4"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_gradients_are_finite_at_the_edges_and_extremes(kind, m, dtype):
    loc, log_scale, logits = (t.requires_grad_() for t in _random_parameters(64, m, dtype))
    d = _make(kind, loc, log_scale, logits)
    x = torch.tensor([0.0, 1.0, 1 / 255, 254 / 255, 128 / 255], dtype=dtype)[:, None]  # (5, 1)
    d.log_prob(x.expand(5, 64)).sum().backward()
    for name, t in (("loc", loc), ("log_scale", log_scale), ("logits", logits)):
        if kind == "gaussian" and name == "logits":
            continue
        assert torch.isfinite(t.grad).all(), f"gradient of {name} not finite"


def test_values_off_the_levels_are_outside_the_support():
    d = DiscretizedGaussian(torch.zeros(3), torch.zeros(3))
    assert d.support.is_discrete and d.levels == 256 and d.support.levels == 256
    ok = d.support.check(torch.tensor([0.0, 17 / 255, 1.0]))
    off = d.support.check(torch.tensor([0.5, 17 / 256, 1.2]))
    assert ok.all() and not off.any(), f"support check: {ok.tolist()} {off.tolist()}"
    with pytest.raises(ValueError):
        d.log_prob(torch.tensor([0.5, 0.5, 0.5]))


def _program(head: torch.nn.Module, x_dim: int, z_dim: int = 2):
    decoder = Decoder(z_dim, x_dim, (8,), likelihood=head)

    def model(x):
        pyro.module("decoder", decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(z_dim), 1.0).to_event(1))
            pyro.sample("x", decoder(z), obs=x)

    def guide(x):
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(x.new_zeros(x.shape[0], z_dim), 0.5).to_event(1))

    return model, guide, decoder


def _eight_bit(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, d), generator=g).float() / 255


@pytest.mark.parametrize(
    "head", [DiscretizedLogisticLikelihood(3), DiscretizedGaussianLikelihood()], ids=["l", "g"]
)
def test_in_a_pyro_model_the_site_has_event_shape_d_and_expands_over_particles(head):
    model, guide, decoder = _program(head, x_dim=6)
    assert decoder.net[-1].out_features == 6 * head.outputs_per_feature
    x = _eight_bit(5, 6)
    guide_trace = pyro.poutine.trace(guide).get_trace(x)
    trace = pyro.poutine.trace(pyro.poutine.replay(model, guide_trace)).get_trace(x)
    trace.compute_log_prob()
    site = trace.nodes["x"]
    assert site["fn"].batch_shape == (5,) and site["fn"].event_shape == (6,)
    assert site["log_prob"].shape == (5,) and torch.isfinite(site["log_prob"]).all()
    # vectorized particles: the site's distribution is expanded to (K, N) by an outer plate
    elbo = pyro.infer.Trace_ELBO(num_particles=4, vectorize_particles=True)
    loss = elbo.differentiable_loss(model, guide, x)
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all() for p in decoder.parameters())
    p = head(torch.zeros(6 * head.outputs_per_feature))
    assert p.expand((4, 5)).sample().shape == (4, 5, 6)


def test_the_decoder_with_a_logistic_mixture_gives_finite_log_probs_on_8_bit_rows():
    decoder = Decoder(z_dim=2, x_dim=6, hidden=(8,), likelihood=DiscretizedLogisticLikelihood(3))
    p = decoder(torch.randn(10, 2))
    assert p.batch_shape == (10,) and p.event_shape == (6,)
    lp = p.log_prob(_eight_bit(10, 6))
    assert lp.shape == (10,) and torch.isfinite(lp).all()
    assert p.sample().shape == (10, 6) and p.mean.shape == (10, 6)


def test_the_heads_read_h_parameter_major():
    d_feat, m = 3, 2
    h = torch.randn(4, 3 * m, d_feat)  # (..., k, D)
    p = DiscretizedLogisticLikelihood(m)(h.flatten(-2)).base_dist  # h of shape (..., k * D)
    torch.testing.assert_close(p.logits, h[:, :m].transpose(-1, -2))
    torch.testing.assert_close(p.loc, torch.sigmoid(h[:, m : 2 * m]).transpose(-1, -2))
    raw = h[:, 2 * m :].transpose(-1, -2)
    torch.testing.assert_close(p.log_scale, -7 + torch.nn.functional.softplus(raw + 7))
    assert (p.log_scale > -7).all()
    g = torch.randn(4, 2, d_feat)
    q = DiscretizedGaussianLikelihood()(g.flatten(-2)).base_dist
    torch.testing.assert_close(q.loc, torch.sigmoid(g[:, 0]))
    with pytest.raises(ValueError, match="multiple of 6"):
        DiscretizedLogisticLikelihood(m)(torch.zeros(4, 7))


def test_make_likelihood_builds_the_new_heads_and_the_old_ones_as_before():
    assert {"discretized-logistic", "discretized-gaussian"} <= set(LIKELIHOODS)
    head = make_likelihood("discretized-logistic", 4, components=2)
    assert isinstance(head, DiscretizedLogisticLikelihood) and head.outputs_per_feature == 6
    assert make_likelihood("discretized-logistic", 4).components == 5
    assert isinstance(make_likelihood("discretized-gaussian", 4), DiscretizedGaussianLikelihood)
    for cls in (BernoulliLikelihood, ContinuousBernoulliLikelihood, GaussianLikelihood):
        assert cls.outputs_per_feature == 1, cls.__name__
    # the old heads' decoders draw the same weights and give the same numbers, bit for bit
    for name in ("bernoulli", "continuous-bernoulli", "gaussian"):
        torch.manual_seed(7)
        net = MLP(2, (8,), 4, "softplus")
        torch.manual_seed(7)
        decoder = Decoder(2, 4, (8,), likelihood=make_likelihood(name, 4))
        z = torch.randn(3, 2)
        assert torch.equal(decoder.net(z), net(z)), name


def test_bits_per_dim_is_nats_over_d_ln2_plus_the_discretization_term():
    log_px = torch.tensor([-500.0, -1234.5])
    torch.testing.assert_close(bits_per_dim(log_px, 784), -log_px / (784 * math.log(2)))
    assert bits_per_dim(-100.0, 10, 0.5) == pytest.approx(100 / (10 * math.log(2)) + 0.5)
    density = bits_per_dim(log_px, 784, math.log2(256))
    torch.testing.assert_close(density, (-log_px + 784 * math.log(256)) / (784 * math.log(2)))
    torch.testing.assert_close(density - bits_per_dim(log_px, 784), torch.full((2,), 8.0))
    with pytest.raises(ValueError):
        bits_per_dim(log_px, 0)


@pytest.mark.parametrize(
    "head, levels",
    [
        (BernoulliLikelihood(), 2),
        (DiscretizedLogisticLikelihood(2), 256),
        (DiscretizedGaussianLikelihood(), 256),
        (GaussianLikelihood(6), None),
        (ContinuousBernoulliLikelihood(), None),
    ],
    ids=["bernoulli", "logistic", "gaussian-8bit", "gaussian", "cb"],
)
def test_observation_levels_tells_masses_from_densities(head, levels):
    model, guide, _ = _program(head, x_dim=6)
    x = _eight_bit(4, 6).round() if levels == 2 else _eight_bit(4, 6)
    assert observation_levels(model, guide, x) == levels


def test_fit_trains_a_discretized_logistic_vae_on_8_bit_rows():
    g = torch.Generator().manual_seed(0)
    prototypes = torch.rand(3, 16, generator=g)
    noise = 0.05 * torch.randn(300, 16, generator=g)
    x = ((prototypes[torch.arange(300) % 3] + noise).clamp(0, 1) * 255).round() / 255
    vae = build_vae(x_dim=16, likelihood="discretized-logistic", hidden=(32,), z_dim=2)
    result = fit(vae, x, epochs=2, batch_size=30, lr=3e-3, warmup=0, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert len(losses) == 2 and all(math.isfinite(v) for v in losses), losses
    assert losses[1] < losses[0], f"train loss did not fall: {losses}"
