"""The fast softplus and Bernoulli log-likelihood against torch's and Pyro's, and the built-in
VAE with them against the same VAE with nn.Softplus and Pyro's Bernoulli (and float64)."""

from __future__ import annotations

import pyro.distributions as dist
import pytest
import torch

from ppl_vae import build_vae, fit, log_likelihood
from ppl_vae.data.splits import binarize
from ppl_vae.models.reference import plain_copy
from ppl_vae.runtime.compiler import compiler_available
from ppl_vae.runtime.kernels import (
    FastBernoulli,
    _set_everywhere,
    bernoulli,
    flush_denormals,
    flushing_denormals,
    fused_elementwise,
    softplus,
)


def test_softplus_matches_torch_to_the_float_resolution_at_one():
    # a few units in the last place of values near 1 (float32: 2^-24 = 6e-8), not more
    for dtype, atol in ((torch.float32, 1.2e-7), (torch.float64, 2.3e-16)):
        h = torch.linspace(-120, 120, 480_001, dtype=dtype)
        # the reference in float64 with log1p (F.softplus returns h itself above 20, which in
        # float64 is 2e-9 off)
        exact = h.double().clamp(min=0) + torch.log1p(torch.exp(-h.double().abs()))
        error = (softplus(h).double() - exact).abs()
        scale = h.double().abs().clamp(min=1)
        assert (error / scale).max() <= 2 * atol, (dtype, (error / scale).max().item())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("shape", [(1,), (7,), (100, 784), (37, 3, 5), (3000, 784)])
def test_bernoulli_draws_are_torch_bernoullis(dtype, shape):
    """The same 0/1 draws as torch.bernoulli, call after call, and the generator left where
    torch.bernoulli leaves it (its next uniforms agree)."""
    p = torch.rand(shape, dtype=dtype)
    p[..., 0] = 0.0  # never drawn
    p.view(-1)[-1] = 1.0  # always drawn
    mine, torchs = torch.Generator().manual_seed(3), torch.Generator().manual_seed(3)
    for _ in range(3):
        x = bernoulli(p, mine)
        assert x.dtype == dtype and x.shape == p.shape
        assert torch.equal(x, torch.bernoulli(p, generator=torchs))
    assert torch.equal(torch.rand(5, generator=mine), torch.rand(5, generator=torchs))
    torch.manual_seed(1)  # torch's global generator alike
    x = bernoulli(p)
    torch.manual_seed(1)
    assert torch.equal(x, torch.bernoulli(p))


def test_bernoulli_of_a_non_contiguous_tensor_and_binarize_are_torch_bernoullis():
    p = torch.rand(40, 30).t()  # drawn by torch.bernoulli itself, in its own element order
    for draw in (bernoulli, lambda p, g: binarize(p, "static", g)):
        mine, torchs = torch.Generator().manual_seed(4), torch.Generator().manual_seed(4)
        assert torch.equal(draw(p, mine), torch.bernoulli(p, generator=torchs))
    with pytest.raises(ValueError, match=r"grey levels in \[0, 1\], got values in \[0, 2\]"):
        binarize(torch.tensor([[0.0, 2.0]]), "dynamic")


def test_softplus_gradient_is_the_sigmoid():
    h = torch.randn(50, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(softplus, (h,))
    (g,) = torch.autograd.grad(softplus(h).sum(), h)
    torch.testing.assert_close(g, torch.sigmoid(h), atol=0, rtol=0)
    zero = torch.zeros(1, requires_grad=True)
    softplus(zero).backward()
    assert zero.grad.item() == 0.5, "d softplus / dh at 0"


@pytest.mark.parametrize("dtype, atol", [(torch.float32, 2e-5), (torch.float64, 1e-12)])
def test_fast_bernoulli_log_prob_equals_pyros(dtype, atol):
    logits = (torch.randn(64, 30, dtype=dtype) * 8).requires_grad_()
    x = torch.rand(64, 30).bernoulli().to(dtype)
    fast = FastBernoulli(logits=logits).to_event(1)
    plain = dist.Bernoulli(logits=logits).to_event(1)
    torch.testing.assert_close(fast.log_prob(x), plain.log_prob(x), atol=atol, rtol=0)
    (g_fast,) = torch.autograd.grad(fast.log_prob(x).sum(), logits)
    (g_plain,) = torch.autograd.grad(plain.log_prob(x).sum(), logits)
    torch.testing.assert_close(g_fast, g_plain, atol=atol, rtol=0)
    assert fast.expand([2, 64]).batch_shape == (2, 64)


def test_fast_bernoulli_gradients_in_the_logits_and_the_value_pass_gradcheck():
    # the hand-written backward, against finite differences, with the value broadcast over
    # particles as the IWAE step has it, and a grey-level value that needs its own gradient
    logits = (torch.randn(3, 4, 5, dtype=torch.float64) * 6).requires_grad_()
    value = torch.rand(4, 5, dtype=torch.float64, requires_grad=True)

    def log_prob(logits, value):
        return FastBernoulli(logits=logits, validate_args=False).log_prob(value)

    assert torch.autograd.gradcheck(log_prob, (logits, value))
    expected = value * logits - torch.nn.functional.softplus(logits)
    torch.testing.assert_close(log_prob(logits, value), expected, atol=1e-12, rtol=0)


def test_fast_bernoulli_still_validates_the_value():
    with pytest.raises(ValueError, match="support"):
        FastBernoulli(logits=torch.zeros(3), validate_args=True).log_prob(torch.tensor(0.5))


def _vae():
    torch.manual_seed(0)
    return build_vae(784, preset="seed")


def test_log_p_x_given_z_matches_float64_plain_to_1e_3_nats():
    vae, x = _vae(), torch.rand(40, 784).bernoulli()
    z = torch.randn(40, 50)
    fast = vae.decoder(z).log_prob(x)  # float32, fast ops
    exact = plain_copy(vae).double().decoder(z.double()).log_prob(x.double())
    assert (fast.double() - exact).abs().max() < 1e-3, (fast.double() - exact).abs().max()


def test_log_likelihood_equals_the_plain_operations_with_the_same_draws():
    vae, x = _vae(), torch.rand(12, 784).bernoulli()
    fast = log_likelihood(vae.model, vae.guide, x, num_samples=300, seed=3)
    plain_vae = plain_copy(vae)
    plain = log_likelihood(plain_vae.model, plain_vae.guide, x, num_samples=300, seed=3)
    torch.testing.assert_close(fast, plain, atol=2e-4, rtol=0)


def test_training_steps_equal_the_plain_operations():
    x = torch.rand(300, 784).bernoulli()
    vae = _vae()
    plain_vae = plain_copy(vae)
    runs = [
        fit(v, x, epochs=1, batch_size=100, progress=False, seed=1).history[0]["train_loss"]
        for v in (vae, plain_vae)
    ]
    assert runs[0] == pytest.approx(runs[1], abs=1e-3), runs
    for (name, a), (_, b) in zip(
        vae.named_parameters(), plain_vae.named_parameters(), strict=True
    ):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0, msg=name)


@pytest.mark.skipif(not compiler_available(), reason="torch.compile needs a C++ compiler")
def test_compiled_kernels_give_the_plain_estimates_and_leave_gradients_alone():
    """log_likelihood(compile=True) runs the softplus and the likelihood as compiled kernels:
    the plain (nn.Softplus, Pyro's Bernoulli) estimates on the same draws, to float32
    rounding; with gradients on, the kernels are not used."""
    vae, x = _vae(), torch.rand(12, 784).bernoulli()
    compiled = log_likelihood(vae.model, vae.guide, x, num_samples=300, seed=3, compile=True)
    plain_vae = plain_copy(vae)
    plain = log_likelihood(plain_vae.model, plain_vae.guide, x, num_samples=300, seed=3)
    torch.testing.assert_close(compiled, plain, atol=3e-4, rtol=0)
    h = torch.randn(64, 30, requires_grad=True)
    with fused_elementwise():
        (g,) = torch.autograd.grad(softplus(h).sum(), h)  # the autograd function, as outside
        torch.testing.assert_close(g, torch.sigmoid(h), atol=0, rtol=0)
        with torch.no_grad():  # the kernel: the same values to rounding
            torch.testing.assert_close(softplus(h), torch.nn.functional.softplus(h))


#: 4M subnormal floats, made before any test flushes (made under flush-to-zero they are 0)
_TINY = torch.full((1 << 22,), 1e-39)


def _subnormal_products() -> int:
    """How many of 4M products 1e-39 * 1 stay subnormal (a large op: every torch thread works),
    counted by their bits (a float comparison would read subnormals as 0 where they flush)."""
    assert int((_TINY.view(torch.int32) != 0).sum()) == 1 << 22
    product = _TINY * torch.ones_like(_TINY)
    return int((product.view(torch.int32) != 0).sum())


@pytest.fixture
def two_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(before)


def test_flush_denormals_reaches_torchs_worker_threads_and_restores_them(two_threads):
    if not torch.set_flush_denormal(False):
        pytest.skip("this processor cannot flush subnormal floats")
    assert not flushing_denormals() and _subnormal_products() == 1 << 22
    with flush_denormals():
        # torch.set_flush_denormal alone sets the calling thread: half of them would stay
        assert flushing_denormals() and _subnormal_products() == 0
        with flush_denormals():
            assert _subnormal_products() == 0
        assert _subnormal_products() == 0  # the inner block found it on and left it on
    assert not flushing_denormals() and _subnormal_products() == 1 << 22
    with flush_denormals(False):
        assert _subnormal_products() == 1 << 22
    # torch's own switch, thrown after its threads started, leaves the workers out...
    torch.set_flush_denormal(True)
    try:
        assert flushing_denormals() and _subnormal_products() > 0
        with flush_denormals():
            assert _subnormal_products() == 0  # ...and this reaches them anyway
        assert _subnormal_products() == 0  # the calling thread's setting, now on all of them
    finally:
        _set_everywhere(False)


def test_fit_trains_under_flush_to_zero_unless_told_to_keep_subnormals(two_threads):
    if not torch.set_flush_denormal(False):
        pytest.skip("this processor cannot flush subnormal floats")
    torch.manual_seed(0)
    vae = build_vae(784, z_dim=2, hidden=(16,))
    x = (torch.rand(40, 784) < 0.3).float()
    for setting, expected in (("flush", 0), ("keep", 1 << 22)):
        seen: list[int] = []
        record = seen.append
        fit(
            vae,
            x,
            epochs=1,
            batch_size=20,
            progress=False,
            denormals=setting,
            callback=lambda *_, record=record: record(_subnormal_products()),
        )
        assert seen == [expected, expected], setting
        assert not flushing_denormals()  # as it was before fit
    with flush_denormals():
        fit(vae, x, epochs=1, batch_size=20, progress=False, denormals="keep")
        assert flushing_denormals()  # fit leaves the caller's setting alone


def test_an_unknown_denormals_setting_is_refused_naming_the_flag():
    vae = build_vae(784, z_dim=2, hidden=(16,))
    with pytest.raises(
        ValueError, match=r"denormals must be one of \['flush', 'keep'\].*--denormals"
    ):
        fit(vae, torch.zeros(10, 784), epochs=1, progress=False, denormals="sometimes")
