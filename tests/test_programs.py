"""The user's own Pyro program is first-class: fit, the KL weight, the objective choice and the
data forms work on programs with none of the library's attributes."""

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from linear_gaussian import gaussian_kl, make_linear_gaussian
from programs import ConditionalVAE, ExampleVAE, MixturePriorVAE, functions
from pyro.infer import SVI, Trace_ELBO, TraceMeanField_ELBO
from torch.utils.data import DataLoader, TensorDataset

from ppl_vae import as_program, build_vae, fit, kl_weight
from ppl_vae.data.datasets import load_dataset
from ppl_vae.objectives.analytic import AnalyticKLELBO
from ppl_vae.program import ProgramError


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", binarization="static")


def _svi_reference(model, guide, x, epochs, batch_size, seed, lr=1e-2):
    """Pyro's own SVI on fit's batches (same permutations) and seed, minimising the per-point
    mean (a 1/n scale on every site) as fit does."""
    gen = torch.Generator().manual_seed(seed)

    def scaled(fn, n):
        return poutine.scale(fn, scale=1.0 / n)

    pyro.set_rng_seed(seed)
    optim = pyro.optim.Adam({"lr": lr})
    svis = {}
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), batch_size):
            xb = x[perm[i : i + batch_size]]
            n = len(xb)
            if n not in svis:
                svis[n] = SVI(scaled(model, n), scaled(guide, n), optim, TraceMeanField_ELBO())
            svis[n].step(xb)


def _params(named):
    return {k: v.detach().clone() for k, v in named}


def test_plain_functions_train_to_the_same_parameters_as_pyro_svi(digits):
    x = digits.train[:300]
    torch.manual_seed(0)
    model, guide = functions(64)
    fit(
        model,
        guide,
        x,
        epochs=2,
        batch_size=64,
        lr=1e-2,
        objective="mean-field",
        warmup=0,
        progress=False,
    )
    ours = _params(pyro.get_param_store().named_parameters())
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = functions(64)
    _svi_reference(model, guide, x, epochs=2, batch_size=64, seed=0)
    theirs = _params(pyro.get_param_store().named_parameters())
    assert ours.keys() == theirs.keys() and len(ours) == 12, sorted(ours)
    for name in ours:
        torch.testing.assert_close(ours[name], theirs[name], rtol=1e-5, atol=1e-6, msg=name)
    assert not torch.equal(ours["f_bias"], torch.zeros(64)), "the pyro.param site did not train"


def test_a_module_with_model_and_guide_trains_like_pyro_svi(digits):
    x = digits.train[:300]
    torch.manual_seed(1)
    vae = ExampleVAE(64, z_dim=3, hidden=16)
    initial = _params(vae.named_parameters())
    settings = {"objective": "mean-field", "warmup": 0}  # what SVI + TraceMeanField_ELBO does
    result = fit(vae, x, epochs=2, batch_size=64, lr=1e-2, progress=False, **settings)
    assert result.objective == "mean-field", "Normal/Normal sites have a closed-form KL"
    reference = ExampleVAE(64, z_dim=3, hidden=16)
    reference.load_state_dict(initial)
    pyro.clear_param_store()
    _svi_reference(reference.model, reference.guide, x, epochs=2, batch_size=64, seed=0)
    for (name, a), b in zip(vae.named_parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
        assert not torch.equal(a, initial[name]), f"{name} did not move"


def _lg_user_program(lg):
    """The linear-Gaussian model and a perturbed mean-field guide as plain functions; the
    guide's parameters are pyro.param sites so fit has something to hold."""
    guide = lg.perturbed_guide(0.3)

    def user_guide(x):
        shift = pyro.param("shift", torch.zeros(lg.d, dtype=x.dtype))  # 0: the guide above
        with pyro.plate("data", x.shape[0]):
            pyro.sample("z", dist.Normal(guide.loc(x) + shift, guide.scale).to_event(1))

    return lg.model, user_guide, guide


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_weighted_loss_is_reconstruction_plus_beta_times_the_closed_form_kl(beta):
    """Given the draw z, the loss fit minimises is -log p(x|z) + beta KL(q || p(z)) exactly:
    on a user's linear-Gaussian program and on the built-in VAE (a linear Gaussian VAE)."""
    lg = make_linear_gaussian(d=2, D=3, s=0.5)
    x = lg.sample(6)
    model, guide, diag = _lg_user_program(lg)
    pyro.set_rng_seed(3)
    loss = AnalyticKLELBO().differentiable_loss(kl_weight(model, beta), kl_weight(guide, beta), x)
    pyro.set_rng_seed(3)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    recon = dist.Normal(z @ lg.W.T + lg.b, lg.s).log_prob(x).sum(-1)
    eye = torch.eye(2, dtype=x.dtype)
    kl = gaussian_kl(diag.loc(x), diag.cov(), torch.zeros_like(diag.loc(x)), eye)
    torch.testing.assert_close(loss, -(recon - beta * kl).sum(), rtol=1e-12, atol=1e-10)

    vae = build_vae(3, z_dim=2, hidden=(), likelihood="gaussian", gaussian_scale=0.5).double()
    pyro.set_rng_seed(3)
    loss = AnalyticKLELBO().differentiable_loss(
        kl_weight(vae.model, beta), kl_weight(vae.guide, beta), x
    )
    pyro.set_rng_seed(3)
    q = poutine.trace(vae.guide).get_trace(x).nodes["z"]
    lin = vae.decoder.net[-1]
    recon = dist.Normal(lin(q["value"]), 0.5).log_prob(x).sum(-1)
    mu, var = q["fn"].mean, q["fn"].variance  # (N, d) each: a diagonal Gaussian per point
    kl = 0.5 * (var + mu**2 - 1 - var.log()).sum(-1)
    torch.testing.assert_close(loss, -(recon - beta * kl).sum(), rtol=1e-7, atol=1e-6)


@pytest.mark.parametrize("beta", [0.5, 3.0])
def test_fit_applies_beta_to_a_user_program_in_expectation(beta):
    """lr = 0 and a Monte Carlo KL (objective 'elbo'): fit's mean training loss over many
    steps matches -E_q[log p(x|z)] + beta KL in closed form, within 4 standard errors."""
    lg = make_linear_gaussian(d=2, D=3, s=0.5)
    x = lg.sample(8)
    model, guide, diag = _lg_user_program(lg)
    losses = []
    fit(
        model,
        guide,
        x,
        epochs=400,
        batch_size=8,
        lr=0.0,
        beta=beta,
        objective="elbo",
        progress=False,
        callback=lambda e, s, loss: losses.append(loss),
    )
    loc, var = diag.loc(x), diag.scale**2  # (N, d), (d,)
    mean = loc @ lg.W.T + lg.b
    recon = dist.Normal(mean, lg.s).log_prob(x).sum(-1) - (lg.W**2 @ var).sum() / (2 * lg.s**2)
    kl = gaussian_kl(loc, diag.cov(), torch.zeros_like(loc), torch.eye(2, dtype=x.dtype))
    exact = (-(recon - beta * kl)).mean().item()
    draws = torch.tensor(losses)
    se = draws.std().item() / math.sqrt(len(draws))
    assert abs(draws.mean().item() - exact) < 4 * se, (
        f"beta={beta}: mean loss {draws.mean():.4f} vs exact {exact:.4f}, 4 SE = {4 * se:.4f}"
    )


def test_auto_is_stl_and_mean_field_needs_a_closed_form_kl(digits):
    x = digits.train[:100]
    assert fit(ExampleVAE(64, 3, 16), x, epochs=1, progress=False).objective == "stl"
    assert fit(MixturePriorVAE(64, 3, 16), x, epochs=1, progress=False).objective == "stl"
    pyro.clear_param_store()
    vae = ExampleVAE(64, 3, 16)
    assert fit(vae, x, epochs=1, objective="mean-field", progress=False).objective == "mean-field"
    with pytest.raises(
        ValueError,
        match="'latent' lacks: no kl_divergence is registered for the guide's Independent and",
    ):
        fit(MixturePriorVAE(64, 3, 16), x, epochs=1, objective="mean-field", progress=False)


def test_warmup_changes_the_loss_of_a_user_program(digits):
    x = digits.train[:200]
    first_epoch = {}
    for warmup in (0, 4):
        torch.manual_seed(0)
        result = fit(ExampleVAE(64, 3, 16), x, epochs=1, lr=0.0, warmup=warmup, progress=False)
        first_epoch[warmup] = result.history[0]["train_loss"]
    # KL >= 0 and weighted by at most 1/4 in the first warm-up epoch: a lower loss
    assert first_epoch[4] < first_epoch[0] - 0.5, first_epoch


@pytest.mark.parametrize("form", ["numpy", "float64", "tuple", "dataset", "loader"])
def test_data_in_the_forms_people_have_it_trains(digits, form):
    x = digits.train[:250]
    data = {
        "numpy": x.numpy(),
        "float64": x.double(),
        "tuple": (x,),
        "dataset": TensorDataset(x),
        "loader": DataLoader(TensorDataset(x), batch_size=50, shuffle=True),
    }[form]
    vae = build_vae(64, z_dim=2, hidden=(16,))
    result = fit(vae, data, digits.val.double().numpy(), epochs=3, lr=1e-2, progress=False)
    assert all(p.dtype == torch.float32 for p in vae.parameters())
    losses = [h["val_loss"] for h in result.history]
    assert losses[-1] < losses[0], f"{form}: validation loss did not fall: {losses}"


def test_labels_reach_a_conditional_program(digits):
    x = digits.train[:200]
    y = torch.arange(200) % 10
    cvae = ConditionalVAE(64, classes=10)
    result = fit(cvae, (x, y), (digits.val[:50], torch.arange(50) % 10), epochs=2, progress=False)
    assert len(result.history) == 2 and "val_loss" in result.history[0]
    loader = DataLoader(TensorDataset(x, y), batch_size=40, shuffle=True)
    fit(cvae, loader, epochs=1, progress=False)


def test_grey_levels_reach_a_gaussian_model_unchanged():
    """Regression: data in [0, 1] under a Gaussian likelihood were binarized by default."""
    data = load_dataset("digits", binarization="none")
    seen = []
    vae = build_vae(64, z_dim=2, hidden=(8,), likelihood="gaussian")

    def model(x):
        seen.append(x)
        return vae.model(x)

    fit(model, vae.guide, data, epochs=1, batch_size=2000, progress=False)
    rows = torch.sort(data.train.flatten()).values
    fed = [x for x in seen if x.shape == data.train.shape]  # the one training batch
    assert fed and all(torch.equal(torch.sort(x.flatten()).values, rows) for x in fed)
    assert not bool(((fed[-1] == 0) | (fed[-1] == 1)).all()), "the model was given binary data"
    with pytest.raises(ValueError, match="binarized.*binarization='none'"):
        fit(vae, load_dataset("digits", binarization="dynamic"), epochs=1, progress=False)


def test_what_is_refused_says_what_to_do(digits):
    x = digits.train[:50]
    with pytest.raises(ProgramError, match="not a program"):
        fit(object(), x)
    with pytest.raises(ProgramError, match="no parameters to train"):
        fit(lambda x: None, lambda x: None, x)
    with pytest.raises(ValueError, match="uint8"):
        fit(build_vae(64, z_dim=2, hidden=(8,)), (x * 255).to(torch.uint8))
    with pytest.raises(ValueError, match="as many rows"):
        fit(ConditionalVAE(64, 10), (x, torch.zeros(10, dtype=torch.long)))
    with pytest.raises(ProgramError, match="engine 'svi' steps only what pyro.module"):
        fit(ConditionalVAE(64, 10), (x, torch.zeros(50, dtype=torch.long)), engine="svi")
    with pytest.raises(ValueError, match="outside the support of its Bernoulli.*binarize"):
        fit(ExampleVAE(64), np.asarray(load_dataset("digits", binarization="none").train))


@pytest.mark.parametrize("stop_at", [(0, 3), (1, 0)], ids=["mid-epoch", "epoch-start"])
def test_user_program_resumes_exactly(digits, tmp_path, stop_at):
    """Functions with pyro.module and constrained pyro.param sites, a DataLoader that shuffles
    from torch's global random state: interrupted and resumed equals uninterrupted."""
    x = digits.train[:300]

    def run(out, callback=None, resume=False):
        pyro.clear_param_store()
        torch.manual_seed(0)
        model, guide = functions(64)
        loader = DataLoader(TensorDataset(x), batch_size=50, shuffle=True)
        fit(
            model,
            guide,
            loader,
            digits.val,
            epochs=3,
            objective="elbo",
            out=out,
            resume=resume,
            callback=callback,
            progress=False,
            warmup=1.5,
        )
        return _params(pyro.get_param_store().named_parameters())

    straight = run(tmp_path / "a")

    def interrupt(epoch, step, loss):
        if (epoch, step) == stop_at:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "b", interrupt)
    resumed = run(tmp_path / "b", resume=True)
    for name in straight:
        assert torch.equal(straight[name], resumed[name]), f"{name} differs after resume"
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_kl_weight_handler_leaves_observed_sites_alone():
    def model(x):
        with pyro.plate("data", len(x)):
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            pyro.sample("x", dist.Normal(z, 1.0), obs=x)

    trace = poutine.trace(kl_weight(model, 0.25)).get_trace(torch.zeros(3))
    assert trace.nodes["z"]["scale"] == 0.25 and trace.nodes["x"]["scale"] == 1.0
    assert trace.nodes["data"]["scale"] == 1.0


def test_trace_elbo_reference_is_what_fit_trains_with_objective_elbo(digits):
    """objective='elbo' is Pyro's Trace_ELBO: the same first-step loss on the same draws."""
    x = digits.train[:64]
    torch.manual_seed(0)
    vae = ExampleVAE(64, 3, 16)
    losses = []
    fit(
        vae,
        x,
        epochs=1,
        batch_size=64,
        lr=0.0,
        objective="elbo",
        progress=False,
        callback=lambda e, s, loss: losses.append(loss),
    )
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(0))  # fit's shuffle
    pyro.set_rng_seed(0)
    expected = Trace_ELBO().loss(vae.model, vae.guide, x[perm]) / 64
    assert losses[0] == pytest.approx(expected, rel=1e-6)


def _two_layers(top_down_guide):
    """p(z2) p(z1|z2) p(x|z1), with the guide q(z1|x) q(z2|z1) (bottom-up, as in the IWAE
    paper) or q(z2|x) q(z1|x, z2) (top-down)."""
    f, g = torch.nn.Linear(2, 3), torch.nn.Linear(3, 64)
    e1, e2 = torch.nn.Linear(64 + 2, 6), torch.nn.Linear(64 + 3, 4)

    def model(x):
        pyro.module("f", f)
        pyro.module("g", g)
        with pyro.plate("data", x.shape[0]):
            z2 = pyro.sample("z2", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            z1 = pyro.sample("z1", dist.Normal(f(z2), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=g(z1)).to_event(1), obs=x)

    def guide(x):
        pyro.module("e1", e1)
        pyro.module("e2", e2)
        with pyro.plate("data", x.shape[0]):
            if top_down_guide:
                loc, log_scale = e2(torch.cat([x, x.new_zeros(len(x), 3)], -1)).chunk(2, -1)
                z2 = pyro.sample("z2", dist.Normal(loc, log_scale.exp()).to_event(1))
                loc, log_scale = e1(torch.cat([x, z2], -1)).chunk(2, -1)
                pyro.sample("z1", dist.Normal(loc, log_scale.exp()).to_event(1))
            else:
                loc, log_scale = e1(torch.cat([x, x.new_zeros(len(x), 2)], -1)).chunk(2, -1)
                z1 = pyro.sample("z1", dist.Normal(loc, log_scale.exp()).to_event(1))
                loc, log_scale = e2(torch.cat([x, z1], -1)).chunk(2, -1)
                pyro.sample("z2", dist.Normal(loc, log_scale.exp()).to_event(1))

    return model, guide


def test_no_analytic_kl_where_a_site_depends_on_one_the_guide_draws_later(digits):
    """Bottom-up guide, top-down model: KL(q(z1|x) || p(z1|z2)) with z2 drawn from z1 is not a
    term of the ELBO, so auto trains with STL and mean-field is refused naming z1."""
    from ppl_vae.objectives.analytic import closed_form_kl_sites

    x = digits.train[:100]
    model, guide = _two_layers(top_down_guide=False)
    assert closed_form_kl_sites(model, guide, x) == {"z2": True, "z1": False}
    assert fit(model, guide, x, epochs=1, progress=False).objective == "stl"
    with pytest.raises(
        ValueError,
        match="site 'z1' lacks: its model distribution depends on 'z2', which the guide draws",
    ):
        fit(model, guide, x, epochs=1, objective="mean-field", progress=False)
    pyro.clear_param_store()
    model, guide = _two_layers(top_down_guide=True)
    assert closed_form_kl_sites(model, guide, x) == {"z2": True, "z1": True}
    result = fit(model, guide, x, epochs=1, objective="mean-field", progress=False)
    assert result.objective == "mean-field"


def test_a_stale_module_of_the_same_name_is_refused_or_taken_over(digits):
    """Pyro's store keeps the first module registered under a name: a second program that
    reuses the name would be handed the first one's tensors and train nothing."""
    x = digits.train[:100]
    fit(*functions(64), x, epochs=1, progress=False)
    with pytest.raises(ProgramError, match="clear_param_store"):
        fit(*functions(64), x, epochs=1, progress=False)  # new networks, same names
    first = ExampleVAE(64, 3, 16)
    fit(first, x, epochs=1, progress=False)
    second = ExampleVAE(64, 3, 16)  # the same pyro.module names, but fit sees its modules
    before = _params(second.named_parameters())
    fit(second, x, epochs=1, lr=1e-2, progress=False)
    moved = [n for n, p in second.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before), "the second module did not train"
    store = pyro.get_param_store()
    assert store._params["encoder$$$fc1.weight"] is second.encoder.fc1.weight


def test_encode_gives_the_posterior_and_its_mean_is_the_embedding(digits):
    vae = build_vae(64, z_dim=3, hidden=(16,))
    q = vae.encode(digits.val[:7])
    assert q.batch_shape == (7,) and q.event_shape == (3,) and q.mean.shape == (7, 3)
    torch.testing.assert_close(q.mean, vae.encoder(digits.val[:7]).mean)


def test_an_autoguide_is_a_guide_fit_trains(digits):
    """The README says the guide may be an nn.Module of its own: Pyro's AutoNormal."""
    from pyro.infer.autoguide import AutoNormal

    x = digits.train[:200]
    model, _ = functions(64)
    guide = AutoNormal(poutine.block(model, hide=["pixels"]))
    result = fit(model, guide, x, epochs=3, lr=1e-2, batch_size=200, progress=False)
    losses = [h["train_loss"] for h in result.history]
    assert losses[-1] < losses[0], losses
    found = as_program(model, guide).find_parameters(x)
    assert any(n.startswith("guide.") for n in found), f"AutoNormal's parameters: {list(found)}"


@pytest.mark.parametrize("weight", [{"beta": 2.0}, {"warmup": 1}])
def test_iwae_refuses_a_kl_weight_on_any_program(digits, weight):
    with pytest.raises(ValueError, match="no bound; use beta=1 and warmup=0 with iwae"):
        fit(ExampleVAE(64, 3, 16), digits.train[:50], objective="iwae", particles=3, **weight)
