"""One optimisation step of :func:`ppl_vae.fit`: the fast engine (the Pyro objective, one
torch Adam over every parameter) and ``pyro.infer.SVI``; and the loss over a data set."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.infer import SVI
from pyro.infer.util import zero_grads
from torch import Tensor

from ppl_vae.objectives.particles import _sample_sites
from ppl_vae.objectives.weights import KLWeight
from ppl_vae.program import Program, ProgramError, as_program, traces
from ppl_vae.runtime.params import RegisteredParams
from ppl_vae.training.batching import TensorFeed, as_batch
from ppl_vae.training.traced import TracedStep

__all__ = [
    "ENGINES",
    "DistributedEngine",
    "FastEngine",
    "NonFiniteLoss",
    "SVIEngine",
    "bound_terms",
    "mean_loss",
    "negative_bound",
]


ENGINES = ("fast", "svi")


class NonFiniteLoss(FloatingPointError):
    """A step's loss was NaN or infinite; the parameters were not updated."""

    def __init__(self, value: float) -> None:
        super().__init__(f"the loss is {value}")
        self.value = value


def _adam(params: list[Tensor], lr: float) -> torch.optim.Adam:
    """``torch.optim.Adam``, fused where the parameters' device has the kernel: the same update
    to float rounding (2e-8 after 50 steps, measured), 0.20 ms a step on the seed network's
    parameters against 0.62 ms for the default per-tensor loop (2 CPU threads)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError):
        return torch.optim.Adam(params, lr=lr)


class FastEngine:
    """The Pyro objective on the program, one ``torch.optim.Adam`` over every parameter.

    With :meth:`use_graph` the steps replay a traced graph of the step instead
    (:mod:`ppl_vae.training.traced`); the first replayed step of every epoch is checked against the
    eager step, and a step that cannot be traced, or a replay that disagrees, sends the rest
    of the run back to the eager step with the reason in :attr:`graph_note`."""

    def __init__(self, program: Program, objective: Any, lr: float, beta: float) -> None:
        params = list(program.parameters.values())
        self.params = params
        self.weights = KLWeight(beta), KLWeight(beta)
        self.weight = float(beta)
        held = RegisteredParams(params), RegisteredParams(params)
        self.model = held[0](self.weights[0](program.model))
        self.guide = held[1](self.weights[1](program.guide))
        self.objective = objective
        self.optimizer = _adam(params, lr)
        self._checked = False
        self._key = (program.model, program.guide)
        #: the program's modules hold a convolution, which ``compile="auto"`` leaves eager
        self.convolutional = any(
            isinstance(m, torch.nn.modules.conv._ConvNd)
            for _, root in program.modules()
            for m in root.modules()
        )
        self.graph: TracedStep | None = None
        self._graph_failed = False
        self._verify = False
        #: how the steps run: None while eager by choice; else what the graph does or why
        #: the run went back to the eager step
        self.graph_note: str | None = None

    def set_weight(self, weight: float) -> None:
        self.weight = float(weight)
        for w in self.weights:
            w.weight = weight

    def use_graph(self, mode: str | None) -> None:
        """From the next step on, steps replay a traced graph (``mode`` "trace") or a
        compiled one ("compile"); None: eager steps. The first replayed step is checked."""
        if mode is None or self._graph_failed:  # a failed graph is already None
            self.graph = None
            return
        if self.graph is None or self.graph.compile != (mode == "compile"):
            self.graph = TracedStep(
                self.objective,
                self.model,
                self.guide,
                self.weights,
                self.params,
                self._key,
                compile=mode == "compile",
            )
        self._verify = True

    def _give_up_graph(self, why: str) -> None:
        self.graph, self._graph_failed = None, True
        self.graph_note = f"eager steps: the traced step {why}"

    def _graph_step(self, batch: tuple) -> tuple[Tensor, tuple] | None:
        """Loss and gradients from the graph; None (and eager from now on) when it fails."""
        assert self.graph is not None
        state = torch.get_rng_state()
        try:
            out, why = self.graph.step(batch, self.weight, check=self._verify)
        except Exception as e:  # noqa: BLE001 - any failure to trace: the eager step instead
            first = str(e).strip().splitlines()[0] if str(e).strip() else ""
            self._give_up_graph(f"could not be traced ({type(e).__name__}: {first[:200]})")
            torch.set_rng_state(state)
            return None
        self._verify = False
        if why is not None:
            self._give_up_graph(f"did not match the eager step: {why}")
            return None
        if self.graph_note is None:
            self.graph_note = (
                "compiled (torch.compile of the traced step)"
                if self.graph.compile
                else "traced (the step's graph replayed)"
            )
        return out

    def _loss(self, batch: tuple) -> Tensor:
        """The objective's loss summed over ``batch``; an error when no parameter reaches it."""
        loss = self.objective.differentiable_loss(self.model, self.guide, *batch)
        if not loss.requires_grad:
            raise ProgramError(
                "the loss does not depend on any parameter of the program; register the "
                "networks the model and guide use (pyro.module) or give fit their nn.Module"
            )
        return loss

    def step(self, batch: tuple) -> float:
        out = self._graph_step(batch) if self.graph is not None else None
        if out is not None:
            loss, grads = out
            value = loss.item()
            if not math.isfinite(value):
                raise NonFiniteLoss(value)
            for p, g in zip(self.params, grads, strict=True):
                p.grad = g
        else:
            loss = self._loss(batch) / len(batch[0])
            value = loss.item()
            if not math.isfinite(value):  # before any update: the parameters stay as they were
                raise NonFiniteLoss(value)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        if not self._checked:
            self._check_gradients()
        self.optimizer.step()
        return value

    def set_lr(self, lr: float) -> None:
        """A new learning rate from the next step on (a resumed run with another lr)."""
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def _check_gradients(self) -> None:
        """After the first backward pass: some parameter fit steps must have a gradient."""
        self._checked = True
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        if all(p.grad is None for p in params):
            raise ProgramError(
                "no parameter that fit found got a gradient: the model and guide compute with "
                "other tensors than those they register (pyro.module / pyro.param), or than "
                "the nn.Module fit was given holds"
            )

    def state_dict(self) -> Any:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: Any) -> None:
        self.optimizer.load_state_dict(state)


class DistributedEngine(FastEngine):
    """The fast engine over several processes: each process computes the gradient of the
    summed loss on its shard of the global batch; one all-reduce adds up the gradients, the
    losses, the shard sizes and the interrupt flags; every process then takes the same Adam
    step with the gradient of the global batch's mean loss, so the parameters stay equal on
    every rank. A non-finite loss or a Pyro validation error on any rank skips the update on
    all of them alike."""

    def __init__(self, program: Program, objective: Any, lr: float, beta: float) -> None:
        super().__init__(program, objective, lr, beta)
        self.params = [p for group in self.optimizer.param_groups for p in group["params"]]
        #: set by the trainer: whether this process has been asked to stop (Ctrl-C, SIGTERM)
        self.interrupted: Callable[[], Any] = lambda: None
        #: whether any rank had been asked to stop by the last step's all-reduce
        self.any_interrupted = False

    def step(self, batch: tuple) -> float:
        import torch.distributed as dist

        n, error, value = len(batch[0]), None, 0.0
        self.optimizer.zero_grad(set_to_none=True)
        if n:
            try:
                loss = self._loss(batch)
                value = loss.item()
                if math.isfinite(value):
                    loss.backward()
                    if not self._checked:
                        self._check_gradients()
            except ValueError as e:  # raised after the all-reduce, so no rank is left waiting
                error, value = e, math.nan
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        flags = [value, float(n), float(self.interrupted() is not None)]
        flat = torch.cat([g.reshape(-1) for g in grads] + [grads[0].new_tensor(flags)])
        dist.all_reduce(flat)
        total, count, stops = flat[-3:].tolist()
        self.any_interrupted = stops > 0
        if error is not None:
            raise error
        if not math.isfinite(total):
            self.optimizer.zero_grad(set_to_none=True)
            raise NonFiniteLoss(total)
        offset = 0
        for p in self.params:
            size = p.numel()
            p.grad = flat[offset : offset + size].view_as(p).div_(count)
            offset += size
        self.optimizer.step()
        return total / count


class SVIEngine(FastEngine):
    """``pyro.infer.SVI`` with ``pyro.optim.Adam``: steps what the param store holds."""

    def __init__(self, program: Program, objective: Any, lr: float, beta: float) -> None:
        registered = {id(t) for t in pyro.get_param_store()._params.values()}
        unseen = [n for n, p in program.parameters.items() if id(p) not in registered]
        if unseen:
            raise ProgramError(
                f"engine 'svi' steps only what pyro.module / pyro.param register, and "
                f"{len(unseen)} parameters of {program.name} are not registered (first: "
                f"{unseen[0]}); register them, or use engine='fast'"
            )
        self.weights = KLWeight(beta), KLWeight(beta)
        self.model = self.weights[0](program.model)
        self.guide = self.weights[1](program.guide)
        self.svi = SVI(self.model, self.guide, pyro.optim.Adam({"lr": lr}), loss=objective)
        self.objective = objective

    def step(self, batch: tuple) -> float:
        # SVI.step, with the loss checked before the update
        with poutine.trace(param_only=True) as capture:
            loss = self.objective.loss_and_grads(self.model, self.guide, *batch)
        params = {site["value"].unconstrained() for site in capture.trace.nodes.values()}
        value = loss / len(batch[0])
        if not math.isfinite(value):
            zero_grads(params)
            raise NonFiniteLoss(value)
        self.svi.optim(params)
        zero_grads(params)
        return value

    def set_lr(self, lr: float) -> None:
        optim = self.svi.optim
        optim.pt_optim_args["lr"] = lr
        for torch_optim in optim.optim_objs.values():
            for group in torch_optim.param_groups:
                group["lr"] = lr
        for saved in optim._state_waiting_to_be_consumed.values():  # loaded at the next step
            for group in saved["param_groups"]:
                group["lr"] = lr

    def state_dict(self) -> Any:
        return self.svi.optim.get_state()

    def load_state_dict(self, state: Any) -> None:
        self.svi.optim.set_state(state)


def mean_loss(model: Callable, guide: Callable, objective: Any, batches: Any, seed: int | None):
    """Minus the objective's bound per data point over ``batches``, with fixed draws when
    ``seed`` is set (the global random state is left as it was)."""
    with torch.random.fork_rng(), torch.no_grad():
        if seed is not None:
            torch.manual_seed(seed)
        total, n = 0.0, 0
        for batch in batches:
            total += float(objective.differentiable_loss(model, guide, *batch))
            n += len(batch[0])
    return total / max(n, 1)


def negative_bound(
    program: Any, x: Any, objective: Any, batch_size: int = 1000, seed: int | None = 0
) -> float:
    """Minus the objective's bound, averaged over the data points of ``x`` (rows of a tensor,
    or a tuple of tensors), in nats, for any program :func:`ppl_vae.program.as_program` takes.

    With ``seed`` set, the draws are fixed (common random numbers across calls) and the global
    random state is left as it was.
    """
    program = as_program(program)
    feed = TensorFeed(as_batch(x), batch_size, shuffle=False)
    return mean_loss(program.model, program.guide, objective, feed.batches(batch_size), seed)


def bound_terms(
    model: Callable, guide: Callable, batches: Any, seed: int | None
) -> tuple[float, float, int]:
    """The ELBO's two terms per data point over ``batches``, each from one draw z ~ q per
    point: the reconstruction ``E_q[log p(x | z)]`` (every observed site) and the KL term
    ``E_q[log q(z | x) - log p(z)]`` (every latent site), unscaled (beta = 1); their
    difference is the ELBO; and the number of data points. Fixed draws when ``seed`` is set."""
    recon, kl, n = 0.0, 0.0, 0
    with torch.random.fork_rng():
        if seed is not None:
            torch.manual_seed(seed)
        for batch in batches:
            model_trace, guide_trace = traces(model, guide, batch, {})
            for name, site in _sample_sites(model_trace):
                log_p = site["fn"].log_prob(site["value"]).sum().item()
                if site["is_observed"]:
                    recon += log_p
                else:
                    q = guide_trace.nodes[name]
                    kl += q["fn"].log_prob(q["value"]).sum().item() - log_p
            n += len(batch[0])
    return recon / max(n, 1), kl / max(n, 1), n
