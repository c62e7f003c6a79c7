"""A run folder: ``config.json`` (how to rebuild the program and reload its data), the checkpoint,
the metrics and the pictures; and the programs the CLI builds, built-in or from a factory."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ppl_vae.data.datasets import load_dataset
from ppl_vae.data.splits import BINARIZE, DataSplits, binarize_splits
from ppl_vae.models.build import GUIDES, PRESETS, build_program, factory_recipe
from ppl_vae.models.hierarchy import GUIDE_DIRECTIONS
from ppl_vae.models.likelihoods import LIKELIHOODS
from ppl_vae.priors.factory import PRIORS
from ppl_vae.priors.flow import FLOW_TYPES
from ppl_vae.program import Program, ProgramError, as_program, binary_observation
from ppl_vae.training.checkpoint import CheckpointError, load_checkpoint
from ppl_vae.training.config import FitConfig, _opt
from ppl_vae.training.folder import CHECKPOINT, CONFIG
from ppl_vae.training.preflight import first_trace
from ppl_vae.training.trackers import make as make_trackers

__all__ = [
    "Run",
    "RunConfig",
    "check_device",
    "check_features",
    "choose_binarization",
    "load_data",
    "open_run",
    "read_config",
    "run_device",
]


@dataclass(frozen=True)
class RunConfig:
    """What to model and on which data; every field is a flag of ``ppl-vae train``."""

    dataset: str = _opt(
        "mnist5k", "mnist5k, digits, sprites, dsprites, mnist, fashion-mnist, kmnist, .npy/.npz"
    )
    data_dir: str | None = _opt(None, "folder with the IDX files (mnist, fashion-mnist, kmnist)")
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
    likelihood: str = _opt("bernoulli", "p(x|z)", LIKELIHOODS)
    gaussian_scale: float = _opt(1.0, "the Gaussian likelihood's (initial) standard deviation")
    learn_scale: bool = _opt(False, "learn the Gaussian likelihood's scale per feature")
    preset: str = _opt(
        "seed",
        "named network: seed 784-300-300-50 softplus, iwae 784-200-200-50 tanh, iwae2 the IWAE "
        "paper's two stochastic layers (784-200-200-100, 100-100-50, tanh), small",
        tuple(PRESETS),
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

    def recipe(self, x_dim: int) -> dict[str, Any]:
        """The program these flags describe, as a run folder records it."""
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
        kwargs = {
            "x_dim": x_dim,
            **net,
            "hidden": list(net["hidden"]),
            **({"top_hidden": list(net["top_hidden"])} if "top_hidden" in net else {}),
            "likelihood": self.likelihood,
            "prior": self.prior,
            "gaussian_scale": self.gaussian_scale,
            "learn_scale": self.learn_scale,
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
        return {"builder": "build_vae", "kwargs": kwargs}


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


def run_device(requested: str | None, doc: dict[str, Any]) -> torch.device:
    """Where to open a run: ``requested`` (checked), else the device it trained on when this
    machine has it, else the CPU (a run trained on a GPU opens on a machine without one)."""
    if requested is not None:
        return check_device(requested)
    recorded = doc.get("run", {}).get("device") or "cpu"
    try:
        return check_device(recorded)
    except ValueError:
        return torch.device("cpu")


def choose_binarization(requested: str, program: Program, x: torch.Tensor) -> str:
    """``auto`` becomes ``dynamic`` when the program observes ``x`` (a few rows) with a
    Bernoulli likelihood and ``none`` otherwise; an explicit binarization under another
    likelihood is an error with a hint."""
    binary = binary_observation(program.model, program.guide, x)
    if requested == "auto":
        return "dynamic" if binary else "none"
    if requested != "none" and not binary:
        raise ValueError(
            f"--binarize {requested} only goes with a Bernoulli likelihood, and {program.name} "
            "observes the data with another one; drop --binarize (auto keeps grey levels as "
            "they are) or use --likelihood bernoulli"
        )
    return requested


def load_data(run: RunConfig | dict[str, Any], seed: int = 0) -> DataSplits:
    """The dataset a run config (or a recorded data spec) names, split and binarized."""
    if isinstance(run, RunConfig):
        spec = {
            "dataset": run.dataset,
            "data_dir": run.data_dir,
            "binarization": run.binarize,
            "seed": seed,
        }
        if run.val_size is not None:
            spec["val_size"] = run.val_size
        download = run.download
    else:
        spec, download = run, False
    data = load_dataset(
        spec["dataset"],
        data_dir=spec.get("data_dir"),
        download=download,
        binarization="none",
        seed=spec.get("seed", seed),
        val_size=spec.get("val_size"),
    )
    binarization = spec.get("binarization", "none")
    if binarization == "auto":
        return data
    return binarize_splits(data, binarization, spec.get("seed", seed))


@dataclass
class Run:
    """A run folder read back: its program (weights loaded, eval mode), the data spec it was
    trained on (None if fit was given tensors), its fit settings and the rest of config.json."""

    program: Program
    data: dict[str, Any] | None
    fit: FitConfig
    info: dict[str, Any]

    @property
    def x_dim(self) -> int | None:
        recipe = self.program.recipe or {}
        return recipe.get("kwargs", {}).get("x_dim")


def read_config(run_dir: str | os.PathLike) -> dict[str, Any]:
    """``run_dir/config.json``, or an error that says how to make a run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG).is_file():
        raise FileNotFoundError(
            f"{run_dir} is not a run folder (no {CONFIG}); make one with "
            f"`ppl-vae train --out {run_dir}` or fit(..., out={str(run_dir)!r})"
        )
    try:
        return json.loads((run_dir / CONFIG).read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{run_dir / CONFIG} is not valid JSON: {e}") from e


def open_run(
    run_dir: str | os.PathLike,
    example: Any = None,
    device: str | None = None,
    program: Any = None,
) -> Run:
    """Rebuild the program of a run folder and load its trained weights (the best epoch's,
    when patience kept them).

    Args:
        run_dir: a folder written by ``fit(..., out=...)`` or ``ppl-vae train``.
        example: a batch to run the program on once, which creates the ``pyro.param``
            tensors of a program that has them (needed before loading into them).
        device: where to put the program's modules (default: the run's).
        program: the program itself, for a run whose program was built by hand in Python
            (config.json then has no recipe).
    """
    run_dir = Path(run_dir)
    doc = read_config(run_dir)
    fit_config = FitConfig(**doc["fit"])
    if program is not None:
        prog = as_program(program)
    elif doc.get("program") is None:
        raise ProgramError(
            f"{run_dir} was trained on a program built by hand in Python, which it cannot "
            "rebuild; in Python pass it: open_run(dir, program=obj). To get folders the CLI "
            "can read, build with build_vae(...) or ppl_vae.models.load_factory(...), or train "
            "with `ppl-vae train --model FILE.py:factory`"
        )
    else:
        x_dim = doc["program"].get("kwargs", {}).get("x_dim")
        prog = build_program(doc["program"], x_dim)
    device = run_device(device, doc)
    state = load_checkpoint(run_dir / CHECKPOINT, map_location=device)
    if "train" not in state:
        raise CheckpointError(
            f"{run_dir / CHECKPOINT} was written by an older ppl_vae; train the run again"
        )
    saved = state["train"]["best_state"] or state["program"]
    # the weights' own floating dtype (a run trained in float64 opens in float64)
    dtype = next(
        (
            t.dtype
            for module_state in saved["modules"].values()
            for t in module_state.values()
            if t.is_floating_point()
        ),
        None,
    )
    for _, module in prog.modules():
        module.to(device=device, dtype=dtype)
    if saved["params"]:
        if example is None:
            raise ProgramError(
                f"{prog.name} keeps pyro.param tensors; open_run needs an example batch to "
                "create them before loading"
            )
        first_trace(prog, example if isinstance(example, tuple) else (example,), "the data")
    try:
        prog.load_state_dict(saved)
    except ProgramError as e:
        raise CheckpointError(
            f"{run_dir / CHECKPOINT} does not match {run_dir / CONFIG}: {e}"
        ) from e
    prog.train(False)
    return Run(prog, doc.get("data"), fit_config, doc)


def check_features(run: Run, x: torch.Tensor, what: str) -> None:
    """A clear error when data does not have the features the saved model was trained on."""
    x_dim = run.x_dim
    if x_dim is not None and x.shape[1] != x_dim:
        raise ValueError(
            f"{what} has {x.shape[1]} features per row but the saved model expects {x_dim}; "
            "evaluate it on the dataset it was trained on (or train a new model on this one)"
        )
