"""The VAE as a pair of Pyro programs: ``model(x)`` for p(z) p(x|z) and ``guide(x)`` for q(z|x)."""

from __future__ import annotations

from typing import Any

import pyro
import torch
from torch import Tensor, nn

from ppl_vae.priors.factory import make_prior
from ppl_vae.runtime.params import parameters_held

__all__ = ["VAE"]


class VAE(nn.Module):
    """A variational autoencoder whose generative model and guide are Pyro programs.

    .. math::

        p_\\theta(x, z) = p(z)\\, p_\\theta(x \\mid z), \\qquad q_\\phi(z \\mid x).

    Site names are fixed: ``"z"`` (latent), ``"x"`` (observation), in ``pyro.plate("data")``.
    Any Pyro objective (``Trace_ELBO``, ``TraceMeanField_ELBO``, the IWAE bound) and every
    estimator in this package work on ``vae.model`` / ``vae.guide``; to :func:`ppl_vae.fit` it
    is one program among others (:mod:`ppl_vae.program`). The KL weight (beta) is not part of
    the model: ``fit(vae, data, beta=4)`` applies it, and so does
    :func:`ppl_vae.objectives.kl_weight` around ``model`` and ``guide`` for Pyro's own SVI.

    Args:
        encoder: module mapping ``x`` of shape ``(N, x_dim)`` to q(z|x), event shape ``(z_dim,)``.
        decoder: module mapping ``z`` of shape ``(..., z_dim)`` to p(x|z), event ``(x_dim,)``.
        prior: module whose ``forward()`` returns p(z); the standard Normal by default.
        name: prefix of the networks' parameters in Pyro's parameter store.

    >>> from ppl_vae import build_vae
    >>> vae = build_vae(x_dim=4, z_dim=2, hidden=(8,))
    >>> x = torch.bernoulli(torch.full((3, 4), 0.5))
    >>> loss = pyro.infer.TraceMeanField_ELBO().differentiable_loss(vae.model, vae.guide, x)
    >>> loss.shape
    torch.Size([])
    """

    def __init__(
        self,
        encoder: nn.Module,
        decoder: nn.Module,
        prior: nn.Module | None = None,
        name: str = "vae",
    ) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.x_dim: int = decoder.x_dim
        self.z_dim: int = decoder.z_dim
        self.prior = prior if prior is not None else make_prior("normal", self.z_dim)
        self.name = name
        #: How to build this model again (``build_vae`` and its arguments), which run folders
        #: record so that ``ppl-vae evaluate`` can rebuild it; None for a model built by hand.
        self.recipe: dict[str, Any] | None = None

    def _register(self) -> None:
        """``pyro.module(self.name, self)``, taking the name over from another module.

        Pyro's param store keeps the first module registered under a name and would hand this
        model that module's tensors as its param sites; ``SVI`` would then step tensors the
        loss does not depend on, and nothing would train. So a model called after another one
        with the same name (two VAEs in one session, both named ``"vae"``) replaces the
        other's entries: the model being run is always the one trained.
        """
        if parameters_held():  # the trainer steps the parameters itself (ppl_vae.fit)
            return
        first_name, first = next(iter(self.named_parameters()))
        store = pyro.get_param_store()
        held = store._params.get(f"{self.name}$$${first_name}")
        if held is not None and held is not first:
            for key in [k for k in store.keys() if k.startswith(f"{self.name}$$$")]:
                del store[key]
        pyro.module(self.name, self)

    def _rows(self, x: Tensor) -> Tensor:
        """``x`` as rows (N, x_dim): images of shape (N, C, H, W) (a Dataset of image tensors)
        are flattened, rows pass as they are, anything else is an error that says what to do."""
        if x.dim() > 2 and x.shape[1:].numel() == self.x_dim:
            return x.reshape(x.shape[0], self.x_dim)
        self._check(x)
        return x

    def _check(self, x: Tensor) -> None:
        if x.dim() != 2 or x.shape[-1] != self.x_dim:
            raise ValueError(
                f"the model expects data of shape (N, {self.x_dim}), got {tuple(x.shape)}; "
                "flatten images to rows, and use the dataset the model was trained on"
            )

    def model(self, x: Tensor, *labels: Tensor) -> Tensor:
        """p(z) p(x|z) with ``x`` of shape ``(N, x_dim)`` observed; returns ``z``. Further
        arguments (labels that travel with the data) are ignored."""
        x = self._rows(x)
        self._register()
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", self.prior())
            pyro.sample("x", self.decoder(z), obs=x)
        return z

    def guide(self, x: Tensor, *labels: Tensor) -> Tensor:
        """q(z|x) for ``x`` of shape ``(N, x_dim)``; returns ``z`` of shape ``(N, z_dim)``."""
        x = self._rows(x)
        self._register()
        with pyro.plate("data", x.shape[0]):
            return pyro.sample("z", self.encoder(x))

    def encode(self, x: Tensor) -> torch.distributions.Distribution:
        """The posterior q(z|x) for ``x`` of shape ``(N, x_dim)``: a distribution with batch
        shape ``(N,)`` and event shape ``(z_dim,)``; its ``mean`` is the embedding."""
        x = self._rows(x)
        return self.encoder(x)

    @torch.no_grad()
    def decode(self, z: Tensor) -> Tensor:
        """Mean of p(x|z) for codes ``z`` of shape ``(N, z_dim)``; shape ``(N, x_dim)``."""
        return self.decoder(z).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """Mean of p(x | z = mean of q(z|x)); shape ``(N, x_dim)``."""
        return self.decoder(self.encode(x).mean).mean

    @torch.no_grad()
    def sample(self, n: int) -> Tensor:
        """Means of p(x|z) at ``n`` draws z ~ p(z); shape ``(n, x_dim)``."""
        z = self.prior().sample((n,))
        return self.decoder(z).mean
