"""The VampPrior: a mixture of the guide's posteriors at learned pseudo-inputs."""

from __future__ import annotations

import pyro.distributions as dist
import torch
from torch import Tensor, nn

from ppl_vae.priors.diagonal_mixture import DiagonalNormalMixture

__all__ = ["VampPrior"]


class VampPrior(nn.Module):
    """The VampPrior: the guide's posteriors at K learnable pseudo-inputs, mixed uniformly.

    .. math::

        p(z) = \\frac{1}{K} \\sum_{k=1}^{K} q_\\phi(z \\mid u_k)

    The optimal prior for a fixed encoder is the aggregated posterior
    ``(1/N) sum_n q(z|x_n)``; the VampPrior replaces the N data points by K learned
    pseudo-inputs ``u_k`` (Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018).

    The encoder is *shared* with the guide (pass ``vae.encoder``): it is registered here as a
    submodule too, so ``state_dict`` lists its tensors under both names (the same storage; a
    load fills both) and ``named_parameters`` / ``pyro.module`` count them once. Each call of
    ``forward()`` encodes all K pseudo-inputs, so a training step costs an extra encoder pass
    over K rows.

    Args:
        encoder: module mapping ``u`` of shape ``(K, x_dim)`` to a distribution with batch shape
            ``(K,)`` and event shape ``(z_dim,)`` (e.g. :class:`~ppl_vae.models.GaussianEncoder`).
        x_dim: number of features of one data point.
        pseudo_inputs: number of pseudo-inputs K (500 in the paper).
        init: optional ``(K, x_dim)`` starting values, e.g. K random training points; otherwise
            data-like values: uniform on [0, 1].

    >>> from ppl_vae.models.nets import GaussianEncoder
    >>> p = VampPrior(GaussianEncoder(4, 2, (8,)), x_dim=4, pseudo_inputs=3)()
    >>> p.batch_shape, p.event_shape
    (torch.Size([]), torch.Size([2]))
    """

    analytic_kl: bool = False

    def __init__(
        self,
        encoder: nn.Module,
        x_dim: int,
        pseudo_inputs: int = 500,
        init: Tensor | None = None,
    ) -> None:
        super().__init__()
        if pseudo_inputs < 1:
            raise ValueError(f"the VampPrior needs at least one pseudo-input, got {pseudo_inputs}")
        if init is None:
            init = torch.rand(pseudo_inputs, x_dim)
        elif tuple(init.shape) != (pseudo_inputs, x_dim):
            raise ValueError(
                f"init must have shape ({pseudo_inputs}, {x_dim}), got {tuple(init.shape)}"
            )
        self.encoder = encoder
        self.x_dim, self.pseudo_inputs = x_dim, pseudo_inputs
        self.z_dim: int = getattr(encoder, "z_dim", -1)
        self.u = nn.Parameter(init.detach().clone().to(torch.get_default_dtype()))

    def forward(self) -> dist.Distribution:
        # A flow guide's density away from its own draws costs z_dim passes per step, so the
        # components are its base Gaussians there: still a normalized mixture, tied to the guide
        encode = getattr(self.encoder, "gaussian", self.encoder)
        comp = encode(self.u)  # batch (K,), event (z_dim,)
        logits = self.u.new_zeros(self.pseudo_inputs)
        base = getattr(comp, "base_dist", None)
        if isinstance(base, torch.distributions.Normal) and comp.reinterpreted_batch_ndims == 1:
            return DiagonalNormalMixture(logits, base.loc, base.scale)  # matrix products
        return dist.MixtureSameFamily(dist.Categorical(logits=logits), comp)
