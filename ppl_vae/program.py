"""The program contract: what :func:`ppl_vae.fit`, the objectives, the estimators and the CLI
ask of a model, and nothing more.

A **program** is a Pyro ``model`` and ``guide``:

- ``model(*batch)`` and ``guide(*batch)`` take the same arguments, one minibatch: a tensor, or
  several (data and labels of a conditional VAE, several observed tensors). The first tensor's
  first dimension counts the data points; losses are reported per data point.
- The guide samples the model's latent sites (same names); the model observes the data with
  ``obs=``. Any site names, any number of latent sites.
- Parameters are registered the way ``pyro.infer.SVI`` finds them, with ``pyro.module`` /
  ``pyro.param``, or they belong to an ``nn.Module``: the object the methods come from, or the
  model or guide themselves (an AutoGuide, say).
- Per-point estimators and importance-weighted bounds also need every sample site inside one
  vectorized ``pyro.plate("data", N)`` (another name: ``plate=``).

Given either as two callables, ``fit(model, guide, data)``, or as any object with ``model`` and
``guide`` methods, ``fit(obj, data)`` (an ``nn.Module`` or not). Optional methods on that object,
each used only by the feature that needs it, which names it when it is missing:

- ``on_epoch_start(epoch, num_epochs)``: called by ``fit`` before every epoch (annealing);
- ``encode(x)``: the posterior q(z|x) as a distribution (its ``mean`` is the embedding);
- ``sample(n)``: ``n`` draws from the model, as rows (pictures, ``ppl-vae sample``);
- ``reconstruct(x)``: reconstructions of the rows of ``x`` (``ppl-vae reconstruct``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyro
import pyro.poutine as poutine
import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_subsample
from torch import Tensor, nn

__all__ = [
    "Program",
    "ProgramError",
    "as_program",
    "binary_observation",
    "check_observed",
    "check_pair",
    "observation_levels",
    "observed_sites",
]


class ProgramError(ValueError):
    """A program lacks what a feature needs, or fails when first run; the message says which."""


def _describe(obj: Any) -> str:
    name = getattr(obj, "__qualname__", None) or type(obj).__qualname__
    return name.replace("<locals>.", "")


@dataclass
class Program:
    """A Pyro model and guide, and the object they came from (``source``, or None).

    ``parameters`` is filled by :meth:`find_parameters`: every tensor the program trains, by
    name (``module.<name>`` for module parameters, the param-store name for the others).
    """

    model: Callable
    guide: Callable
    source: Any = None
    parameters: dict[str, Tensor] = field(default_factory=dict)
    #: param-store names of the parameters that no module holds (``pyro.param`` sites and
    #: ``pyro.module`` registrations of modules fit cannot see)
    store_names: list[str] = field(default_factory=list)
    #: how to build the program again, recorded in run folders: ``{"builder": "build_vae",
    #: "kwargs": {...}}`` or ``{"builder": "factory", "spec": "file.py:make", "kwargs": {...}}``
    recipe: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        """What to call the program in messages."""
        if self.source is not None:
            return _describe(self.source)
        return f"{_describe(self.model)} / {_describe(self.guide)}"

    def modules(self) -> Iterator[tuple[str, nn.Module]]:
        """The ``nn.Module`` s among the source, the model and the guide, keyed by role."""
        seen: set[int] = set()
        for key, obj in (("source", self.source), ("model", self.model), ("guide", self.guide)):
            if isinstance(obj, nn.Module) and id(obj) not in seen:
                seen.add(id(obj))
                yield key, obj

    def hook(self, name: str) -> Callable | None:
        """The source's optional method ``name``, or None."""
        fn = getattr(self.source, name, None)
        return fn if callable(fn) else None

    def require(self, name: str, purpose: str) -> Callable:
        """The source's method ``name``, or a :class:`ProgramError` saying ``purpose`` needs it."""
        fn = self.hook(name)
        if fn is None:
            raise ProgramError(
                f"{purpose} needs a method {name}(), which the program {self.name} lacks; "
                f"add one to the object that has model() and guide()"
            )
        return fn

    def train(self, mode: bool = True) -> None:
        """Put every module of the program in training (or evaluation) mode."""
        for _, module in self.modules():
            module.train(mode)

    def find_parameters(self, *args: Any, **kwargs: Any) -> dict[str, Tensor]:
        """Run guide and model once on a batch, as ``pyro.infer.SVI`` does on its first step,
        and collect the tensors to train: every module's parameters and the unconstrained
        tensor of every ``pyro.param`` site. Raises :class:`ProgramError` if there are none.
        """
        params: dict[str, Tensor] = {}
        seen: set[int] = set()
        for key, module in self.modules():
            for name, p in module.named_parameters():
                if p.requires_grad and id(p) not in seen:
                    seen.add(id(p))
                    params[f"{key}.{name}"] = p
        stale = _StaleModules(seen)
        with torch.no_grad(), poutine.block(), poutine.trace(param_only=True) as capture, stale:
            guide_trace = poutine.trace(self.guide).get_trace(*args, **kwargs)
            poutine.replay(self.model, trace=guide_trace)(*args, **kwargs)
        if stale.names:
            raise ProgramError(
                f"Pyro's param store holds other tensors under names this program registers "
                f"with pyro.module ({', '.join(stale.names[:3])}...): a module built earlier "
                "under the same name, so pyro.module would hand the program the old tensors "
                "and nothing would train. Call pyro.clear_param_store() first, or give the "
                "modules names of their own"
            )
        self.store_names = []
        for name, site in capture.trace.nodes.items():
            value = site["value"]
            leaf = value.unconstrained() if hasattr(value, "unconstrained") else value
            if leaf.requires_grad and id(leaf) not in seen:
                seen.add(id(leaf))
                params[name] = leaf
                self.store_names.append(name)
        if not params:
            raise ProgramError(
                f"the program {self.name} has no parameters to train: register its networks "
                "with pyro.module(name, net) or pyro.param(...), or give fit an nn.Module "
                "with model() and guide() methods"
            )
        self.parameters = params
        return params

    def state_dict(self) -> dict[str, Any]:
        """Everything to restore the program: each module's ``state_dict`` (buffers included)
        and the param-store tensors no module holds (unconstrained). A tensor two modules share
        (the VampPrior's encoder is the guide's) is copied once, so a checkpoint holds it once."""
        copies: dict[tuple, torch.Tensor] = {}

        def copy(v: torch.Tensor) -> torch.Tensor:
            key = (v.data_ptr(), v.dtype, v.device, tuple(v.shape), v.stride())
            return copies[key] if key in copies else copies.setdefault(key, v.detach().clone())

        return {
            "modules": {
                key: {k: copy(v) for k, v in m.state_dict().items()} for key, m in self.modules()
            },
            "params": {n: copy(self.parameters[n]) for n in self.store_names},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` in place (after :meth:`find_parameters` when the program
        has param-store tensors). Raises :class:`ProgramError` on a mismatch."""
        modules = dict(self.modules())
        for key, module_state in state["modules"].items():
            if key not in modules:
                raise ProgramError(f"the saved state has a {key} module that {self.name} lacks")
            try:
                modules[key].load_state_dict(module_state)
            except RuntimeError as e:
                raise ProgramError(f"the saved {key} does not fit {self.name}: {e}") from e
        missing = [n for n in state["params"] if n not in self.parameters]
        if missing:
            raise ProgramError(
                f"the saved state has parameters {missing[:5]} that {self.name} did not create"
            )
        with torch.no_grad():
            for name, value in state["params"].items():
                target = self.parameters[name]
                if target.shape != value.shape:
                    raise ProgramError(
                        f"saved parameter {name!r} has shape {tuple(value.shape)}, the program's "
                        f"{tuple(target.shape)}"
                    )
                target.copy_(value)

    def dtype_and_device(self) -> tuple[torch.dtype, torch.device] | None:
        """Of the first parameter found (modules first); None before any is known."""
        for _, module in self.modules():
            for p in module.parameters():
                return p.dtype, p.device
        for p in self.parameters.values():
            return p.dtype, p.device
        return None


class _StaleModules(Messenger):
    """Seen on a first trace: ``pyro.module`` registering a parameter under a name that the
    param store holds for another tensor (a module built earlier with the same name). For the
    parameters of a module the program shows, the program's own tensor takes the name over,
    as the module being trained is the one that counts; other clashes are collected."""

    def __init__(self, own: set[int]) -> None:
        super().__init__()
        self.own, self.names = own, []

    def _pyro_param(self, msg: dict[str, Any]) -> None:
        args = msg["args"]
        if len(args) < 2 or not isinstance(args[1], nn.Parameter) or "$$$" not in msg["name"]:
            return
        store = pyro.get_param_store()
        held = store._params.get(msg["name"])
        if held is None or held is args[1]:
            return
        if id(args[1]) in self.own:
            del store[msg["name"]]
        else:
            self.names.append(msg["name"])


def as_program(model: Any, guide: Callable | None = None) -> Program:
    """A :class:`Program` from ``(model, guide)`` callables, or from an object with ``model``
    and ``guide`` methods (or a ``(model, guide)`` pair)."""
    if isinstance(model, Program):
        return model
    if guide is not None:
        if not callable(model) or not callable(guide):
            raise ProgramError(
                f"model and guide must be callables, got {type(model).__name__} and "
                f"{type(guide).__name__}"
            )
        return Program(model, guide)
    if isinstance(model, tuple) and len(model) == 2 and all(map(callable, model)):
        return Program(*model)
    m, g = getattr(model, "model", None), getattr(model, "guide", None)
    if callable(m) and callable(g):
        recipe = getattr(model, "recipe", None)
        recipe = recipe if isinstance(recipe, dict) and "builder" in recipe else None
        return Program(m, g, source=model, recipe=recipe)
    raise ProgramError(
        f"{type(model).__name__} is not a program: pass fit(model, guide, data) with two Pyro "
        "functions, or fit(obj, data) with an object that has model() and guide() methods"
    )


def traces(model: Callable, guide: Callable, args: tuple, kwargs: dict) -> tuple[Any, Any]:
    """A guide trace and the model replayed on it, without gradients or validation, hidden
    from outer handlers: for reading a program's structure."""
    with torch.no_grad(), poutine.block(), pyro.validation_enabled(False):
        guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
        model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(
            *args, **kwargs
        )
    return model_trace, guide_trace


def check_pair(model_trace: Any, guide_trace: Any) -> None:
    """A :class:`ProgramError` naming the sites unless the guide samples exactly the model's
    latent sites: a model site the guide lacks would be drawn from the prior on replay, and a
    guide site the model lacks would enter log q but not log p; either way the bound or the
    estimate would be of another model (Pyro's ELBOs check this only under validation)."""

    def latent(trace: Any) -> set[str]:
        return {
            name
            for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site["is_observed"] and not site_is_subsample(site)
        }

    model_latent, guide_latent = latent(model_trace), latent(guide_trace)
    observed = {
        n for n, s in model_trace.nodes.items() if s["type"] == "sample" and s["is_observed"]
    }
    missing = sorted(model_latent - guide_latent)
    if missing:
        raise ProgramError(
            f"the guide does not sample the model's latent site(s) {', '.join(map(repr, missing))}"
            ": replayed, the model would draw them from the prior, and the bound would not be "
            "the program's; sample them in the guide (same names)"
        )
    auxiliary = {  # Pyro's marked guide-only variables (an AutoGuide's unconstrained draws)
        n
        for n, s in guide_trace.nodes.items()
        if s["type"] == "sample" and s["infer"].get("is_auxiliary")
    }
    extra = sorted(guide_latent - model_latent - observed - auxiliary)
    if extra:
        raise ProgramError(
            f"the guide samples {', '.join(map(repr, extra))}, which the model lacks: it would "
            "enter log q(z|x) but not log p(x, z); rename it to the model's site, drop it, or "
            "mark a guide-only variable infer={'is_auxiliary': True}"
        )
    shadowed = sorted(guide_latent & observed)
    if shadowed:
        raise ProgramError(
            f"the guide samples {', '.join(map(repr, shadowed))}, which the model observes; "
            "the guide samples only latent sites"
        )


def observed_sites(
    model: Callable, guide: Callable, *args: Any, **kwargs: Any
) -> dict[str, dict[str, Any]]:
    """The model's observed sample sites (name -> trace site) on one batch, run without
    validation, so their values can be checked against their supports here."""
    model_trace, _ = traces(model, guide, args, kwargs)
    return {
        name: site
        for name, site in model_trace.nodes.items()
        if site["type"] == "sample" and site["is_observed"] and not site_is_subsample(site)
    }


def _base_support(support: Any) -> Any:
    """The constraint inside ``Independent`` and the other wrappers."""
    while hasattr(support, "base_constraint"):
        support = support.base_constraint
    return support


def _is_boolean(support: Any) -> bool:
    return _base_support(support) is torch.distributions.constraints.boolean


def check_observed(model: Callable, guide: Callable, *args: Any, what: str = "the data") -> None:
    """A :class:`ValueError` that says what to do when a value observed by the model lies
    outside its distribution's support (grey levels under a Bernoulli, say)."""
    for name, site in observed_sites(model, guide, *args).items():
        fn, value = site["fn"], site["value"]
        try:
            ok = bool(fn.support.check(value).all())
        except (RuntimeError, NotImplementedError):  # a support Pyro cannot check
            continue
        if ok:
            continue
        lo, hi = float(value.min()), float(value.max())
        base = fn
        while hasattr(base, "base_dist"):  # Independent, masked, expanded wrappers
            base = base.base_dist
        text = (
            f"{what} observed at site {name!r} lies outside the support of its "
            f"{type(base).__name__} (values in [{lo:.3g}, {hi:.3g}])"
        )
        if _is_boolean(fn.support):
            text += (
                ": the data are not binary but the likelihood is Bernoulli; binarize it "
                "(--binarize dynamic|static|threshold, load_dataset(binarization=...), or "
                "ppl_vae.data.binarize) or use --likelihood continuous-bernoulli for grey levels"
            )
        raise ValueError(text)


def binary_observation(model: Callable, guide: Callable, *args: Any) -> bool:
    """Whether every observed site has a {0, 1} support (a Bernoulli likelihood)."""
    sites = observed_sites(model, guide, *args)
    return bool(sites) and all(_is_boolean(s["fn"].support) for s in sites.values())


def _levels(fn: Any) -> int | None:
    """How many values the distribution ``fn`` puts its mass on, or None for a density: 2 for
    a {0, 1} support, else the ``levels`` a discrete support or the distribution declares."""
    support = _base_support(fn.support)
    if support is torch.distributions.constraints.boolean:
        return 2
    if not getattr(support, "is_discrete", False):
        return None
    levels = getattr(support, "levels", None)
    base = fn
    while levels is None and base is not None:
        levels = getattr(base, "levels", None)
        base = getattr(base, "base_dist", None)
    return int(levels) if levels is not None else None


def observation_levels(model: Callable, guide: Callable, *args: Any) -> int | None:
    """On how many values the model's likelihood puts its mass: 2 when every observed site is
    Bernoulli, 256 when they are the discretized 8-bit likelihoods (the site distribution's
    ``levels``), None when any site is a density (or there are none). Where the sites differ,
    the largest count.

    A mass makes log p(x) a log-probability as it stands; a density of 8-bit data takes the
    dequantization term in bits per dimension (:func:`ppl_vae.evaluation.bits_per_dim`).
    """
    sites = observed_sites(model, guide, *args)
    counts = [_levels(s["fn"]) for s in sites.values()]
    if not counts or any(c is None for c in counts):
        return None
    return max(counts)
