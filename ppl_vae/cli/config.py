"""The flags of ``ppl-vae train`` that say what to model and on which data: :class:`RunConfig`."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from typing import Any

import torch

from ppl_vae.data.splits import BINARIZE
from ppl_vae.models.build import GUIDES, NETS, PRESETS, factory_recipe
from ppl_vae.models.conv import CONV_ACTIVATION, CONV_HIDDEN
from ppl_vae.models.hierarchy import GUIDE_DIRECTIONS
from ppl_vae.models.likelihoods import LIKELIHOODS
from ppl_vae.priors.factory import PRIORS
from ppl_vae.priors.flow import FLOW_TYPES
from ppl_vae.training.config import _opt
from ppl_vae.training.trackers import make as make_trackers

__all__ = ["RunConfig", "check_device"]


@dataclass(frozen=True)
class RunConfig:
    """What to model and on which data; every field is a flag of ``ppl-vae train``."""

    dataset: str = _opt(
        "mnist5k",
        "mnist5k, digits, sprites, dsprites, mnist, fashion-mnist, kmnist, cifar10, svhn, "
        "celeba, .npy/.npz, or a folder of PNG/JPEG images (class subfolders become labels)",
    )
    data_dir: str | None = _opt(
        None,
        "folder with the IDX files (mnist, fashion-mnist, kmnist), or torchvision's root "
        "(cifar10, svhn, celeba)",
    )
    image_size: str | None = _opt(
        None,
        "image folders, cifar10, svhn, celeba: resize every image to H,W, or S for S x S "
        "(needed when a folder's images differ in size)",
    )
    colour: str = _opt(
        "auto",
        "image folders: grey (one channel) or rgb; auto: rgb when any file is in colour",
        ("auto", "grey", "rgb"),
    )
    download: bool = _opt(False, "let torchvision download the IDX files (needs a network)")
    binarize: str = _opt(
        "auto",
        "how to binarize images; auto: dynamic under a Bernoulli likelihood, else none",
        ("auto", *BINARIZE),
    )
    model: str | None = _opt(
        None,
        "your own program: FILE.py:factory or package.module:factory, a function returning an "
        "object with model() and guide() (the network flags below then do not apply)",
    )
    model_args: str | None = _opt(
        None, "JSON keyword arguments for the factory, e.g. '{\"z\": 8}'"
    )
    likelihood: str = _opt(
        "auto",
        "p(x|z); auto: discretized-logistic for 8-bit images read from files (a folder, "
        "cifar10, svhn, celeba), else bernoulli",
        ("auto", *LIKELIHOODS),
    )
    gaussian_scale: float = _opt(1.0, "the Gaussian likelihood's (initial) standard deviation")
    learn_scale: bool = _opt(False, "learn the Gaussian likelihood's scale per feature")
    logistics: int = _opt(5, "discretized-logistic: logistics in each pixel's mixture")
    preset: str = _opt(
        "seed",
        "named network: seed 784-300-300-50 softplus, iwae 784-200-200-50 tanh, iwae2 the IWAE "
        "paper's two stochastic layers (784-200-200-100, 100-100-50, tanh), small",
        tuple(PRESETS),
    )
    net: str = _opt(
        "mlp",
        "the networks on x: mlp on flat rows, or conv (stride-2 convolutions and their "
        "transposes, for image data; --hidden then sizes the linear layers after them, "
        "default 256, and --activation defaults to elu)",
        NETS,
    )
    channels: str | None = _opt(
        None, "--net conv: channels of the stride-2 convolutions, e.g. 32,64 (the default)"
    )
    hidden: str | None = _opt(None, "hidden widths, e.g. 300,300 (default: the preset's)")
    z_dim: int | None = _opt(None, "latent dimensions (default: the preset's)")
    activation: str | None = _opt(None, "hidden nonlinearity (default: the preset's)")
    guide: str = _opt(
        "gaussian",
        "q(z|x): gaussian (diagonal), or flow (a Gaussian and inverse autoregressive flow "
        "steps conditioned on x, Kingma et al. 2016)",
        GUIDES,
    )
    guide_flow_layers: int = _opt(2, "flow guide: number of IAF steps")
    guide_direction: str = _opt(
        "bottom-up",
        "two stochastic layers (--preset iwae2): the guide's order, bottom-up q(z1|x) q(z2|z1) "
        "as in the IWAE paper, or top-down q(z2|x) q(z1|x,z2), the model's order, on features "
        "of x shared by both layers",
        GUIDE_DIRECTIONS,
    )
    prior: str = _opt("normal", "p(z) (of the top layer with --preset iwae2)", PRIORS)
    components: int = _opt(10, "mixture prior: number of Gaussians")
    pseudo_inputs: int = _opt(500, "VampPrior: number of learnable pseudo-inputs")
    flow_layers: int = _opt(4, "flow prior: number of layers")
    flow_type: str | None = _opt(
        None, "flow prior: kind of layer (default: the prior's)", FLOW_TYPES
    )
    modes: int = _opt(3, "polymodal latent: Gaussians per latent dimension")
    val_size: int | None = _opt(
        None,
        "mnist, fashion-mnist, kmnist: validation images held out of the 60,000 training ones "
        "(the last N; default 10,000, so 50,000 train); 0 trains on all 60,000 as the IWAE "
        "paper does, with no validation (patience then watches the training loss)",
    )
    eval_samples: int = _opt(1000, "importance samples per test point for log p(x)")
    device: str = _opt(
        "cpu", "torch device: cpu, cuda, cuda:N or mps (under torchrun, cuda: cuda:LOCAL_RANK)"
    )
    logger: str | None = _opt(
        None,
        "also log the settings, every step's loss, every epoch and the final log p(x) to "
        "tensorboard, mlflow and/or csv (comma-separated; files in OUT); metrics.jsonl is "
        "written either way",
    )

    def check(self) -> None:
        """A ``ValueError`` naming the flag when a size or count is out of range, or the
        device is not there; before anything is loaded or written."""
        for name in (
            "z_dim",
            "logistics",
            "guide_flow_layers",
            "components",
            "pseudo_inputs",
            "flow_layers",
            "modes",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"--{name.replace('_', '-')} must be at least 1, got {value}")
        if self.val_size is not None and self.val_size < 0:
            raise ValueError(f"--val-size must be 0 or more, got {self.val_size}")
        if self.eval_samples < 1:
            raise ValueError(f"--eval-samples must be at least 1, got {self.eval_samples}")
        if not self.gaussian_scale > 0:
            raise ValueError(f"--gaussian-scale must be positive, got {self.gaussian_scale}")
        if any(w < 1 for w in self.network()["hidden"]):
            raise ValueError(f"--hidden widths must be at least 1, got {self.hidden!r}")
        if self.channels is not None and self.net != "conv":
            raise ValueError("--channels sizes the convolutions of --net conv; add --net conv")
        if self.channels is not None and any(c < 1 for c in self.conv_channels()):
            raise ValueError(f"--channels must be at least 1 each, got {self.channels!r}")
        if self.image_size is not None and any(s < 1 for s in self.image_hw()):
            raise ValueError(f"--image-size must be at least 1, got {self.image_size!r}")
        if self.guide_direction != "bottom-up" and "top_z_dim" not in self.network():
            raise ValueError(
                f"--guide-direction {self.guide_direction} orders two stochastic layers, and "
                f"--preset {self.preset} has one: add --preset iwae2, or drop the flag"
            )
        check_device(self.device)
        make_trackers(self.logger)

    def network(self) -> dict[str, Any]:
        """The preset's network with explicit flags laid over it."""
        if self.preset not in PRESETS:
            raise ValueError(f"unknown preset {self.preset!r}; choose one of {list(PRESETS)}")
        net = dict(PRESETS[self.preset])
        if self.net == "conv":  # the preset's widths and softplus are for MLPs
            net.update(hidden=CONV_HIDDEN, activation=CONV_ACTIVATION)
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

    def conv_channels(self) -> tuple[int, ...] | None:
        """``--channels`` as integers; None when not given."""
        return _integers(self.channels, "--channels", "32,64")

    def image_hw(self) -> tuple[int, int] | None:
        """``--image-size`` as (height, width); None when not given."""
        size = _integers(self.image_size, "--image-size", "32 or 32,48")
        if size is None:
            return None
        if len(size) not in (1, 2):
            raise ValueError(f"--image-size takes S or H,W, got {self.image_size!r}")
        return (size[0], size[-1])

    def resolved(self, image_shape: Any) -> RunConfig:
        """These flags with ``--likelihood auto`` made definite for data of ``image_shape``:
        the loaders of image files give (C, H, W) and 8-bit values, the others (H, W) or
        none."""
        if self.likelihood != "auto":
            return self
        files = image_shape is not None and len(image_shape) == 3
        return replace(self, likelihood="discretized-logistic" if files else "bernoulli")

    def recipe(self, x_dim: int, image_shape: Any = None) -> dict[str, Any]:
        """The program these flags describe, as a run folder records it; ``image_shape`` is
        the data's (for ``--net conv``)."""
        if self.model is not None:
            try:
                kwargs = json.loads(self.model_args) if self.model_args else {}
            except json.JSONDecodeError as e:
                raise ValueError(f"--model-args is not JSON ({e}): {self.model_args!r}") from None
            if not isinstance(kwargs, dict):
                raise ValueError(f"--model-args must be a JSON object, got {self.model_args!r}")
            return factory_recipe(self.model, kwargs)
        prior_options = {
            "components": self.components,
            "pseudo_inputs": self.pseudo_inputs,
            "flow_layers": self.flow_layers,
            "flow_type": self.flow_type,
            "modes": self.modes,
        }
        net = self.network()
        likelihood = self.resolved(image_shape).likelihood
        kwargs = {
            "x_dim": x_dim,
            **net,
            "hidden": list(net["hidden"]),
            **({"top_hidden": list(net["top_hidden"])} if "top_hidden" in net else {}),
            "likelihood": likelihood,
            "prior": self.prior,
            "gaussian_scale": self.gaussian_scale,
            "learn_scale": self.learn_scale,
            **({"logistics": self.logistics} if likelihood == "discretized-logistic" else {}),
            **(
                {"guide": self.guide, "guide_flow_layers": self.guide_flow_layers}
                if self.guide != "gaussian"
                else {}
            ),
            **(
                {"guide_direction": self.guide_direction}
                if self.guide_direction != "bottom-up"
                else {}
            ),
            **{k: v for k, v in prior_options.items() if v is not None},
        }
        if self.net == "conv":
            if image_shape is None:
                raise ValueError(
                    f"--net conv needs images, and --dataset {self.dataset} has no image shape; "
                    "use --net mlp, or an image dataset (a folder of PNG/JPEG files, mnist...)"
                )
            kwargs.update(net="conv", image_shape=list(image_shape))
            if self.channels is not None:
                kwargs["channels"] = list(self.conv_channels())
        return {"builder": "build_vae", "kwargs": kwargs}


def _integers(text: str | None, flag: str, example: str) -> tuple[int, ...] | None:
    if text is None:
        return None
    try:
        values = tuple(int(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"{flag} takes integers like {example}, got {text!r}") from None
    if not values:
        raise ValueError(f"{flag} takes integers like {example}, got {text!r}")
    return values


def check_device(name: str) -> torch.device:
    """``name`` as a torch device that is there, or a ``ValueError`` that says which are."""
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"--device {name!r} is not a torch device; use cpu, cuda, cuda:N or mps"
        ) from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ValueError(f"--device {name}: this machine has no CUDA device; use --device cpu")
        if device.index is not None and device.index >= count:
            raise ValueError(f"--device {name}: there are {count} CUDA devices (0 to {count - 1})")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ValueError(f"--device {name}: MPS is not available here; use --device cpu")
    elif device.type != "cpu":
        raise ValueError(f"--device {name}: ppl_vae runs on cpu, cuda, cuda:N or mps")
    return device
