"""One contract test over every prior, plus the flows' bijections and the mixture's density."""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from functools import partial

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from torch import nn

from ppl_vae.models.build import build_vae
from ppl_vae.models.nets import GaussianEncoder
from ppl_vae.priors.factory import PRIORS, make_prior
from ppl_vae.priors.flow import FLOW_TYPES, FlowPrior
from ppl_vae.priors.mixture import MixturePrior
from ppl_vae.priors.normal import NormalPrior
from ppl_vae.priors.polymodal import PolymodalPrior
from ppl_vae.priors.vamp import VampPrior


def _perturbed(prior: nn.Module, noise: float = 0.3) -> nn.Module:
    """Move every parameter off its initial value, so no test relies on a symmetric init.

    (Flows start at the identity; a smaller ``noise`` keeps their tails inside the test grid.)
    """
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(noise * torch.randn_like(p))
    return prior


def _flow(z_dim: int, flow_type: str) -> nn.Module:
    return _perturbed(FlowPrior(z_dim, flow_layers=3, flow_type=flow_type), 0.15)


BUILDERS: dict[str, Callable[[int], nn.Module]] = {
    "normal": lambda z: NormalPrior(z),
    "mixture": lambda z: _perturbed(MixturePrior(z, components=4)),
    "vamp": lambda z: _perturbed(
        VampPrior(GaussianEncoder(5, z, (16,)), x_dim=5, pseudo_inputs=6)
    ),
    **{f"flow-{t}": partial(_flow, flow_type=t) for t in FLOW_TYPES},
    "polymodal": lambda z: _perturbed(PolymodalPrior(z, modes=3)),
}
FLOWS = [name for name in BUILDERS if name.startswith("flow-")]


def test_every_registered_prior_is_covered() -> None:
    covered = {name.split("-")[0] for name in BUILDERS}
    assert covered == set(PRIORS), f"contract test misses {set(PRIORS) - covered}"


@pytest.mark.parametrize("name", list(BUILDERS))
def test_prior_contract(name: str) -> None:
    z_dim, K, N = 3, 4, 5
    prior = BUILDERS[name](z_dim)
    p = prior()
    assert p.batch_shape == () and p.event_shape == (z_dim,), (p.batch_shape, p.event_shape)
    assert isinstance(prior.analytic_kl, bool)
    assert prior.analytic_kl == (name == "normal"), f"{name}: analytic_kl={prior.analytic_kl}"

    # shapes, also broadcast inside a particle plate and a data plate as the VAE uses it
    assert p.sample((K, N)).shape == (K, N, z_dim)
    z = torch.randn(K, N, z_dim)
    assert p.log_prob(z).shape == (K, N)

    def model() -> None:
        with pyro.plate("particles", K, dim=-2), pyro.plate("data", N, dim=-1):
            pyro.sample("z", prior())

    trace = poutine.trace(model).get_trace()
    trace.compute_log_prob()
    assert trace.nodes["z"]["value"].shape == (K, N, z_dim)
    assert trace.nodes["z"]["log_prob"].shape == (K, N)

    # gradients reach every parameter
    if any(True for _ in prior.parameters()):
        prior().log_prob(z).sum().backward()
    for pname, param in prior.named_parameters():
        assert param.grad is not None, f"{name}: no gradient reaches {pname}"
        assert torch.isfinite(param.grad).all(), f"{name}: non-finite gradient in {pname}"
        assert param.grad.abs().sum() > 0, f"{name}: zero gradient in {pname}"

    # save / load round trip into a differently initialized twin
    buffer = io.BytesIO()
    torch.save(prior.state_dict(), buffer)
    buffer.seek(0)
    pyro.set_rng_seed(123)
    twin = BUILDERS[name](z_dim)
    z_fresh = torch.randn(K, N, z_dim)
    if name != "normal":
        assert not torch.allclose(twin().log_prob(z_fresh), prior().log_prob(z_fresh))
    twin.load_state_dict(torch.load(buffer))
    torch.testing.assert_close(
        twin().log_prob(z_fresh), prior().log_prob(z_fresh), rtol=1e-6, atol=1e-6
    )


def _grid(lim: float = 12.0, n: int = 481) -> tuple[torch.Tensor, float]:
    t = torch.linspace(-lim, lim, n, dtype=torch.float64)
    zz = torch.stack(torch.meshgrid(t, t, indexing="ij"), dim=-1).reshape(-1, 2)
    return zz, float((t[1] - t[0]) ** 2)


@pytest.mark.parametrize("name", list(BUILDERS))
def test_density_integrates_to_one_and_matches_samples(name: str) -> None:
    prior = BUILDERS[name](2).double()
    zz, cell = _grid()
    with torch.no_grad():
        density = prior().log_prob(zz).exp()
        mass = density.sum() * cell
        torch.testing.assert_close(mass.item(), 1.0, rtol=0, atol=5e-3, msg=f"{name}: {mass}")
        # the sampler draws from the density it scores: first two moments within 5 standard errors
        n = 20000
        s = prior().sample((n,))
        mean_grid = (density[:, None] * zz).sum(0) * cell / mass
        var_grid = (density[:, None] * (zz - mean_grid) ** 2).sum(0) * cell / mass
        se = (var_grid / n).sqrt()
        assert ((s.mean(0) - mean_grid).abs() < 5 * se).all(), (name, s.mean(0), mean_grid, se)
        torch.testing.assert_close(s.var(0), var_grid, rtol=0.06, atol=0.0)


@pytest.mark.parametrize("name", FLOWS)
def test_flow_inverse_and_log_det_jacobian(name: str) -> None:
    prior = BUILDERS[name](3).double()
    d = prior()
    f = dist.transforms.ComposeTransform(d.transforms)
    u = torch.randn(6, 3, dtype=torch.float64)
    z = f(u)
    # .clone() defeats the transforms' (x, y) cache, so the inverse is really computed
    torch.testing.assert_close(f.inv(z.clone()), u, rtol=1e-6, atol=1e-6)
    ldj = f.log_abs_det_jacobian(u.clone(), z.clone())
    for i in range(u.shape[0]):
        jac = torch.autograd.functional.jacobian(lambda v: f(v), u[i].clone())
        torch.testing.assert_close(ldj[i], torch.linalg.slogdet(jac)[1], rtol=1e-6, atol=1e-6)
    base = dist.Normal(torch.zeros(3, dtype=torch.float64), 1.0).to_event(1)
    torch.testing.assert_close(d.log_prob(z.clone()), base.log_prob(u) - ldj, rtol=1e-6, atol=1e-6)


def test_flow_forgets_cache_across_parameter_changes() -> None:
    prior = FlowPrior(2, flow_layers=2)
    z = prior().sample((5,))  # the layers now cache (u, z)
    with torch.no_grad():
        for p in prior.parameters():
            p.add_(0.5)
    fresh = FlowPrior(2, flow_layers=2)
    fresh.load_state_dict(prior.state_dict())
    torch.testing.assert_close(prior().log_prob(z), fresh().log_prob(z.clone()))


def test_mixture_log_prob_is_a_log_sum_exp() -> None:
    prior = BUILDERS["mixture"](3)
    z = torch.randn(4, 5, 3)
    w = torch.log_softmax(prior.logits, -1)
    terms = []
    for c in range(prior.components):
        loc, scale = prior.loc[c], prior.log_scale[c].exp()
        log_n = -0.5 * ((z - loc) / scale) ** 2 - scale.log() - 0.5 * math.log(2 * math.pi)
        terms.append(w[c] + log_n.sum(-1))
    expected = torch.logsumexp(torch.stack(terms), dim=0)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-5, atol=1e-5)


def test_polymodal_prior_log_prob_is_per_dimension_log_sum_exp() -> None:
    prior = BUILDERS["polymodal"](3)
    z = torch.randn(7, 3)
    w = torch.log_softmax(prior.logits, -1)  # (D, N)
    comp = dist.Normal(prior.loc, prior.log_scale.exp()).log_prob(z[:, :, None])  # (7, D, N)
    expected = (w + comp).logsumexp(-1).sum(-1)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-5, atol=1e-5)


def test_vamp_prior_is_the_mixture_of_encoded_pseudo_inputs() -> None:
    prior = BUILDERS["vamp"](2)
    z = torch.randn(9, 2)
    q = prior.encoder(prior.u)  # batch (K,)
    expected = q.log_prob(z[:, None, :]).logsumexp(-1) - math.log(prior.pseudo_inputs)
    torch.testing.assert_close(prior().log_prob(z), expected, rtol=1e-5, atol=1e-5)


def test_vamp_prior_shares_the_vae_encoder_through_save_and_load() -> None:
    vae = build_vae(x_dim=5, z_dim=2, hidden=(8,), prior="vamp", pseudo_inputs=4)
    assert vae.prior.encoder is vae.encoder
    x = torch.bernoulli(torch.full((3, 5), 0.5))
    poutine.trace(vae.model).get_trace(x)
    store = pyro.get_param_store()
    assert len(store) == len(list(vae.parameters())), sorted(store.keys())

    buffer = io.BytesIO()
    torch.save(vae.state_dict(), buffer)
    buffer.seek(0)
    pyro.set_rng_seed(7)
    twin = build_vae(x_dim=5, z_dim=2, hidden=(8,), prior="vamp", pseudo_inputs=4)
    twin.load_state_dict(torch.load(buffer))
    assert twin.prior.encoder is twin.encoder
    z = torch.randn(6, 2)
    torch.testing.assert_close(twin.prior().log_prob(z), vae.prior().log_prob(z))
    torch.testing.assert_close(twin.encoder(x).mean, vae.encoder(x).mean)


def test_make_prior_ignores_foreign_options_and_rejects_unknown_names() -> None:
    enc = GaussianEncoder(5, 2, (8,))
    opts = dict(
        encoder=enc,
        x_dim=5,
        components=3,
        pseudo_inputs=4,
        flow_layers=2,
        flow_type="spline-coupling",
        modes=2,
    )
    built = {name: make_prior(name, 2, **opts) for name in PRIORS}
    assert built["mixture"].components == 3
    assert built["vamp"].pseudo_inputs == 4 and built["vamp"].encoder is enc
    assert built["flow"].flow_layers == 2 and built["flow"].flow_type == "spline-coupling"
    assert built["polymodal"].modes == 2
    with pytest.raises(ValueError, match="unknown prior"):
        make_prior("gamma", 2)
    with pytest.raises(ValueError, match="encoder"):
        make_prior("vamp", 2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matrix_product_mixture_equals_mixture_same_family(dtype: torch.dtype) -> None:
    """Values and gradients, with sharp components and points far from them (the expansion's
    worst case: large terms that cancel)."""
    from ppl_vae.priors.diagonal_mixture import DiagonalNormalMixture

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(7, generator=g, dtype=torch.float64)
    loc = 3 * torch.randn(7, 4, generator=g, dtype=torch.float64)
    scale = torch.exp(torch.randn(7, 4, generator=g, dtype=torch.float64) - 2)  # 0.01 .. 1
    z = loc[torch.arange(30) % 7] + 0.1 * torch.randn(30, 4, generator=g, dtype=torch.float64)
    z = torch.cat([z, 10 * torch.randn(5, 4, generator=g, dtype=torch.float64)])
    params = [t.to(dtype).requires_grad_() for t in (logits, loc, scale)]
    comp = dist.Normal(params[1], params[2]).to_event(1)
    exact = dist.MixtureSameFamily(dist.Categorical(logits=params[0]), comp).log_prob(z.to(dtype))
    fast = DiagonalNormalMixture(*params).log_prob(z.to(dtype))
    assert fast.dtype == dtype
    torch.testing.assert_close(fast, exact, rtol=1e-5 if dtype == torch.float32 else 1e-10, atol=0)
    g_exact = torch.autograd.grad(exact.sum(), params)
    g_fast = torch.autograd.grad(fast.sum(), params)
    for a, b, name in zip(g_fast, g_exact, ("logits", "loc", "scale"), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6, msg=f"gradient of {name}")


def test_matrix_product_mixture_in_a_plate_and_its_samples() -> None:
    from ppl_vae.priors.diagonal_mixture import DiagonalNormalMixture

    p = DiagonalNormalMixture(
        torch.tensor([0.0, 1.0]), torch.tensor([[-2.0], [3.0]]), torch.tensor([[0.5], [0.2]])
    )
    with pyro.plate("data", 6):
        trace = poutine.trace(lambda: pyro.sample("z", p)).get_trace()
    site = trace.nodes["z"]
    assert site["value"].shape == (6, 1) and site["fn"].batch_shape == (6,)
    assert site["fn"].log_prob(site["value"]).shape == (6,)
    torch.manual_seed(0)
    draws = p.sample((20000,))
    w1 = torch.sigmoid(torch.tensor(1.0))
    torch.testing.assert_close(draws.mean(), (1 - w1) * -2.0 + w1 * 3.0, atol=0.05, rtol=0)
    with pytest.raises(ValueError, match=r"expected logits \(C,\), loc and scale \(C, D\)"):
        DiagonalNormalMixture(torch.zeros(2), torch.zeros(3, 1), torch.ones(3, 1))
