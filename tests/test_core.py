"""The core: the VAE as Pyro programs, the analytic-KL ELBO against closed forms, fit, resume."""

import math

import pyro
import pyro.distributions as dist
import pyro.poutine as poutine
import pytest
import torch
from linear_gaussian import gaussian_kl, make_linear_gaussian
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO
from pyro.poutine.messenger import Messenger

from ppl_vae import build_vae, kl_weight
from ppl_vae.data.datasets import load_dataset
from ppl_vae.objectives.analytic import AnalyticKLELBO
from ppl_vae.objectives.factory import make_objective
from ppl_vae.objectives.stl import STLELBO
from ppl_vae.training.engines import negative_bound
from ppl_vae.training.trainer import fit


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", binarization="dynamic")


def small_vae(x_dim=64, **kw):
    return build_vae(x_dim, z_dim=4, hidden=(32,), **kw)


def lg_setup():
    lg = make_linear_gaussian(d=2, D=3, s=0.5)
    x = lg.sample(6)
    return lg, lg.perturbed_guide(0.3), x


def test_vae_is_a_pyro_program_with_fixed_sites():
    vae = small_vae()
    x = torch.bernoulli(torch.full((5, 64), 0.3))
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    model_trace = poutine.trace(poutine.replay(vae.model, guide_trace)).get_trace(x)
    assert guide_trace.nodes["z"]["value"].shape == (5, 4)
    assert model_trace.nodes["x"]["is_observed"]
    assert model_trace.nodes["x"]["fn"].event_shape == (64,)
    assert model_trace.nodes["z"]["fn"].event_shape == (4,)
    assert [f.name for f in model_trace.nodes["x"]["cond_indep_stack"]] == ["data"]


def test_analytic_kl_elbo_is_exact_given_the_draw():
    """loss = -(log p(x | z) - KL(q || p(z))) in closed form, z the draw the ELBO made."""
    lg, guide, x = lg_setup()
    pyro.set_rng_seed(3)
    loss = AnalyticKLELBO().differentiable_loss(lg.model, guide, x)
    pyro.set_rng_seed(3)
    z = poutine.trace(guide).get_trace(x).nodes["z"]["value"]
    log_lik = dist.Normal(z @ lg.W.T + lg.b, lg.s).log_prob(x).sum(-1)
    eye = torch.eye(2, dtype=x.dtype)
    kl = gaussian_kl(guide.loc(x), guide.cov(), torch.zeros_like(guide.loc(x)), eye)
    torch.testing.assert_close(loss, -(log_lik - kl).sum(), rtol=1e-12, atol=1e-10)
    pyro.set_rng_seed(3)
    pyro_loss = TraceMeanField_ELBO().differentiable_loss(lg.model, guide, x)
    torch.testing.assert_close(loss, pyro_loss, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("objective", [AnalyticKLELBO(), Trace_ELBO()], ids=["mean-field", "mc"])
def test_elbo_matches_closed_form_in_expectation(objective):
    lg, guide, x = lg_setup()
    exact = lg.elbo(guide, x).sum().item()
    draws = torch.tensor([-objective.loss(lg.model, guide, x) for _ in range(400)])
    mean, se = draws.mean().item(), draws.std().item() / math.sqrt(len(draws))
    assert abs(mean - exact) < 4 * se, f"mean {mean:.4f} vs exact {exact:.4f}, 4 SE = {4 * se:.4f}"
    assert se > 0  # a Monte Carlo estimate, not a constant


def test_analytic_kl_has_lower_variance_than_sampled_kl():
    lg, guide, x = lg_setup()
    mf = torch.tensor([AnalyticKLELBO().loss(lg.model, guide, x) for _ in range(200)])
    mc = torch.tensor([Trace_ELBO().loss(lg.model, guide, x) for _ in range(200)])
    assert mf.var() < mc.var(), f"analytic-KL variance {mf.var():.4f} >= sampled {mc.var():.4f}"


@pytest.mark.parametrize("likelihood", ["bernoulli", "continuous-bernoulli", "gaussian"])
def test_analytic_kl_elbo_equals_pyro_mean_field_on_the_vae(likelihood):
    vae = small_vae(likelihood=likelihood, learn_scale=likelihood == "gaussian")
    x = torch.rand(7, 64).round() if likelihood == "bernoulli" else torch.rand(7, 64)
    pyro.set_rng_seed(5)
    ours = AnalyticKLELBO().differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(5)
    theirs = TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-4)
    ours.backward()
    assert all(p.grad is not None for p in vae.parameters()), "a parameter got no gradient"


def test_beta_scales_only_the_kl():
    x = torch.rand(7, 64).round()
    vae = small_vae()
    pyro.set_rng_seed(1)
    guide_trace = poutine.trace(vae.guide).get_trace(x)
    q = guide_trace.nodes["z"]["fn"]
    kl = torch.distributions.kl_divergence(q, vae.prior()).sum()
    pyro.set_rng_seed(1)
    l1 = AnalyticKLELBO().differentiable_loss(vae.model, vae.guide, x)
    pyro.set_rng_seed(1)
    l3 = AnalyticKLELBO().differentiable_loss(kl_weight(vae.model, 3), kl_weight(vae.guide, 3), x)
    torch.testing.assert_close(l3 - l1, 2 * kl, rtol=1e-5, atol=1e-4)


def test_auto_objective_is_stl_and_mean_field_is_refused_without_a_closed_form():
    for sites in ({"z": True}, {"z": True, "w": False}):
        assert isinstance(make_objective("auto", closed_form_kl=sites), STLELBO)
    assert type(make_objective("mean-field", closed_form_kl={"z": True})) is AnalyticKLELBO
    with pytest.raises(
        ValueError, match="closed-form KL, which latent site 'w' lacks: no kl_divergence"
    ):
        make_objective("mean-field", closed_form_kl={"z": True, "w": False})


def test_training_lowers_the_validation_loss(digits):
    torch.manual_seed(0)
    vae = small_vae()
    objective = AnalyticKLELBO()
    before = negative_bound(vae, digits.val, objective)
    result = fit(vae, digits, epochs=8, objective="mean-field", progress=False)
    after = negative_bound(vae, digits.val, objective)
    assert after < before - 8, f"validation loss {before:.2f} -> {after:.2f}, not 8 nats lower"
    assert result.history[-1]["val_loss"] == pytest.approx(after)


def test_fast_engine_takes_the_same_steps_as_pyro_svi(digits):
    """One torch Adam over all parameters = SVI's per-parameter Adams; same draws, same steps.

    SVI minimises the summed loss and the fast engine the per-point mean; Adam is invariant to
    that scale except through its eps, so the parameters agree to about 1e-4, not bitwise.
    """
    x = digits.val  # binary; a fixed dataset
    states = []
    for engine in ("fast", "svi"):
        torch.manual_seed(0)
        vae = small_vae()
        fit(vae, x, epochs=2, batch_size=60, engine=engine, progress=False)
        states.append(vae.state_dict())
    for name in states[0]:
        torch.testing.assert_close(states[0][name], states[1][name], rtol=1e-3, atol=2e-4)


def _states_equal(a, b):
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), f"parameter {name} differs after resume"


@pytest.mark.parametrize(
    "stop_at, options",
    [
        ((1, 4), {}),
        ((0, 14), {}),
        ((1, 4), {"engine": "svi"}),
        ((1, 4), {"warmup": 2.5}),
    ],
    ids=["mid-epoch", "epoch-end", "svi-engine", "during-warm-up"],
)
def test_interrupted_then_resumed_run_equals_uninterrupted(digits, tmp_path, stop_at, options):
    torch.manual_seed(0)
    straight = small_vae()
    initial = {k: v.clone() for k, v in straight.state_dict().items()}
    full = fit(straight, digits, epochs=3, out=tmp_path / "a", progress=False, **options)

    def interrupt(epoch, step, loss):
        if (epoch, step) == stop_at:
            raise KeyboardInterrupt

    broken = small_vae()
    broken.load_state_dict(initial)
    with pytest.raises(KeyboardInterrupt):
        fit(
            broken,
            digits,
            epochs=3,
            out=tmp_path / "b",
            callback=interrupt,
            progress=False,
            **options,
        )
    resumed = small_vae()  # a fresh process would start from new random weights
    again = fit(
        resumed, digits, epochs=3, out=tmp_path / "b", resume=True, progress=False, **options
    )
    _states_equal(straight.state_dict(), resumed.state_dict())
    untimed = [
        [{k: v for k, v in h.items() if k != "seconds"} for h in r.history] for r in (again, full)
    ]
    assert untimed[0] == untimed[1]
    lines = (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3


def test_resume_with_other_settings_is_refused(digits, tmp_path):
    from ppl_vae.training.checkpoint import CheckpointError

    fit(small_vae(), digits, epochs=1, out=tmp_path, progress=False)
    with pytest.raises(CheckpointError, match="batch_size"):
        fit(small_vae(), digits, epochs=2, batch_size=7, out=tmp_path, resume=True, progress=False)
    fit(small_vae(), digits, epochs=2, out=tmp_path, resume=True, progress=False)  # more epochs ok


def test_patience_returns_the_best_weights_even_when_the_epochs_run_out(digits):
    vae = small_vae()
    result = fit(
        vae, digits, epochs=15, patience=100, lr=3e-2, objective="mean-field", progress=False
    )
    assert not result.stopped_early
    last, best = result.history[-1]["val_loss"], result.best_val_loss
    assert best < last, "this setting was chosen for a last epoch worse than the best"
    assert negative_bound(vae, digits.val, AnalyticKLELBO()) == pytest.approx(best, abs=1e-4)


def test_early_stopping_restores_the_best_weights(digits):
    vae = small_vae()
    result = fit(
        vae, digits, epochs=50, patience=1, lr=3e-2, objective="mean-field", progress=False
    )
    assert result.stopped_early
    best = min(h["val_loss"] for h in result.history)
    assert result.best_val_loss == pytest.approx(best)
    assert negative_bound(vae, digits.val, AnalyticKLELBO()) == pytest.approx(best, abs=1e-4)


class _LatentScales(Messenger):
    """Records the scale of site "z" as the outermost handlers left it."""

    def __init__(self):
        super().__init__()
        self.scales = []

    def _postprocess_message(self, msg):
        if msg["type"] == "sample" and msg["name"] == "z":
            self.scales.append(float(msg["scale"]))


def test_warmup_ramps_the_kl_weight_linearly_per_step(digits):
    """The KL weight is a handler around the program: the guide's latent site sees it."""
    vae = small_vae()
    steps = math.ceil(len(digits.train) / 100)
    recorder = _LatentScales()
    seen = []
    fit(
        vae.model,
        recorder(vae.guide),
        digits,
        epochs=3,
        beta=2.0,
        warmup=1.5,
        progress=False,
        callback=lambda *_: seen.append(recorder.scales[-1]),
    )
    expected = [
        2.0 * min(1.0, (e + (s + 1) / steps) / 1.5) for e in range(3) for s in range(steps)
    ]
    torch.testing.assert_close(torch.tensor(seen), torch.tensor(expected), rtol=0, atol=1e-12)
    assert seen[0] == pytest.approx(2.0 / (1.5 * steps)) and seen[-1] == 2.0


def test_warmup_is_refused_with_iwae_and_negative_values(digits):
    with pytest.raises(ValueError, match="warmup=0 with iwae"):
        fit(small_vae(), digits, epochs=1, warmup=2, objective="iwae", particles=2)
    with pytest.raises(ValueError, match="warmup must be"):
        fit(small_vae(), digits, epochs=1, warmup=-1)


def test_patience_counts_only_after_the_warm_up(digits):
    """lr=0: the validation loss never improves after epoch 1, so patience=1 stops at epoch 2,
    or with a 3-epoch warm-up at epoch 4, the first epoch after it."""
    for warmup, epochs in ((0, 2), (3, 4)):
        result = fit(
            small_vae(), digits, epochs=8, patience=1, warmup=warmup, lr=0.0, progress=False
        )
        assert result.stopped_early and len(result.history) == epochs, (
            f"warmup={warmup}: stopped after {len(result.history)} epochs, expected {epochs}"
        )


def test_two_models_under_one_name_each_train_under_svi():
    """Pyro's store keeps the first module under a name; SVI on a second model of the same
    name would step the first one's tensors and leave its own untouched."""
    x = torch.bernoulli(torch.full((3, 64), 0.5))
    models = small_vae(), small_vae()  # both named "vae"
    optim = pyro.optim.Adam({"lr": 0.1})
    for _ in range(2):
        for vae in models:
            svi = pyro.infer.SVI(vae.model, vae.guide, optim, Trace_ELBO())
            before = [p.detach().clone() for p in vae.parameters()]
            svi.step(x)
            moved = [not torch.equal(b, p) for b, p in zip(before, vae.parameters(), strict=True)]
            assert all(moved), "SVI left this model's parameters unchanged"


def test_train_loss_is_the_mean_of_the_epochs_step_losses(digits):
    """Regression: the step count was not reset between epochs, halving epoch 2's figure."""
    losses = {}
    result = fit(
        small_vae(),
        digits,
        epochs=3,
        progress=False,
        callback=lambda e, s, loss: losses.setdefault(e, []).append(loss),
    )
    for h in result.history:
        steps = losses[h["epoch"] - 1]
        assert h["train_loss"] == pytest.approx(sum(steps) / len(steps), rel=1e-12)


def test_history_has_the_bounds_two_terms_and_the_curves_show_them(digits, tmp_path):
    from PIL import Image

    from ppl_vae.evaluation.pictures import plot_curves

    result = fit(small_vae(), digits, epochs=2, progress=False)
    for h in result.history:
        elbo_from_terms = h["val_reconstruction"] - h["val_kl"]
        assert h["val_kl"] > 0 and abs(-elbo_from_terms - h["val_loss"]) < 1.0, h
    plot_curves(result.history, tmp_path / "c.png")
    with Image.open(tmp_path / "c.png") as im:
        assert im.size[0] == 1140, "two panels: the loss and its two terms"


@pytest.mark.parametrize("objective", ["mean-field", "stl"])
def test_later_epochs_skip_pyros_checks_with_the_same_numbers(digits, monkeypatch, objective):
    """After one full epoch over in-memory rows, fit runs with Pyro's validation off: the
    same losses and weights as a run that checks every step, and the checks are on again
    after fit returns."""
    from ppl_vae.training import epoch as epoch_module

    seen, real = [], epoch_module.checks_skippable

    def spy(state, feed):
        seen.append(real(state, feed))
        return seen[-1]

    runs = []
    for skip in (True, False):
        torch.manual_seed(0)
        vae = small_vae()
        rule = spy if skip else lambda state, feed: False
        monkeypatch.setattr(epoch_module, "checks_skippable", rule)
        runs.append((fit(vae, digits, epochs=3, objective=objective, progress=False), vae))
    assert seen == [False, True, True]
    assert pyro.poutine.util.is_validation_enabled()
    assert [h["train_loss"] for h in runs[0][0].history] == [
        h["train_loss"] for h in runs[1][0].history
    ]
    _states_equal(runs[0][1].state_dict(), runs[1][1].state_dict())


def test_a_dataloader_keeps_pyros_checks_every_epoch(digits, monkeypatch):
    from torch.utils.data import DataLoader, TensorDataset

    from ppl_vae.training import epoch as epoch_module

    real, seen = epoch_module.checks_skippable, []

    def spy(state, feed):
        seen.append(real(state, feed))
        return seen[-1]

    monkeypatch.setattr(epoch_module, "checks_skippable", spy)
    loader = DataLoader(TensorDataset(torch.bernoulli(digits.train[:200])), batch_size=50)
    fit(small_vae(), loader, epochs=2, progress=False)
    assert seen == [False, False]
