"""Two stochastic layers: exact answers of a two-layer linear-Gaussian model, training with every
objective and prior on the top layer, and the CLI's iwae2 preset."""

from __future__ import annotations

import json
import math

import pyro
import pytest
import torch

from ppl_vae import build_vae, elbo, fit, log_likelihood
from ppl_vae.cli import main
from ppl_vae.models.hierarchy import TopDownTwoLayerVAE, TwoLayerVAE
from ppl_vae.objectives.analytic import kl_obstacles
from ppl_vae.objectives.factory import OBJECTIVES

DTYPE = torch.float64
A, A0, S1 = 1.5, 0.3, 0.7  # p(z1 | z2) = N(A z2 + A0, S1^2)
B = torch.tensor([0.8, -1.2, 0.5], dtype=torch.float64)  # p(x | z1) = N(B z1 + B0, S2^2 I)
B0, S2 = torch.tensor([0.1, 0.0, -0.4], dtype=torch.float64), 0.6


def _set(linear: torch.nn.Linear, loc_w, loc_b, log_var: float) -> None:
    """A Gaussian network with no hidden layer: loc = loc_w z + loc_b, log variance constant."""
    with torch.no_grad():
        linear.weight.zero_()
        linear.weight[0] = torch.as_tensor(loc_w, dtype=DTYPE)
        linear.bias.copy_(torch.tensor([float(loc_b), log_var], dtype=DTYPE))


def _linear_model(direction: str) -> TwoLayerVAE:
    """p(z2) = N(0, 1), p(z1|z2) = N(A z2 + A0, S1^2), p(x|z1) = N(B z1 + B0, S2^2 I) as
    build_vae's networks with no hidden layers, with a guide of that direction left as built."""
    vae = build_vae(
        x_dim=3,
        z_dim=1,
        hidden=(),
        top_z_dim=1,
        top_hidden=(),
        likelihood="gaussian",
        gaussian_scale=S2,
        guide_direction=direction,
    ).to(DTYPE)
    _set(vae.upper.net[0], [A], A0, math.log(S1**2))
    with torch.no_grad():
        vae.decoder.net[0].weight.copy_(B.to(DTYPE).unsqueeze(1))
        vae.decoder.net[0].bias.copy_(B0.to(DTYPE))
        vae.decoder.likelihood.log_scale.fill_(math.log(S2))  # built in float32
    return vae


def linear_two_layer(perturb: float = 0.0) -> TwoLayerVAE:
    """p(z2) = N(0, 1), p(z1|z2) = N(A z2 + A0, S1^2), p(x|z1) = N(B z1 + B0, S2^2 I), built
    with build_vae's networks (no hidden layers: linear), and its exact posterior as the guide
    (q(z1|x) = p(z1|x), q(z2|z1) = p(z2|z1, x) = p(z2|z1)), moved by ``perturb``."""
    vae = _linear_model("bottom-up")
    v1 = A**2 + S1**2  # the marginal variance of z1
    var1 = 1.0 / (1.0 / v1 + float(B @ B) / S2**2)
    w1 = var1 * B / S2**2
    c1 = var1 * (A0 / v1 - float(B @ B0) / S2**2)
    _set(vae.encoder.net[0], w1 + perturb, c1, math.log(var1))
    var2 = 1.0 / (1.0 + A**2 / S1**2)
    _set(vae.top.net[0], [var2 * A / S1**2], -var2 * A * A0 / S1**2 - perturb, math.log(var2))
    return vae


def linear_top_down(perturb: float = 0.0) -> TopDownTwoLayerVAE:
    """The model of :func:`linear_two_layer` with a top-down guide set to its exact posterior,
    q(z2|x) = p(z2|x) and q(z1|x, z2) = p(z1|z2, x), moved by ``perturb``. With no hidden
    layers the guide's features are x itself, so both guide networks are linear."""
    vae = _linear_model("top-down")
    assert isinstance(vae, TopDownTwoLayerVAE)
    b, b0 = B.to(DTYPE), B0.to(DTYPE)
    # p(z2 | x): x = b (A z2 + A0) + b0 + noise of covariance S1^2 b b' + S2^2 I
    m, c0 = b * A, b * A0 + b0
    cov = S1**2 * torch.outer(b, b) + S2**2 * torch.eye(3, dtype=DTYPE)
    gain = torch.linalg.solve(cov, m)
    var2 = 1.0 / (1.0 + float(m @ gain))
    w2 = var2 * gain
    _set(vae.encoder.top.net[0], w2 + perturb, -float(w2 @ c0), math.log(var2))
    # p(z1 | z2, x) = N(z1; A z2 + A0, S1^2) N(x; b z1 + b0, S2^2 I), normalized in z1
    var1 = 1.0 / (1.0 / S1**2 + float(b @ b) / S2**2)
    w1 = torch.cat([var1 * b / S2**2, torch.tensor([var1 * A / S1**2], dtype=DTYPE)])
    c1 = var1 * (A0 / S1**2 - float(b @ b0) / S2**2)
    _set(vae.encoder.bottom.net[0], w1, c1 - perturb, math.log(var1))
    return vae


def exact_log_px(x: torch.Tensor) -> torch.Tensor:
    b = B.to(DTYPE)
    cov = (A**2 + S1**2) * torch.outer(b, b) + S2**2 * torch.eye(3, dtype=DTYPE)
    marginal = torch.distributions.MultivariateNormal(b * A0 + B0.to(DTYPE), cov)
    return marginal.log_prob(x)


def _data(n: int = 40) -> torch.Tensor:
    torch.manual_seed(0)
    z2 = torch.randn(n, 1, dtype=DTYPE)
    z1 = A * z2 + A0 + S1 * torch.randn(n, 1, dtype=DTYPE)
    return z1 * B.to(DTYPE) + B0.to(DTYPE) + S2 * torch.randn(n, 3, dtype=DTYPE)


def test_exact_posterior_guide_gives_exact_log_px_and_elbo() -> None:
    vae, x = linear_two_layer(), _data()
    exact = exact_log_px(x)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=7)
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-9, msg="log p(x), exact guide")
    bound = elbo(vae.model, vae.guide, x, num_samples=3)
    torch.testing.assert_close(bound, exact, rtol=0, atol=1e-9, msg="ELBO, exact guide")


def test_perturbed_guide_estimate_converges_to_the_exact_log_px() -> None:
    vae, x = linear_two_layer(perturb=0.4), _data(10)
    exact = exact_log_px(x)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=20000, diagnostics=True)
    gap = est.log_px - exact
    assert (gap.abs() < 5 * est.stderr + 1e-3).all(), (gap, est.stderr)
    bound = elbo(vae.model, vae.guide, x, num_samples=20000)
    assert (bound < exact - 1e-3).all(), "the ELBO of a perturbed guide is below log p(x)"


def test_top_down_exact_posterior_guide_gives_exact_log_px_and_elbo() -> None:
    vae, x = linear_top_down(), _data()
    exact = exact_log_px(x)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=7)
    torch.testing.assert_close(est, exact, rtol=0, atol=1e-9, msg="log p(x), exact guide")
    bound = elbo(vae.model, vae.guide, x, num_samples=3)
    torch.testing.assert_close(bound, exact, rtol=0, atol=1e-9, msg="ELBO, exact guide")
    # the analytic KL applies at both layers, and its ELBO is exact on average
    assert set(kl_obstacles(vae.model, vae.guide, x[:5]).values()) == {None}
    torch.manual_seed(1)
    mean_field = pyro.infer.TraceMeanField_ELBO(num_particles=40000, vectorize_particles=True)
    loss = mean_field.loss(vae.model, vae.guide, x[:5])  # Monte Carlo sd about 0.015 here
    assert abs(loss + exact[:5].sum().item()) < 0.08, (loss, exact[:5].sum())


def test_top_down_perturbed_guide_estimate_converges_to_the_exact_log_px() -> None:
    vae, x = linear_top_down(perturb=0.4), _data(10)
    exact = exact_log_px(x)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=20000, diagnostics=True)
    gap = est.log_px - exact
    assert (gap.abs() < 5 * est.stderr + 1e-3).all(), (gap, est.stderr)
    bound = elbo(vae.model, vae.guide, x, num_samples=20000)
    assert (bound < exact - 1e-3).all(), "the ELBO of a perturbed guide is below log p(x)"


def test_the_closed_form_kl_applies_at_the_top_layer_only() -> None:
    vae, x = linear_two_layer(), _data(5)
    found = kl_obstacles(vae.model, vae.guide, x)
    assert found["z2"] is None and "draws after it" in found["z1"], found


@pytest.mark.parametrize("objective", [o for o in OBJECTIVES if o != "mean-field"])
def test_two_layers_train_with_every_objective(objective: str) -> None:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((40, 12), 0.3))
    vae = build_vae(x_dim=12, z_dim=4, hidden=(16,), top_z_dim=2, top_hidden=(8,))
    top = [p.detach().clone() for p in vae.top.parameters()]
    particles = 3 if objective.startswith("iwae") else 1
    result = fit(
        vae, x, epochs=2, batch_size=20, objective=objective, particles=particles, progress=False
    )
    assert result.objective != "mean-field"
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    after = list(vae.top.parameters())
    assert any(not torch.equal(a, b) for a, b in zip(top, after, strict=True)), objective


@pytest.mark.parametrize("objective", OBJECTIVES)
def test_top_down_guide_trains_with_every_objective(objective: str) -> None:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((40, 12), 0.3))
    vae = build_vae(
        x_dim=12, z_dim=4, hidden=(16,), top_z_dim=2, top_hidden=(8,), guide_direction="top-down"
    )
    before = [p.detach().clone() for p in vae.encoder.parameters()]
    particles = 3 if objective.startswith("iwae") else 1
    result = fit(
        vae, x, epochs=2, batch_size=20, objective=objective, particles=particles, progress=False
    )
    assert result.objective == ("stl" if objective == "auto" else objective)
    assert all(math.isfinite(r["train_loss"]) for r in result.history)
    after = list(vae.encoder.parameters())
    moved = [not torch.equal(a, b) for a, b in zip(before, after, strict=True)]
    assert all(moved), f"{objective}: some guide tensors did not train: {moved}"


def test_top_down_guide_needs_two_layers() -> None:
    with pytest.raises(ValueError, match="top_z_dim"):
        build_vae(x_dim=4, z_dim=2, hidden=(8,), guide_direction="top-down")
    with pytest.raises(ValueError, match="bottom-up"):
        build_vae(x_dim=4, z_dim=2, top_z_dim=2, guide_direction="sideways")


@pytest.mark.parametrize("direction", ["bottom-up", "top-down"])
@pytest.mark.parametrize("prior", ["mixture", "vamp", "flow"])
@pytest.mark.parametrize("guide", ["gaussian", "flow"])
def test_top_layer_priors_and_guides(prior: str, guide: str, direction: str) -> None:
    torch.manual_seed(0)
    x = torch.bernoulli(torch.full((10, 8), 0.4))
    vae = build_vae(
        x_dim=8,
        z_dim=3,
        hidden=(8,),
        top_z_dim=2,
        top_hidden=(8,),
        prior=prior,
        guide=guide,
        pseudo_inputs=4,
        guide_direction=direction,
    )
    assert vae.prior().event_shape == (2,), "the prior is not on the top layer"
    fit(vae, x, epochs=1, batch_size=5, progress=False)
    est = log_likelihood(vae.model, vae.guide, x, num_samples=100)
    bound = elbo(vae.model, vae.guide, x, num_samples=100)
    assert torch.isfinite(est).all() and est.mean() > bound.mean(), (est, bound)
    assert vae.sample(3).shape == (3, 8) and vae.reconstruct(x).shape == (10, 8)


def test_cli_trains_evaluates_and_draws_the_iwae2_preset(tmp_path, capsys) -> None:
    out = tmp_path / "two"
    argv = ["train", "--dataset", "digits", "--preset", "iwae2", "--epochs", "1"]
    assert main([*argv, "--eval-samples", "20", "--out", str(out), "--no-progress"]) == 0
    assert "TwoLayerVAE" in capsys.readouterr().out
    doc = json.loads((out / "config.json").read_text())
    assert doc["program"]["kwargs"]["top_z_dim"] == 50
    assert main(["evaluate", str(out), "--num-samples", "20", "--json", "--limit", "20"]) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["num_points"] == 20 and metrics["log_likelihood"] < 0
    assert "average_kl" not in metrics, "ELBO surgery needs one latent site 'z'"
    assert metrics["active_units"] >= 0
    for command in ("sample", "reconstruct", "traverse"):
        assert main([command, str(out)]) == 0, command


def test_cli_trains_the_flow_guide_and_refuses_bad_flow_flags(tmp_path, capsys) -> None:
    out = tmp_path / "flow"
    argv = ["train", "--dataset", "digits", "--preset", "small", "--guide", "flow"]
    argv += ["--guide-flow-layers", "1", "--epochs", "1", "--eval-samples", "20", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    assert json.loads((out / "config.json").read_text())["program"]["kwargs"]["guide"] == "flow"
    assert main(["evaluate", str(out), "--num-samples", "20", "--json", "--limit", "10"]) == 0
    capsys.readouterr()
    assert main([*argv, "--guide-flow-layers", "0", "--out", str(tmp_path / "x")]) == 2
    assert "--guide-flow-layers must be at least 1" in capsys.readouterr().err
    assert main([*argv, "--prior", "polymodal", "--out", str(tmp_path / "y")]) == 2
    assert "polymodal" in capsys.readouterr().err


def test_cli_trains_and_evaluates_a_top_down_guide_and_refuses_it_on_one_layer(
    tmp_path, capsys
) -> None:
    out = tmp_path / "down"
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--eval-samples", "20"]
    argv += ["--no-progress", "--guide-direction", "top-down"]
    assert main([*argv, "--preset", "iwae2", "--out", str(out)]) == 0
    assert "TopDownTwoLayerVAE" in capsys.readouterr().out
    kwargs = json.loads((out / "config.json").read_text())["program"]["kwargs"]
    assert kwargs["guide_direction"] == "top-down"
    assert main(["evaluate", str(out), "--num-samples", "20", "--json", "--limit", "20"]) == 0
    assert json.loads(capsys.readouterr().out)["log_likelihood"] < 0
    assert main([*argv, "--preset", "small", "--out", str(tmp_path / "one")]) == 2
    err = capsys.readouterr().err
    assert "--guide-direction top-down" in err and "--preset iwae2" in err, err
    assert len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("build", [linear_two_layer, linear_top_down])
def test_stl_guide_gradient_vanishes_at_the_exact_posterior_of_two_layers(build) -> None:
    """At the exact posterior log p(x, z) - log q(z) is constant in z, so STL's guide gradient
    is zero for every draw. Scoring q(z2|z1) on the live z1 (cancelling a path term with the
    score) would leave the noise of d log p(z1|z2) / dz2 in it."""
    from ppl_vae import STLELBO

    vae, x = build(), _data(8)
    guide_params = [p for n, p in vae.named_parameters() if n.startswith(("encoder", "top"))]
    assert guide_params
    for seed in range(3):
        torch.manual_seed(seed)
        loss = STLELBO().differentiable_loss(vae.model, vae.guide, x)
        grads = torch.autograd.grad(loss, guide_params, allow_unused=True)
        worst = max(float(g.abs().max()) for g in grads if g is not None)
        assert worst < 1e-9, (
            f"{build.__name__}: STL guide gradient {worst:.3g} at the exact posterior"
        )


@pytest.mark.parametrize("vectorize", [False, True])
def test_stl_replay_keeps_the_rows_of_a_subsampled_plate(vectorize: bool) -> None:
    """The replay that scores a several-site guide must see the rows the draws were made on:
    Pyro drops a plate's subsample indices from the trace it scores, and a replay without them
    would score z1 on other rows of x, leaving a gradient at the exact posterior."""
    import pyro.distributions as dist

    from ppl_vae import STLELBO

    vae, x = linear_two_layer(), _data(40)

    def model(x: torch.Tensor) -> None:
        with pyro.plate("data", len(x), subsample_size=8) as rows:
            z2 = pyro.sample("z2", dist.Normal(torch.zeros(1, dtype=DTYPE), 1.0).to_event(1))
            z1 = pyro.sample("z1", vae.upper(z2))
            pyro.sample("x", vae.decoder(z1), obs=x[rows])

    def guide(x: torch.Tensor) -> None:
        with pyro.plate("data", len(x), subsample_size=8) as rows:
            z1 = pyro.sample("z1", vae.encoder(x[rows]))
            pyro.sample("z2", vae.top(z1))

    guide_params = [*vae.encoder.parameters(), *vae.top.parameters()]
    objective = STLELBO(num_particles=3, vectorize_particles=vectorize, max_plate_nesting=1)
    for seed in range(3):
        torch.manual_seed(seed)
        loss = objective.differentiable_loss(model, guide, x)
        grads = torch.autograd.grad(loss, guide_params)
        worst = max(float(g.abs().max()) for g in grads)
        assert worst < 1e-9, f"STL guide gradient {worst:.3g} at the exact posterior"
