"""The peers on our networks: pythae 0.1.2's VAE, IWAE and VAMP, and a hand-written PyTorch VAE.

Each trains the very modules of a ``ppl_vae`` model (the encoder's and decoder's MLPs are
shared, not copied), so after training the model is scored by our estimator exactly as our own
rows are: same networks, same test points, same importance-sampling draws.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time

import torch
from torch import nn

__all__ = [
    "PythaeProgram",
    "pythae_conv_mnist",
    "pythae_logits",
    "pythae_model",
    "train_plain",
    "train_pythae",
    "vae_terms",
]


def pythae_model(kind: str, vae: nn.Module, k: int = 5, components: int = 500, warmup: int = 0):
    """pythae's ``kind`` ("vae", "iwae" or "vamp") around ``vae``'s networks, or None when
    pythae is not installed. pythae's decoders output Bernoulli means (a sigmoid), scored by
    its binary cross-entropy."""
    try:
        from pythae.models import IWAE, VAE, VAMP, IWAEConfig, VAEConfig, VAMPConfig
        from pythae.models.base.base_utils import ModelOutput
        from pythae.models.nn import BaseDecoder, BaseEncoder
    except ImportError:
        return None

    class Enc(BaseEncoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = vae.encoder.net

        def forward(self, x):
            loc, log_var = self.net(x.reshape(x.shape[0], -1)).chunk(2, -1)
            return ModelOutput(embedding=loc, log_covariance=log_var)

    class Dec(BaseDecoder):
        def __init__(self) -> None:
            super().__init__()
            self.net = vae.decoder.net

        def forward(self, z):
            return ModelOutput(reconstruction=torch.sigmoid(self.net(z)))

    common = {"input_dim": (vae.x_dim,), "latent_dim": vae.z_dim, "reconstruction_loss": "bce"}
    if kind == "vae":
        return VAE(VAEConfig(**common), encoder=Enc(), decoder=Dec())
    if kind == "iwae":
        return IWAE(IWAEConfig(**common, number_samples=k), encoder=Enc(), decoder=Dec())
    if kind == "vamp":
        config = VAMPConfig(**common, number_components=components, linear_scheduling_steps=warmup)
        return VAMP(config, encoder=Enc(), decoder=Dec())
    raise ValueError(f"unknown pythae model {kind!r}")


def _deadline(seconds: float | None) -> float:
    """The ``time.perf_counter()`` at which ``seconds`` from now have passed (never: None)."""
    return time.perf_counter() + (seconds if seconds is not None else float("inf"))


class _OutOfTime(Exception):
    """Raised by :func:`train_pythae`'s deadline at the end of an epoch."""


def train_pythae(
    model,
    train: torch.Tensor,
    epochs: int,
    dynamic: bool,
    seed: int,
    seconds: float | None = None,
) -> int:
    """``epochs`` epochs of pythae's own ``BaseTrainer`` (Adam, lr 1e-3, batch 100), one
    trainer for the whole run so Adam's state carries over; ``dynamic``: every image is drawn
    afresh from its grey levels each time the trainer reads it. With ``seconds``, training
    also ends at the first epoch end after that much wall time (counted from this call, the
    trainer's set-up included). Returns the epochs trained."""
    from pythae.data.datasets import BaseDataset, DatasetOutput
    from pythae.trainers import BaseTrainer, BaseTrainerConfig
    from pythae.trainers.training_callbacks import TrainingCallback

    end = _deadline(seconds)

    class Deadline(TrainingCallback):
        done = 0

        def on_epoch_end(self, training_config, **kwargs) -> None:
            Deadline.done += 1
            if time.perf_counter() >= end:
                raise _OutOfTime

    for name in ("pythae", "pythae.trainers.base_trainer.base_trainer"):
        logging.getLogger(name).setLevel(logging.WARNING)

    class Dynamic(BaseDataset):
        def __getitem__(self, index):
            return DatasetOutput(data=torch.bernoulli(self.data[index]), labels=self.labels[index])

    dataset = (Dynamic if dynamic else BaseDataset)(train, torch.zeros(len(train)))
    config = BaseTrainerConfig(
        output_dir=tempfile.mkdtemp(prefix="pythae-"),
        per_device_train_batch_size=100,
        num_epochs=epochs,
        learning_rate=1e-3,
        no_cuda=True,
        seed=seed,
    )
    trainer = BaseTrainer(
        model, train_dataset=dataset, training_config=config, callbacks=[Deadline()]
    )
    with contextlib.suppress(_OutOfTime):
        trainer.train()
    return Deadline.done


def vamp_pseudo_inputs(model) -> torch.Tensor:
    """pythae VAMP's learned pseudo-inputs, shape (components, x_dim)."""
    with torch.no_grad():
        return model.pseudo_inputs(torch.eye(model.number_components)).reshape(
            model.number_components, -1
        )


def vae_terms(vae: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image of ``x`` (N, D), hand-written on ``vae``'s networks: the reconstruction term
    -log p(x|z) at one reparameterized draw z ~ q(z|x), by ``binary_cross_entropy_with_logits``,
    and the analytic KL(q(z|x) || N(0, I)); two (N,) tensors."""
    loc, log_var = vae.encoder.net(x).chunk(2, -1)
    z = loc + torch.exp(0.5 * log_var) * torch.randn_like(loc)
    recon = nn.functional.binary_cross_entropy_with_logits(
        vae.decoder.net(z), x, reduction="none"
    ).sum(-1)
    kl = 0.5 * (loc**2 + log_var.exp() - 1 - log_var).sum(-1)
    return recon, kl


def train_plain(
    vae: nn.Module,
    train: torch.Tensor,
    epochs: int,
    dynamic: bool,
    seed: int,
    seconds: float | None = None,
) -> int:
    """A hand-written PyTorch VAE on ``vae``'s networks: analytic KL to N(0, I), one draw, the
    Bernoulli log-likelihood by ``binary_cross_entropy_with_logits``, Adam lr 1e-3, batch 100,
    shuffled every epoch; ``dynamic``: every batch drawn afresh from its grey levels. With
    ``seconds``, it also ends at the first epoch end after that much wall time. Returns the
    epochs trained."""
    end = _deadline(seconds)
    params = list(vae.encoder.net.parameters()) + list(vae.decoder.net.parameters())
    opt = torch.optim.Adam(params, lr=1e-3)
    gen = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    for epoch in range(epochs):
        if time.perf_counter() >= end:
            return epoch
        order = torch.randperm(len(train), generator=gen)
        for i in range(0, len(train), 100):
            x = train[order[i : i + 100]]
            if dynamic:
                x = torch.bernoulli(x, generator=gen)
            recon, kl = vae_terms(vae, x)
            loss = (recon + kl).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return epochs


def pythae_conv_mnist(z_dim: int):
    """pythae 0.1.2's VAE on its own convolutional MNIST networks (``Encoder_Conv_VAE_MNIST``:
    four stride-2 convolutions of 128 to 1024 channels with batch norm; ``Decoder_Conv_AE_MNIST``:
    a linear layer to 1024 x 4 x 4 and three transposed convolutions back to 1 x 28 x 28, a
    sigmoid last), with its binary cross-entropy, or None when pythae is not installed. Its
    images are (N, 1, 28, 28)."""
    try:
        from pythae.models import VAE, VAEConfig
        from pythae.models.nn.benchmarks.mnist import (
            Decoder_Conv_AE_MNIST,
            Encoder_Conv_VAE_MNIST,
        )
    except ImportError:
        return None
    config = VAEConfig(input_dim=(1, 28, 28), latent_dim=z_dim, reconstruction_loss="bce")
    return VAE(
        config, encoder=Encoder_Conv_VAE_MNIST(config), decoder=Decoder_Conv_AE_MNIST(config)
    )


def pythae_logits(decoder: nn.Module, z: torch.Tensor) -> torch.Tensor:
    """The Bernoulli logits of a pythae decoder at codes ``z`` (B, z_dim), as flat rows (B, D):
    the input of its last ``nn.Sigmoid`` (caught by a forward hook, so no layer is copied and
    no sigmoid is inverted), or logit(clamped mean) for a decoder without one."""
    sigmoids = [m for m in decoder.modules() if isinstance(m, nn.Sigmoid)]
    if not sigmoids:
        mean = decoder(z).reconstruction.reshape(len(z), -1)
        return torch.logit(mean.clamp(1e-6, 1 - 1e-6))
    caught: list[torch.Tensor] = []
    handle = sigmoids[-1].register_forward_hook(lambda _m, inputs, _out: caught.append(inputs[0]))
    try:
        decoder(z)
    finally:
        handle.remove()
    return caught[-1].reshape(len(z), -1)


class PythaeProgram:
    """A trained pythae VAE as a small Pyro program, so that our estimator scores it as it
    scores our runs: p(z) = N(0, I), p(x|z) = Bernoulli(logits of pythae's decoder), q(z|x) =
    N(embedding, exp(log_covariance / 2)) of pythae's encoder, on flat rows x (N, D). Put the
    pythae model in eval mode first (its networks have batch norm)."""

    def __init__(self, model: nn.Module) -> None:
        self.encoder, self.decoder = model.encoder, model.decoder
        self.input_dim = tuple(model.model_config.input_dim)
        self.z_dim = model.model_config.latent_dim

    def model(self, x: torch.Tensor) -> None:
        import pyro
        import pyro.distributions as dist

        pyro.module("pythae_decoder", self.decoder)
        with pyro.plate("data", x.shape[-2]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.z_dim), 1.0).to_event(1))
            logits = pythae_logits(self.decoder, z.reshape(-1, self.z_dim))
            logits = logits.reshape(*z.shape[:-1], -1)  # (..., N, D), particles leftmost
            pyro.sample("x", dist.Bernoulli(logits=logits).to_event(1), obs=x)

    def guide(self, x: torch.Tensor) -> None:
        import pyro
        import pyro.distributions as dist

        pyro.module("pythae_encoder", self.encoder)
        with pyro.plate("data", x.shape[-2]):
            out = self.encoder(x.reshape(-1, *self.input_dim))
            loc = out.embedding.reshape(*x.shape[:-1], self.z_dim)
            scale = torch.exp(0.5 * out.log_covariance).reshape(loc.shape)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
