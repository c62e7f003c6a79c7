"""A run folder: the recipe (``config.json``), checkpoint, metrics and pictures of a model."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch

from .checkpoint import CheckpointError, load_checkpoint
from .data import BINARIZE, DataSplits, load_dataset
from .likelihoods import LIKELIHOODS
from .model import PRESETS, VAE, build_vae
from .priors import FLOW_TYPES, PRIORS
from .train import CHECKPOINT, FitConfig, _opt

__all__ = [
    "CONFIG",
    "RunConfig",
    "build_model",
    "check_features",
    "load_data",
    "load_run",
    "save_config",
]

CONFIG = "config.json"


@dataclass(frozen=True)
class RunConfig:
    """What to model and with which network; every field is a flag of ``ppl-vae train``."""

    dataset: str = _opt("mnist5k", "mnist5k, digits, mnist, fashion-mnist, kmnist or a .npy/.npz")
    data_dir: str | None = _opt(None, "folder with the IDX files (mnist, fashion-mnist, kmnist)")
    download: bool = _opt(False, "let torchvision download the IDX files (needs a network)")
    binarize: str = _opt("dynamic", "how to binarize images", BINARIZE)
    likelihood: str = _opt("bernoulli", "p(x|z)", LIKELIHOODS)
    gaussian_scale: float = _opt(1.0, "the Gaussian likelihood's (initial) standard deviation")
    learn_scale: bool = _opt(False, "learn the Gaussian likelihood's scale per feature")
    preset: str = _opt("seed", "named network", tuple(PRESETS))
    hidden: str | None = _opt(None, "hidden widths, e.g. 300,300 (default: the preset's)")
    z_dim: int | None = _opt(None, "latent dimensions (default: the preset's)")
    activation: str | None = _opt(None, "hidden nonlinearity (default: the preset's)")
    prior: str = _opt("normal", "p(z)", PRIORS)
    components: int = _opt(10, "mixture prior: number of Gaussians")
    pseudo_inputs: int = _opt(500, "VampPrior: number of learnable pseudo-inputs")
    flow_layers: int = _opt(4, "flow prior: number of layers")
    flow_type: str | None = _opt(
        None, "flow prior: kind of layer (default: the prior's)", FLOW_TYPES
    )
    modes: int = _opt(3, "polymodal latent: Gaussians per latent dimension")
    beta: float = _opt(1.0, "weight of the KL term (beta-VAE); 1 is the ELBO")
    eval_samples: int = _opt(1000, "importance samples per test point for log p(x)")
    device: str = _opt("cpu", "torch device, e.g. cpu or cuda")

    def network(self) -> dict[str, Any]:
        """The preset's network with explicit flags laid over it."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {list(PRESETS)}")
        net = dict(PRESETS[self.preset])
        if self.hidden is not None:
            try:
                net["hidden"] = tuple(int(w) for w in self.hidden.split(",") if w.strip())
            except ValueError:
                raise ValueError(
                    f"--hidden takes widths like 300,300, got {self.hidden!r}"
                ) from None
        if self.z_dim is not None:
            net["z_dim"] = self.z_dim
        if self.activation is not None:
            net["activation"] = self.activation
        return net


def load_data(config: RunConfig, seed: int = 0) -> DataSplits:
    """The dataset a run config names, split and binarized as it says."""
    return load_dataset(
        config.dataset,
        data_dir=config.data_dir,
        download=config.download,
        binarization=config.binarize,
        seed=seed,
    )


def build_model(config: RunConfig, x_dim: int) -> VAE:
    """The VAE a run config describes, for data with ``x_dim`` features, on its device."""
    prior_options = {
        "components": config.components,
        "pseudo_inputs": config.pseudo_inputs,
        "flow_layers": config.flow_layers,
        "flow_type": config.flow_type,
        "modes": config.modes,
    }
    vae = build_vae(
        x_dim,
        likelihood=config.likelihood,
        prior=config.prior,
        beta=config.beta,
        gaussian_scale=config.gaussian_scale,
        learn_scale=config.learn_scale,
        **config.network(),
        **{k: v for k, v in prior_options.items() if v is not None},
    )
    return vae.to(config.device)


def save_config(out: str | os.PathLike, run: RunConfig, fit: FitConfig, x_dim: int) -> None:
    """Write the recipe of a run to ``out/config.json``."""
    doc = {"run": asdict(run), "fit": asdict(fit), "x_dim": x_dim}
    (Path(out) / CONFIG).write_text(json.dumps(doc, indent=2) + "\n")


def load_run(
    run_dir: str | os.PathLike, device: str | None = None
) -> tuple[VAE, RunConfig, FitConfig]:
    """Rebuild the model of a run folder and load its trained weights (in eval mode)."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no {CONFIG}); make one with "
            f"`ppl-vae train --out {run_dir}`"
        )
    doc = json.loads((run_dir / CONFIG).read_text())
    known = {f.name for f in fields(RunConfig)}
    run = RunConfig(**{k: v for k, v in doc["run"].items() if k in known})
    if device is not None:
        run = RunConfig(**{**asdict(run), "device": device})
    fit = FitConfig(**doc["fit"])
    vae = build_model(run, doc["x_dim"])
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=run.device)
    try:
        vae.load_state_dict(state["best_state"] or state["model"])
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(
            f"{run_dir / CHECKPOINT} does not match {run_dir / CONFIG}: {e}"
        ) from e
    vae.eval()
    return vae, run, fit


def check_features(vae: VAE, x: torch.Tensor, what: str) -> None:
    """A clear error when data does not have the features the saved model was trained on."""
    if x.shape[1] != vae.x_dim:
        raise ValueError(
            f"{what} has {x.shape[1]} features per row but the saved model expects {vae.x_dim}; "
            "evaluate it on the dataset it was trained on (or train a new model on this one)"
        )
