"""The same networks with torch's and Pyro's own operations (the benchmarks' reference)."""

from __future__ import annotations

import copy

import pyro.distributions as dist
from torch import Tensor, nn

from ppl_vae.runtime.kernels import Softplus

__all__ = ["plain_copy"]


class _PlainBernoulli(nn.Module):
    """Pyro's own ``Bernoulli(logits=h)`` head (``binary_cross_entropy_with_logits``)."""

    binary = True

    def forward(self, h: Tensor) -> dist.Distribution:
        return dist.Bernoulli(logits=h).to_event(1)


def plain_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module``, weights and all, with ``nn.Softplus`` in place of
    :class:`Softplus` and Pyro's ``Bernoulli`` in place of the fast Bernoulli head: what the
    same network computes with torch's and Pyro's own operations (the benchmarks' reference
    and the tests' comparison)."""
    from ppl_vae.models.likelihoods import BernoulliLikelihood

    module = copy.deepcopy(module)
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, Softplus):
                setattr(parent, name, nn.Softplus())
            elif isinstance(child, BernoulliLikelihood):
                setattr(parent, name, _PlainBernoulli())
    return module
