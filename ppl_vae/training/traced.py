"""A training step traced once and replayed: the loss and every parameter's gradient as one
graph of torch operations per batch shape, without Pyro's or torch's Python on the way.

``fit`` runs the program's step (the objective's Pyro traces, the log-densities, autograd's
backward pass) once under ``torch.fx``'s ``make_fx`` with fake tensors. What comes out is the
list of tensor operations the step performs, forward and backward, with the batch and the KL
weight as inputs and the parameters read in place, so that the optimizer's updates are seen.
Random draws stay operations of the graph and draw from torch's generator in the same order,
so a replay consumes the same random numbers as the eager step.

- ``mode="trace"`` replays that graph as it is: the same operations on the same numbers, so
  the same loss and gradients, bit for bit (tested), and no Pyro per step.
- ``mode="compile"`` hands the graph to ``torch.compile`` (inductor), which fuses the
  elementwise work; losses and gradients then equal the eager ones to float rounding.

What it assumes, and how that is checked:

- **The step is a function of the batch, the KL weight and the parameters alone.** Tracing
  with fake tensors fails on anything that reads a value (``.item()``, ``if x > 0``, a NaN
  check), and the step then runs eagerly. A program whose structure follows Python state
  (a counter, a global schedule) or whose buffers change between steps would replay a stale
  graph: the first replayed step of every epoch (and the first with a new graph) is
  therefore also run eagerly on the same random numbers and compared (``trace``: equal to
  the bit; ``compile``: to 1e-4 of the largest value); a mismatch runs the rest of the fit
  eagerly and says why.
- **The CPU.** Other devices run eagerly (not tested here).

The last 8 graphs are kept per program, objective and batch shape, so repeated ``fit``
calls on the same program trace and compile once.
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from ppl_vae.runtime.compiler import quiet_inductor

__all__ = ["MODES", "TracedStep"]


#: ``fit``'s ``compile`` setting: ``auto`` compiles on long epochs
#: (see ``FitConfig``)
MODES = ("auto", "compile", "trace", "off")


#: the graphs kept, newest last; a graph holds its program's parameters, so only a few are
#: kept (an evicted one is traced again when needed)
_CACHE: OrderedDict[tuple, tuple[list[weakref.ref], Callable]] = OrderedDict()


_CACHE_SIZE = 8


def _key_of(fn: Callable) -> Any:
    self = getattr(fn, "__self__", None)  # a bound method: a new object at every access
    return (id(self), getattr(fn, "__func__", fn)) if self is not None else id(fn)


class TracedStep:
    """``(loss / n, gradients)`` of ``objective`` on a batch of n rows, from a traced graph.

    Args:
        objective: a Pyro ELBO with ``differentiable_loss`` (one of ``make_objective``'s).
        model, guide: the program's functions as the engine runs them (KL weight applied).
        weights: the engine's :class:`~ppl_vae.objectives.KLWeight` handlers; the weight is an
            input of the graph, so a KL warm-up does not retrace.
        params: the tensors to differentiate, in the optimizer's order.
        key: what identifies the program (its model and guide as the caller gives them).
        compile: hand the graph to ``torch.compile``.
    """

    def __init__(
        self,
        objective: Any,
        model: Callable,
        guide: Callable,
        weights: Sequence[Any],
        params: Sequence[Tensor],
        key: tuple,
        compile: bool,
    ) -> None:
        self.objective, self.model, self.guide = objective, model, guide
        self.weights, self.params, self.compile = list(weights), list(params), compile
        #: the graphs this step has run, by KL weighting and batch shapes; one not yet here is
        #: checked against the eager step at its first use
        self._runs: dict[tuple, Callable] = {}
        self.key = (
            type(objective),
            getattr(objective, "num_particles", 1),
            getattr(objective, "vectorize_particles", None),
            tuple(_key_of(f) for f in key),
            tuple(id(p) for p in self.params),
            compile,
        )

    def _joint(self, weight: Tensor | float, *batch: Tensor) -> tuple[Tensor, tuple]:
        saved = [w.weight for w in self.weights]
        try:
            for w in self.weights:
                w.weight = weight
            loss = self.objective.differentiable_loss(self.model, self.guide, *batch)
            loss = loss / len(batch[0])
            grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        finally:
            for w, value in zip(self.weights, saved, strict=True):
                w.weight = value
        return loss, grads

    def graph(self, batch: tuple, weighted: bool) -> Callable:
        """The traced (and compiled) step for ``batch``'s shapes, with the KL weight an input
        (``weighted``) or 1; raises what tracing raises. A KL warm-up thus traces twice: while
        the weight rises and once it is 1."""
        from torch.fx.experimental.proxy_tensor import make_fx

        key = (*self.key, weighted, tuple((tuple(t.shape), t.dtype) for t in batch))
        hit = _CACHE.get(key)
        if hit is not None and all(r() is p for r, p in zip(hit[0], self.params, strict=True)):
            _CACHE.move_to_end(key)
            return hit[1]
        if weighted:  # the weight an input, as a float64 scalar: the arithmetic of a float
            joint = self._joint
        else:  # weight 1, as in the eager step, where the handler leaves the sites alone

            def joint(weight: Tensor, *batch: Tensor) -> tuple[Tensor, tuple]:
                return self._joint(1.0, *batch)

        with torch.random.fork_rng():  # fake tensors draw nothing; this keeps it certain
            traced = make_fx(joint, tracing_mode="fake", _allow_non_fake_inputs=True)(
                torch.ones((), dtype=torch.float64), *batch
            )
        run = _compiled(traced) if self.compile else traced
        _CACHE[key] = ([weakref.ref(p) for p in self.params], run)
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
        return run

    def _run(self, batch: tuple, weight: float) -> tuple[Callable, bool]:
        """The graph for ``batch`` and ``weight``, and whether this step runs it for the first
        time (the process-wide cache is consulted only then)."""
        weighted = weight != 1.0
        local = (weighted, tuple((tuple(t.shape), t.dtype) for t in batch))
        run = self._runs.get(local)
        if run is not None:
            return run, False
        run = self._runs[local] = self.graph(batch, weighted)
        return run, True

    def __call__(self, batch: tuple, weight: float) -> tuple[Tensor, tuple]:
        run, _ = self._run(batch, weight)
        with torch.no_grad():
            return run(torch.tensor(weight, dtype=torch.float64), *batch)

    def eager(self, batch: tuple, weight: float) -> tuple[Tensor, tuple]:
        """The same step without the graph (what a replay is checked against)."""
        if weight == 1.0:
            return self._joint(1.0, *batch)
        return self._joint(torch.tensor(weight, dtype=torch.float64), *batch)

    def step(self, batch: tuple, weight: float, check: bool) -> tuple[Any, str | None]:
        """``((loss, gradients), None)`` from the graph; checked against the eager step on
        the same random numbers when ``check`` or when this graph is new here. A mismatch
        gives ``(None, what differs)`` with the random state as it was before."""
        _, new = self._run(batch, weight)
        if not (check or new):
            return self(batch, weight), None
        state = torch.get_rng_state()
        loss, grads = self.eager(batch, weight)
        torch.set_rng_state(state)
        out = self(batch, weight)
        pairs = [(loss, out[0])] + list(zip(grads, out[1], strict=True))
        for i, (a, b) in enumerate(pairs):
            what = "the loss" if i == 0 else f"the gradient of parameter {i - 1}"
            if (a is None) != (b is None):
                torch.set_rng_state(state)
                return None, f"{what} is missing in one of them"
            if a is None:
                continue
            a = a.detach()
            if self.compile:
                same = bool((a - b).abs().max() <= 1e-4 * a.abs().max().clamp(min=1e-30))
            else:
                same = torch.equal(a, b)
            if not same:
                torch.set_rng_state(state)
                return None, f"{what} differs" + (" by more than 1e-4" if self.compile else "")
        return out, None


def _compiled(traced: Callable) -> Callable:
    """``traced`` under ``torch.compile``, with torch's own random kernels (the same draws
    in the same order as the eager step) and no autograd of its own (the graph holds the
    backward pass)."""
    import torch._inductor.config as inductor

    quiet_inductor()
    compiled = torch.compile(traced, dynamic=False)

    def run(*args: Tensor) -> Any:
        # no autograd of inductor's own: the graph holds the backward pass
        with torch.no_grad(), inductor.patch(fallback_random=True):  # read at code generation
            return compiled(*args)

    return run
