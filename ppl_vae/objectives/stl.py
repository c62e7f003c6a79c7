"""Sticking the landing: the ELBO whose guide gradient drops the score term of log q."""

from __future__ import annotations

import torch
from pyro import poutine
from pyro.distributions.util import is_identically_zero, scale_and_mask
from pyro.infer import Trace_ELBO
from pyro.infer.trace_elbo import _compute_log_r
from pyro.infer.util import torch_item
from pyro.poutine import Trace

__all__ = ["STLELBO", "TensorTraceELBO"]


class TensorTraceELBO(Trace_ELBO):
    """``pyro.infer.Trace_ELBO`` with the loss's value kept in a detached tensor, where Pyro
    adds up Python floats (``.item()`` per site): the same surrogate, so the same gradient to
    the bit, and the same value to float rounding; with no ``.item()`` in the step, a step can
    be traced once and replayed (:mod:`ppl_vae.training.traced`)."""

    def _differentiable_loss_particle(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[torch.Tensor, torch.Tensor]:
        elbo: torch.Tensor | float = 0.0
        surrogate: torch.Tensor | float = 0.0
        log_r = None
        for site in model_trace.nodes.values():
            if site["type"] == "sample":
                elbo = elbo + site["log_prob_sum"].detach()
                surrogate = surrogate + site["log_prob_sum"]
        for site in guide_trace.nodes.values():
            if site["type"] == "sample":
                _, score_function_term, entropy_term = site["score_parts"]
                elbo = elbo - site["log_prob_sum"].detach()
                if not is_identically_zero(entropy_term):
                    surrogate = surrogate - entropy_term.sum()
                if not is_identically_zero(score_function_term):
                    if log_r is None:
                        log_r = _compute_log_r(model_trace, guide_trace)
                    term = log_r.sum_to(site["cond_indep_stack"])
                    surrogate = surrogate + (term * score_function_term).sum()
        return -torch.as_tensor(elbo), -torch.as_tensor(surrogate)

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        """Minus the ELBO (a scalar whose gradient is the surrogate's)."""
        loss: torch.Tensor | float = 0.0
        surrogate: torch.Tensor | float = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            particle, surrogate_particle = self._differentiable_loss_particle(
                model_trace, guide_trace
            )
            loss = loss + particle / self.num_particles
            surrogate = surrogate + surrogate_particle / self.num_particles
        surrogate = torch.as_tensor(surrogate)
        return loss + (surrogate - surrogate.detach())

    def loss_and_grads(self, model, guide, *args, **kwargs) -> float:
        """Pyro's (a backward pass per particle), with the loss returned as a float."""
        return torch_item(super().loss_and_grads(model, guide, *args, **kwargs))


class STLELBO(TensorTraceELBO):
    """The Monte Carlo ELBO with the "sticking the landing" gradient (Roeder, Wu & Duvenaud 2017).

    For a reparameterized guide ``z = g_phi(eps)`` the total derivative of one particle's ELBO is

    .. math::

        \\nabla_\\phi \\big[\\log p(x, z) - \\log q_\\phi(z)\\big]
        = \\underbrace{\\nabla_z \\big[\\log p(x, z) - \\log q_\\phi(z)\\big]
            \\nabla_\\phi g_\\phi(\\epsilon)}_{\\text{path}}
          - \\underbrace{\\nabla_\\phi \\log q_\\phi(z)\\big|_{z\\ \\text{fixed}}}_{\\text{score}}.

    The score term has expectation zero but nonzero variance. STL keeps only the path term, i.e.
    it scores ``log q(z|x)`` with the guide's parameters detached. It does so generically, for
    any reparameterized guide site, by adding to the surrogate

    .. math::

        \\log q_\\phi(\\bar z) - \\operatorname{stop\\_grad}(\\log q_\\phi(\\bar z)),
        \\qquad \\bar z = \\operatorname{stop\\_grad}(z),

    whose value is 0 and whose gradient is exactly the score term, cancelling it. In a guide
    with several latent sites a site's distribution may be conditioned on an earlier draw
    (q(z2|z1)): there ``z1`` is stopped inside ``log q_phi(z2 | z1)`` too, so that only
    the parameters' own derivative is cancelled, not the path through z1. The guide is then
    replayed once on its detached draws for these scores. Hence:

    - the loss value is the ordinary ELBO's on the same draws (minus the ELBO summed over the
      batch, averaged over particles);
    - when q equals the exact posterior, ``log p(x, z) - log q(z)`` is constant in z, so the
      guide gradient is exactly zero for every draw (zero variance), where ``Trace_ELBO``'s is
      the score term's noise;
    - the model's gradient is unchanged, and non-reparameterized sites keep Pyro's
      score-function surrogate.

    Cost: one extra ``log_prob`` per guide site, and one more run of a guide with several
    latent sites. Works with ``num_particles`` and
    ``vectorize_particles=True``, under ``poutine.scale`` (beta) and masks. Not meant for IWAE
    bounds (there the right variant is DReG).

    Args:
        num_particles: number of Monte Carlo draws per step.
        **kwargs: passed to :class:`pyro.infer.Trace_ELBO` (``vectorize_particles``,
            ``max_plate_nesting``...).

    >>> import pyro, pyro.distributions as dist
    >>> def model(x):
    ...     z = pyro.sample("z", dist.Normal(0.0, 1.0))
    ...     pyro.sample("x", dist.Normal(z, 1.0), obs=x)
    >>> def guide(x):
    ...     pyro.sample("z", dist.Normal(x / 2, 0.5**0.5))  # the exact posterior
    >>> STLELBO().differentiable_loss(model, guide, torch.tensor(1.0)).shape
    torch.Size([])
    """

    def __init__(self, num_particles: int = 1, **kwargs: object) -> None:
        super().__init__(num_particles=num_particles, **kwargs)
        self._guide_call: tuple | None = None
        self._drawn: Trace | None = None

    def _get_traces(self, model, guide, args, kwargs):
        # For the replay of a guide with several sites: the guide and its arguments, and each
        # particle's full trace (Pyro prunes a plate's subsample indices from the trace it
        # scores, and a replay without them would draw other rows).
        self._guide_call = (guide, args, kwargs)

        def recorded(*a, **k):
            tracer = poutine.trace(guide)
            value = tracer(*a, **k)
            self._drawn = tracer.trace
            return value

        yield from super()._get_traces(model, recorded, args, kwargs)

    def _frozen_guide(self) -> Trace:
        """The guide replayed on its own draws (and subsample indices), detached: every
        site's distribution then has its parameters' gradient only, none through the latents
        it is conditioned on."""
        assert self._guide_call is not None and self._drawn is not None, (
            "STLELBO scores traces it drew itself"
        )
        guide, args, kwargs = self._guide_call
        if self.vectorize_particles:
            guide = self._vectorized_num_particles(guide)
        frozen = self._drawn.copy()
        for name, site in self._drawn.nodes.items():
            if site["type"] == "sample" and not site["is_observed"]:
                frozen.nodes[name] = dict(site, value=site["value"].detach())
        return poutine.trace(poutine.replay(guide, trace=frozen)).get_trace(*args, **kwargs)

    def _differentiable_loss_particle(
        self, model_trace: Trace, guide_trace: Trace
    ) -> tuple[float, torch.Tensor]:
        loss, surrogate_loss = super()._differentiable_loss_particle(model_trace, guide_trace)
        sites, first = [], None  # the reparameterized sites, the first latent site
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample" or site["is_observed"]:
                continue
            first = first or name
            _, score_function_term, entropy_term = site["score_parts"]
            if not (site["fn"].has_rsample and is_identically_zero(score_function_term)):
                continue
            if is_identically_zero(entropy_term):
                continue
            sites.append(name)
        # With one latent site, its distribution's parameters hang on the guide's parameters
        # alone. With several, a site's may hang on an earlier draw too (q(z2|z1)); scoring
        # it on that live draw would also cancel a path term, so the guide is replayed.
        # The guide's first latent site hangs on no earlier draw: its live distribution is
        # scored as it is (which spares a second backward pass through the networks before it).
        frozen = self._frozen_guide() if len(sites) > 1 else guide_trace
        for name in sites:
            site = guide_trace.nodes[name]
            fn = (guide_trace if name == first else frozen).nodes[name]["fn"]
            log_q = scale_and_mask(
                fn.log_prob(site["value"].detach()), site["scale"], site["mask"]
            ).sum()
            surrogate_loss = surrogate_loss - (log_q - log_q.detach())
        return loss, surrogate_loss
