"""The softplus and the Bernoulli log-likelihood without ``log1p``, which on the CPU builds we
run is not vectorized and dominates both training and log p(x) (profile in
benchmarks/README.md).

.. math::

    \\operatorname{softplus}(h) = \\max(h, 0) + \\log\\bigl(1 + e^{-|h|}\\bigr), \\qquad
    \\log \\operatorname{Bernoulli}(x; \\sigma(h)) = x h - \\operatorname{softplus}(h).

``1 + e^{-|h|}`` lies in (1, 2], where ``log`` is well conditioned; ``log(1 + e)`` instead of
``log1p(e)`` loses only ``e`` itself when ``e`` is below the float's resolution, an absolute
error under 6e-8 (float32), the size of ``log1p``'s own rounding. Measured on a 2048 x 784
block, 2 threads (AMD EPYC, torch 2.14.1): 1.5 ms against 8.1 ms for ``F.softplus`` and
9.1 ms for ``binary_cross_entropy_with_logits``, with the same largest error against float64
(5.3e-7 and 5.4e-7). The backward pass is ``sigmoid(h)``, exact, from the saved input alone.

:func:`bernoulli` draws x ~ Bernoulli(p) as ``torch.bernoulli`` does on the CPU, one uniform
per element in memory order, ``u < p``, but through the uniform kernel, so the draws are the
same bit for bit and faster: a batch of 100 MNIST digits inside ``fit`` took 231 against
314 us, a 100 x 784 block of uniform probabilities 215 against 780 us (2 threads).

:func:`flush_denormals` sets subnormal floats (below 1.2e-38 in float32) to zero on the CPU,
on the calling thread and on torch's OpenMP worker threads: the processor's flush-to-zero and
denormals-are-zero modes, which ``torch.set_flush_denormal`` sets on the calling thread alone.
On x86 one subnormal operand costs a microcode assist of a hundred cycles or more. The IWAE
gradient makes them: the normalized weight of a poor particle, times the pixel's residual, is
often below 1e-38: in k = 50 training of the seed network, 0.2% of the decoder's output
gradient was subnormal at step 100 and 2.7% at step 200, and the hand-written step went from
70 to 195 ms, pythae's from 87 to 329 ms (Intel Xeon, 2 threads; benchmarks/README.md). A
value that small is below float32's resolution next to any weight that matters (the weights
sum to 1), so flushing it changes no sum beyond rounding.
"""

from __future__ import annotations

import ctypes
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pyro.distributions as dist
import torch
from torch import Tensor, nn
from torch.distributions.utils import broadcast_all

__all__ = [
    "FastBernoulli",
    "Softplus",
    "bernoulli",
    "flush_denormals",
    "flushing_denormals",
    "fused_elementwise",
    "softplus",
]


#: inside :func:`fused_elementwise`: how deep, and the compiled kernels once built
_FUSED: dict[str, Any] = {"depth": 0}


def _log1p_exp_minus_abs(h: Tensor) -> Tensor:
    """``log(1 + exp(-|h|))`` in a new tensor, computed in place on it (one allocation: a
    large tensor's allocation and first touch cost as much as a pass over it)."""
    return h.abs().neg_().exp_().add_(1.0).log_()


class _Softplus(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, h: Tensor) -> Tensor:
        ctx.save_for_backward(h)
        return _log1p_exp_minus_abs(h).add_(h.clamp(min=0))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        (h,) = ctx.saved_tensors
        return torch.sigmoid(h).mul_(grad)


class _BernoulliLogProb(torch.autograd.Function):
    """``x * h - softplus(h)`` with its gradient ``x - sigmoid(h)`` (times the incoming one)
    written out: two allocations forward and one backward, where the same expression through
    autograd made six and five (measured on 50 x 100 x 784 logits, 2 threads, Intel Xeon:
    9.8 against 19.0 ms forward and backward)."""

    @staticmethod
    def forward(ctx: Any, logits: Tensor, value: Tensor) -> Tensor:
        ctx.save_for_backward(logits, value)
        out = _log1p_exp_minus_abs(logits).neg_()
        return out.addcmul_(value, logits).sub_(logits.clamp(min=0))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None]:
        logits, value = ctx.saved_tensors
        grad_logits = grad_value = None
        if ctx.needs_input_grad[0]:
            grad_logits = torch.sigmoid(logits).sub_(value).neg_().mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_value = grad * logits
        return grad_logits, grad_value


def _softplus_expression(h: Tensor) -> Tensor:
    return h.clamp(min=0) + torch.log(1 + torch.exp(-h.abs()))


def _bernoulli_expression(logits: Tensor, value: Tensor) -> Tensor:
    return value * logits - _softplus_expression(logits)


def _kernel(name: str) -> Any:
    """The compiled form of ``_softplus_expression`` or ``_bernoulli_expression`` (one pass
    over memory instead of six to eight), built at first use (seconds, once per process)."""
    kernel = _FUSED.get(name)
    if kernel is None:
        from ppl_vae.runtime.compiler import quiet_inductor

        quiet_inductor()
        fn = _softplus_expression if name == "softplus" else _bernoulli_expression
        kernel = _FUSED[name] = torch.compile(fn, dynamic=True)
    return kernel


def _fused(*tensors: Tensor) -> bool:
    return (
        _FUSED["depth"] > 0
        and not torch.is_grad_enabled()
        and all(t.device.type == "cpu" for t in tensors)
    )


@contextmanager
def fused_elementwise() -> Iterator[None]:
    """Inside, without gradients, :func:`softplus` and :class:`FastBernoulli`'s
    ``log_prob`` run as kernels compiled by ``torch.compile``: one pass over memory each. The
    same expressions, so the same numbers to float rounding (tested against float64);
    :func:`ppl_vae.evaluation.log_likelihood` uses it on large evaluations. Where gradients
    are on, or off the CPU, nothing changes."""
    _FUSED["depth"] += 1
    try:
        yield
    finally:
        _FUSED["depth"] -= 1


#: ``void fn(void *)``: what ``GOMP_parallel`` runs on every thread of the team
_TEAM_TASK = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


def _openmp_runtimes() -> list[Any]:
    """The OpenMP runtimes loaded in this process that export ``GOMP_parallel`` (GNU's
    libgomp, which torch's Linux wheels use; LLVM's libomp and Intel's libiomp5 export it
    too). Found in ``/proc/self/maps``; none where that does not exist (macOS, Windows)."""
    try:
        with open("/proc/self/maps") as maps:
            paths = {line.split()[-1] for line in maps if "omp" in line and ".so" in line}
    except OSError:
        return []
    libraries = []
    for path in sorted(paths):
        name = path.rsplit("/", 1)[-1]
        if not name.startswith(("libgomp", "libomp", "libiomp")):
            continue
        try:
            library = ctypes.CDLL(path)
            parallel = library.GOMP_parallel
        except (OSError, AttributeError):
            continue
        parallel.argtypes = [_TEAM_TASK, ctypes.c_void_p, ctypes.c_uint, ctypes.c_uint]
        parallel.restype = None
        libraries.append(parallel)
    return libraries


def _set_everywhere(flush: bool) -> None:
    """``torch.set_flush_denormal(flush)`` on this thread and on every thread of the OpenMP
    team that torch's operations run on (a team of ``torch.get_num_threads()``, the same
    pooled threads each time)."""
    torch.set_flush_denormal(flush)
    task = _TEAM_TASK(lambda _: torch.set_flush_denormal(flush))  # runs under the GIL
    for parallel in _openmp_runtimes():
        parallel(task, None, torch.get_num_threads(), 0)


def flushing_denormals() -> bool:
    """Whether subnormal floats are flushed to zero on the calling thread."""
    return float(torch.tensor([1e-39]).mul_(2.0)) == 0.0


@contextmanager
def flush_denormals(flush: bool = True) -> Iterator[None]:
    """Inside, with ``flush``, the CPU sets subnormal floats to zero (flush-to-zero and
    denormals-are-zero) on the calling thread and torch's intra-op threads; on the way out
    the calling thread's setting found on entry comes back, on all of them. Where the
    processor cannot (``torch.set_flush_denormal`` says so), or with ``flush=False``, nothing
    changes. Threads that torch starts inside inherit the setting. ``fit`` trains inside it
    (``denormals`` setting). On a system with no ``/proc/self/maps`` only the calling thread
    is set.

    >>> with flush_denormals():
    ...     torch.tensor([1e-39]) * 2
    tensor([0.])
    """
    before = flushing_denormals()
    if not flush or not torch.set_flush_denormal(True):
        yield
        return
    # set everywhere even when this thread already flushes: torch.set_flush_denormal, called
    # after torch started its threads, reaches this thread alone
    try:
        _set_everywhere(True)
        yield
    finally:
        _set_everywhere(before)


def softplus(h: Tensor) -> Tensor:
    """``log(1 + exp(h))`` elementwise, same shape as ``h``; differentiable. Exact to an
    absolute error below the float's resolution at 1 (6e-8 in float32), so far left in the
    tail, where softplus(h) ~ exp(h) is below that, it gives 0.

    >>> softplus(torch.tensor([-2.0, 0.0, 30.0]))
    tensor([ 0.1269,  0.6931, 30.0000])
    >>> softplus(torch.tensor([-30.0]))  # exp(-30) = 9.4e-14
    tensor([0.])
    """
    if _fused(h):
        return _kernel("softplus")(h)
    return _Softplus.apply(h)


def bernoulli(p: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """0/1 draws x ~ Bernoulli(p) elementwise, shape and dtype of ``p``: the very numbers
    ``torch.bernoulli(p, generator=generator)`` gives, and leaves ``generator`` (or torch's
    global generator) in the same state. On the CPU, for a contiguous float32 or float64
    ``p``, they come from ``torch.rand(...) < p``, the same uniforms compared the same way
    (tested against ``torch.bernoulli`` in tests/test_fastmath.py); elsewhere from
    ``torch.bernoulli`` itself. ``p`` must lie in [0, 1]: this is not checked here.

    >>> g = torch.Generator().manual_seed(0)
    >>> bernoulli(torch.tensor([0.0, 0.5, 1.0]), g)
    tensor([0., 0., 1.])
    """
    if p.device.type == "cpu" and p.dtype in (torch.float32, torch.float64) and p.is_contiguous():
        return torch.rand(p.shape, generator=generator, dtype=p.dtype).lt_(p)
    return torch.bernoulli(p, generator=generator)


class Softplus(nn.Module):
    """:func:`softplus` as a layer, in place of ``nn.Softplus()`` (``beta = 1``; no state, so
    checkpoints of either load into the other)."""

    def forward(self, h: Tensor) -> Tensor:
        return softplus(h)


class FastBernoulli(dist.Bernoulli):
    """Pyro's ``Bernoulli`` with ``log_prob = x * logits - softplus(logits)`` (the same
    number as ``-binary_cross_entropy_with_logits``, to float rounding; validation of the
    value as before). Give it ``logits``."""

    def log_prob(self, value: Tensor) -> Tensor:
        if self._validate_args:
            self._validate_sample(value)
        logits, value = broadcast_all(self.logits, value)
        if _fused(logits, value):
            return _kernel("bernoulli")(logits, value)
        return _BernoulliLogProb.apply(logits, value)
