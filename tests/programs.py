"""Programs written as a user would, with none of ppl_vae's classes or attributes: factories for
the tests and for ``ppl-vae train --model tests/programs.py:NAME``."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from torch import nn


class Encoder(nn.Module):
    """Pyro's example encoder: x -> (loc, scale) of q(z|x)."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(x_dim, hidden)
        self.fc21 = nn.Linear(hidden, z_dim)
        self.fc22 = nn.Linear(hidden, z_dim)

    def forward(self, x):
        h = nn.functional.softplus(self.fc1(x))
        return self.fc21(h), torch.exp(self.fc22(h))


class Decoder(nn.Module):
    """Pyro's example decoder: z -> Bernoulli probabilities of the pixels."""

    def __init__(self, x_dim: int, z_dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(z_dim, hidden)
        self.fc21 = nn.Linear(hidden, x_dim)

    def forward(self, z):
        return torch.sigmoid(self.fc21(nn.functional.softplus(self.fc1(z))))


class ExampleVAE(nn.Module):
    """The VAE of Pyro's ``examples/vae/vae.py``: sites ``latent`` and ``obs``, networks
    registered with ``pyro.module``; no sample() or reconstruct()."""

    def __init__(self, x_dim: int = 784, z_dim: int = 4, hidden: int = 32) -> None:
        super().__init__()
        self.encoder = Encoder(x_dim, z_dim, hidden)
        self.decoder = Decoder(x_dim, z_dim, hidden)
        self.z_dim = z_dim

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z_loc = x.new_zeros(torch.Size((x.shape[0], self.z_dim)))
            z_scale = x.new_ones(torch.Size((x.shape[0], self.z_dim)))
            z = pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))
            loc_img = self.decoder(z)
            pyro.sample("obs", dist.Bernoulli(loc_img, validate_args=False).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        with pyro.plate("data", x.shape[0]):
            z_loc, z_scale = self.encoder(x)
            pyro.sample("latent", dist.Normal(z_loc, z_scale).to_event(1))


def example_vae(x_dim: int, z_dim: int = 4, hidden: int = 32) -> ExampleVAE:
    """Factory for ``--model tests/programs.py:example_vae``."""
    return ExampleVAE(x_dim, z_dim, hidden)


class DrawingVAE(ExampleVAE):
    """The example VAE with the two methods the pictures ask for."""

    @torch.no_grad()
    def sample(self, n: int):
        return self.decoder(torch.randn(n, self.z_dim))

    @torch.no_grad()
    def reconstruct(self, x):
        return self.decoder(self.encoder(x)[0])


def drawing_vae(x_dim: int, z_dim: int = 4, hidden: int = 32) -> DrawingVAE:
    """Factory for ``--model tests/programs.py:drawing_vae``."""
    return DrawingVAE(x_dim, z_dim, hidden)


def functions(x_dim: int, z_dim: int = 3, hidden: int = 16, prefix: str = "f"):
    """A model and a guide as plain functions: networks registered with ``pyro.module``, a
    learned prior scale with ``pyro.param`` (positive), a pixel bias with ``pyro.param``."""
    encoder, decoder = Encoder(x_dim, z_dim, hidden), Decoder(x_dim, z_dim, hidden)

    def model(x):
        pyro.module(f"{prefix}_decoder", decoder)
        scale = pyro.param(
            f"{prefix}_prior_scale",
            lambda: torch.ones(z_dim),
            constraint=dist.constraints.positive,
        )
        bias = pyro.param(f"{prefix}_bias", lambda: torch.zeros(x_dim))
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("code", dist.Normal(torch.zeros(z_dim), scale).to_event(1))
            logits = torch.logit(decoder(z), eps=1e-6) + bias
            pyro.sample("pixels", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(x):
        pyro.module(f"{prefix}_encoder", encoder)
        with pyro.plate("data", x.shape[0]):
            loc, scale = encoder(x)
            pyro.sample("code", dist.Normal(loc, scale).to_event(1))

    return model, guide


class MixturePriorVAE(ExampleVAE):
    """The example VAE under a two-component Gaussian mixture prior: no closed-form KL."""

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            mix = dist.Categorical(torch.ones(2))
            comp = dist.Normal(torch.tensor([[-1.0] * self.z_dim, [1.0] * self.z_dim]), 1.0)
            prior = dist.MixtureSameFamily(mix, comp.to_event(1))
            z = pyro.sample("latent", prior)
            pyro.sample("obs", dist.Bernoulli(self.decoder(z)).to_event(1), obs=x)


class ConditionalVAE(nn.Module):
    """A conditional VAE: ``model(x, y)`` with one-hot labels ``y`` fed to both networks."""

    def __init__(self, x_dim: int, classes: int, z_dim: int = 3, hidden: int = 16) -> None:
        super().__init__()
        self.classes, self.z_dim = classes, z_dim
        self.encoder = Encoder(x_dim + classes, z_dim, hidden)
        self.decoder = Decoder(x_dim, z_dim + classes, hidden)

    def model(self, x, y):
        onehot = nn.functional.one_hot(y, self.classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            probs = self.decoder(torch.cat([z, onehot], -1))
            pyro.sample("x", dist.Bernoulli(probs).to_event(1), obs=x)

    def guide(self, x, y):
        onehot = nn.functional.one_hot(y, self.classes).to(x.dtype)
        with pyro.plate("data", x.shape[0]):
            loc, scale = self.encoder(torch.cat([x, onehot], -1))
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
