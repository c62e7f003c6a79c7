"""fit's traced and compiled steps (``compile=``, ppl_vae.training.traced) against the eager
step: the same parameters to the bit (traced) or to float rounding (compiled), the fallback for a
step that cannot be traced, the check that catches a stale graph, and exact resume."""

from __future__ import annotations

import copy

import pyro
import pyro.distributions as dist
import pytest
import torch
from programs import ExampleVAE

from ppl_vae import build_vae, fit
from ppl_vae.data.datasets import load_dataset
from ppl_vae.runtime.compiler import compiler_available


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits", binarization="dynamic")


def flat(module) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for p in module.parameters()])


def twins(fn, **kw):
    torch.manual_seed(0)
    base = fn(**kw)
    return base, copy.deepcopy(base)


@pytest.mark.parametrize(
    "options",
    [
        {"objective": "mean-field"},
        {"objective": "stl", "warmup": 2.5},  # the weighted graph, then the weight-1 one
        {"objective": "elbo", "particles": 3},
        {"objective": "iwae", "particles": 4},
        {"objective": "stl", "beta": 0.5},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_traced_steps_give_the_eager_parameters_to_the_bit(digits, options):
    eager, traced = twins(build_vae, x_dim=64, z_dim=4, hidden=(32,))
    a = fit(eager, digits, epochs=3, progress=False, compile="off", **options)
    b = fit(traced, digits, epochs=3, progress=False, compile="trace", **options)
    assert a.step_mode == "eager"
    assert b.step_mode.startswith("traced"), b.step_mode
    assert torch.equal(flat(eager), flat(traced))
    for h, g in zip(a.history, b.history, strict=True):  # values to float rounding
        assert h["train_loss"] == pytest.approx(g["train_loss"], rel=1e-6)
        assert h["val_loss"] == g["val_loss"]  # validation runs eagerly in both


def test_a_user_program_is_traced_after_an_epoch_with_pyros_checks(digits):
    eager, traced = twins(ExampleVAE, x_dim=64)
    pyro.clear_param_store()
    fit(eager.model, eager.guide, digits, epochs=3, progress=False, compile="off")
    pyro.clear_param_store()
    one = fit(traced.model, traced.guide, digits, epochs=1, progress=False, compile="trace")
    assert one.step_mode == "eager"  # epoch 1 runs with Pyro's checks, eagerly
    result = fit(traced.model, traced.guide, digits, epochs=2, progress=False, compile="trace")
    assert result.step_mode.startswith("traced"), result.step_mode
    assert not torch.equal(flat(eager), flat(traced))  # 3 epochs against 1 + 2 (new Adam)...
    again = copy.deepcopy(traced)
    pyro.clear_param_store()
    fit(again.model, again.guide, digits, epochs=2, progress=False, compile="off")
    pyro.clear_param_store()
    fit(traced.model, traced.guide, digits, epochs=2, progress=False, compile="trace")
    assert torch.equal(flat(again), flat(traced))  # ...but the same 2 epochs agree to the bit


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compiled_steps_give_the_eager_parameters_to_float_rounding(digits):
    eager, compiled = twins(build_vae, x_dim=64, z_dim=4, hidden=(32,))
    fit(eager, digits, epochs=3, progress=False, compile="off")
    result = fit(compiled, digits, epochs=3, progress=False, compile="compile")
    assert result.step_mode.startswith("compiled"), result.step_mode
    a, b = flat(eager), flat(compiled)
    assert not torch.equal(a, b)  # the fused kernels round differently...
    torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-5)  # ...and only that


def _valued_model(x):  # reads a value of the batch: cannot be traced
    decoder = pyro.module("dec", _NETS["dec"])
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
        logits = decoder(z)
        if x.mean().item() > 2.0:  # never true, but only a value can say so
            logits = logits * 2
        pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)


def _guide(x):
    encoder = pyro.module("enc", _NETS["enc"])
    with pyro.plate("data", x.shape[0]):
        loc, log_scale = encoder(x).chunk(2, -1)
        pyro.sample("z", dist.Normal(loc, log_scale.exp()).to_event(1))


_NETS: dict[str, torch.nn.Module] = {}


def _nets():
    torch.manual_seed(0)
    _NETS["dec"] = torch.nn.Linear(2, 64)
    _NETS["enc"] = torch.nn.Linear(64, 4)


def test_a_step_that_reads_a_value_runs_eagerly_and_says_why(digits, capsys):
    _nets()
    pyro.clear_param_store()
    fit(_valued_model, _guide, digits, epochs=2, progress=False, compile="off")
    eager = [flat(net).clone() for net in _NETS.values()]
    _nets()
    pyro.clear_param_store()
    result = fit(_valued_model, _guide, digits, epochs=2, progress=True, compile="trace")
    assert result.step_mode.startswith("eager steps: the traced step could not be traced")
    assert "epoch 2: eager steps: the traced step could not" in capsys.readouterr().out
    for a, net in zip(eager, _NETS.values(), strict=True):
        assert torch.equal(a, flat(net))


def test_a_graph_gone_stale_is_caught_at_the_next_epoch(digits):
    """A program whose structure follows Python state: the replay is checked against the
    eager step at the first step of every epoch, and the run goes back to eager steps."""
    factor = [1.0]

    def model(x):
        decoder = pyro.module("dec", _NETS["dec"])
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(2), 1.0).to_event(1))
            logits = decoder(z) * factor[0]  # a Python number, baked into the graph
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def bump(epoch, step, loss):
        if step == 0:
            factor[0] = 1.0 + epoch

    _nets()
    pyro.clear_param_store()
    result = fit(model, _guide, digits, epochs=4, progress=False, compile="trace", callback=bump)
    assert "did not match the eager step" in result.step_mode, result.step_mode


def test_auto_compiles_only_long_epochs(digits):
    vae = build_vae(64, z_dim=4, hidden=(32,))
    assert fit(vae, digits, epochs=2, progress=False).step_mode == "eager"  # short epochs


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compiled_iwae_steps_give_the_eager_parameters_to_float_rounding(digits):
    # compile="auto" compiles the IWAE bound too on long epochs: the same update as eager
    eager, compiled = twins(build_vae, x_dim=64, z_dim=4, hidden=(32,))
    settings = {"objective": "iwae", "particles": 5, "epochs": 3, "progress": False}
    fit(eager, digits, compile="off", **settings)
    result = fit(compiled, digits, compile="compile", **settings)
    assert result.step_mode.startswith("compiled"), result.step_mode
    torch.testing.assert_close(flat(compiled), flat(eager), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "mode",
    [
        "trace",
        pytest.param(
            "compile",
            marks=pytest.mark.skipif(not compiler_available(), reason="needs a C++ compiler"),
        ),
    ],
)
def test_a_traced_or_compiled_run_resumes_exactly(digits, tmp_path, mode):
    straight, broken = twins(build_vae, x_dim=64, z_dim=4, hidden=(32,))
    fit(straight, digits, epochs=3, out=tmp_path / "a", progress=False, compile=mode)

    def interrupt(epoch, step, loss):
        if (epoch, step) == (1, 5):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(broken, digits, epochs=3, out=tmp_path / "b", progress=False, compile=mode,
            callback=interrupt)  # fmt: skip
    resumed = build_vae(64, z_dim=4, hidden=(32,))
    fit(resumed, digits, epochs=3, out=tmp_path / "b", progress=False, compile=mode,
        resume=True)  # fmt: skip
    assert torch.equal(flat(straight), flat(resumed))
